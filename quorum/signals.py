"""Signals: waiting for SIGINT/SIGTERM in a synchronous main thread, and children that do not
outlive the process that started them.

A signal handler runs in the main thread between two bytecodes, possibly while that thread
holds a lock: calling ``threading.Event.set()`` from it can deadlock against the same
thread's ``Event.wait()``. :class:`StopSignals` only assigns an attribute in its handler and
polls it with ``time.sleep``, which takes no lock.

On Linux a process can ask to be sent a signal when its parent dies (``PR_SET_PDEATHSIG``):
:func:`parent_death_signal` asks it for a child between fork and exec (a ``preexec_fn``),
:func:`die_with_parent` in the child itself. Linux sends it when the parent *thread* that
forked exits, so both are only meant for children started from the main thread (which exits
with the process).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType

_PR_SET_PDEATHSIG = 1


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


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, or None where there is none to call (not Linux, no libc)."""
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(libc_name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that asks Linux to send ``sig`` to the child when its parent thread exits
    (None where that cannot be asked, or when called off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when ``parent``, the process that started it
    (from its main thread), exits. False when ``parent`` is not, or no longer, this process's
    parent (it died: this one was handed to another), or where it cannot be asked (not
    Linux); the caller decides what that means."""
    if os.getppid() != parent:
        return False
    prctl = _prctl()
    if prctl is None or prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    return os.getppid() == parent  # it died before prctl took effect: no signal would come
