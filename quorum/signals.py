"""Waiting for SIGINT/SIGTERM in a synchronous main thread.

A signal handler runs in the main thread between two bytecodes, possibly while that thread
holds a lock: calling ``threading.Event.set()`` from it can deadlock against the same
thread's ``Event.wait()``. :class:`StopSignals` only assigns an attribute in its handler and
polls it with ``time.sleep``, which takes no lock.
"""

from __future__ import annotations

import signal
import time
from types import FrameType, TracebackType


class StopSignals:
    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)):
        self.received: int | None = None
        self._signals = signals
        self._previous: dict[signal.Signals, object] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def install(self) -> StopSignals:
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def wait(self, timeout_s: float, *, step_s: float = 0.1) -> bool:
        """Sleep up to ``timeout_s``; True once a stop signal has arrived."""
        end = time.monotonic() + timeout_s
        while self.received is None and (left := end - time.monotonic()) > 0:
            time.sleep(min(step_s, left))
        return self.received is not None

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()
