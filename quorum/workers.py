"""Several processes of one service on one port (``[router] workers``).

A Python process runs its own code on one core. With ``workers = N`` (N > 1) the process
started (the *first*) binds its address with ``SO_REUSEPORT`` (port 0: the kernel picks one),
then starts N-1 more of its own command (:class:`Workers`), each told that port, its index and
the first's pid; every one binds the port with ``SO_REUSEPORT`` too, and Linux spreads new
connections over them (a connection, and so every call of one gRPC channel, stays with one
process).

- **Start.** The first prints its ``listening on HOST:PORT`` line (what scripts and ``quorum
  up`` read) only once each other process has printed its own, read from its stdout, within
  :data:`START_TIMEOUT_S`. One that exits or stays silent: the first logs which and how, stops
  the others and exits 1. Their stderr is the first's: one stream of logs, each line of a
  service with workers naming its ``worker``.
- **Stop.** SIGTERM or SIGINT to the first is passed on to the others; each drains as a single
  process does, and the first waits for them (as long as its own drain may take, plus
  :data:`EXIT_MARGIN_S`, then SIGKILL). It exits 0 when every one exited 0, else 1.
- **A death.** A worker that exits while serving is logged as an error with its exit status;
  the first then stops the others and exits 1, so that what supervises the service (systemd,
  Kubernetes, a person) restarts it whole. Restarting one worker in place would keep a
  worker that crashes again and again out of sight, and the service half its size meanwhile.
- **No orphans.** Each worker asks Linux for SIGTERM when the first dies, even by SIGKILL
  (``PR_SET_PDEATHSIG``, :func:`quorum.signals.die_with_parent`, called by the worker itself
  at start rather than between fork and exec in a parent that already runs gRPC's threads),
  and then drains as on any SIGTERM; a worker whose first is already gone exits at once.
- **No stranger on the port.** Before binding a fixed port the first checks that nothing
  listens there (:func:`check_port_free`): with ``SO_REUSEPORT`` it would otherwise share the
  port, without a word, with another process of the same user that set it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: how long a worker may take to say it listens (it starts as the first did: imports,
#: clients, the usage journal)
START_TIMEOUT_S = 120.0
#: how much longer than its own drain the first waits for the workers to exit
EXIT_MARGIN_S = 10.0


class WorkerFailed(Exception):
    """A worker did not start, died while serving, or did not exit cleanly."""


def worker_command(module: str, argv: Sequence[str], address: str, index: int) -> list[str]:
    """The command of worker ``index``: the first's own (``python -m module *argv``), bound to
    the first's address and port, told its index and its parent (hidden options of
    :func:`quorum.runner.run`; the last ``--address`` given wins)."""
    return [
        sys.executable, "-m", module, *argv,
        f"--address={address}", f"--worker={index}", f"--parent={os.getpid()}",
    ]  # fmt: skip


def check_port_free(address: str) -> None:
    """Raise OSError when something listens on ``address``'s port (0: nothing to check): a
    bind without ``SO_REUSEPORT`` (with ``SO_REUSEADDR``, as gRPC binds, so connections
    closing on the port do not count) fails where any listener is."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise OSError(f"cannot bind {address}: {e.strerror}") from e
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(sockaddr)
            except OSError as e:
                raise OSError(f"cannot bind {address}: {e.strerror}") from e


@dataclass(eq=False)  # each is itself (a key of dicts)
class _Worker:
    index: int
    proc: asyncio.subprocess.Process
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.proc.pid})"


class Workers:
    """Workers 1..count-1 of a service whose first process is this one: :meth:`start` them,
    :meth:`watch` them while serving, pass signals on with :meth:`signal`, and :meth:`stop`
    them; :attr:`failures` says what went wrong (empty: every one started, served and exited
    0)."""

    def __init__(self, command: Callable[[int], Sequence[str]], count: int, line: str) -> None:
        self._command = command
        self._count = count
        #: what each worker prints once it listens (the first's own line: same address)
        self._line = line
        self._workers: list[_Worker] = []
        self._stopping = False
        self.failures: list[str] = []

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start every worker and wait until each has printed its line. Raises WorkerFailed
        when one exits first, prints another line, or is silent for ``timeout_s`` (the caller
        then :meth:`stop` s those started)."""
        for index in range(1, self._count):
            proc = await asyncio.create_subprocess_exec(
                *self._command(index),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
            )  # stderr: the first's
            self._workers.append(_Worker(index, proc))
        waiting = {asyncio.create_task(self._announced(w)): w for w in self._workers}
        done, pending = await asyncio.wait(
            waiting, timeout=timeout_s, return_when=asyncio.FIRST_EXCEPTION
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if (e := task.exception()) is not None:
                self.failures.append(str(e))
                log.error("%s", e)
                raise WorkerFailed(str(e))
        if pending:
            silent = ", ".join(waiting[t].name for t in pending)
            why = f"{silent}: not listening {timeout_s:g} s after it was started"
            self.failures.append(why)
            log.error("%s", why)
            raise WorkerFailed(why)
        for w in self._workers:
            w.tasks.append(asyncio.create_task(self._drain(w), name=f"worker-{w.index}-stdout"))

    async def _announced(self, w: _Worker) -> None:
        assert w.proc.stdout is not None
        line = (await w.proc.stdout.readline()).decode(errors="replace").strip()
        if line == self._line:
            log.info("%s listening", w.name)
            return
        if not line:  # EOF: it is exiting
            code = await w.proc.wait()
            raise WorkerFailed(f"{w.name} exited with code {code} while starting")
        raise WorkerFailed(f"{w.name} said {line!r}, not {self._line!r}")

    @staticmethod
    async def _drain(w: _Worker) -> None:
        """Read what else it prints (nothing is expected), so it can never block on a pipe."""
        assert w.proc.stdout is not None
        while await w.proc.stdout.readline():
            pass

    def watch(self, on_death: Callable[[], None]) -> None:
        """From now on, a worker that exits before :meth:`signal` or :meth:`stop` is logged as
        an error with its exit status, the others are sent SIGTERM, and ``on_death`` runs
        (the first then drains and exits 1)."""

        async def wait(w: _Worker) -> None:
            code = await w.proc.wait()
            if self._stopping:
                return
            why = f"{w.name} exited with code {code} while serving"
            self.failures.append(why)
            log.error(
                "%s; stopping the other workers and exiting 1, for the service to be restarted "
                "whole",
                why,
            )
            self.signal(signal.SIGTERM)
            on_death()

        for w in self._workers:
            w.tasks.append(asyncio.create_task(wait(w), name=f"worker-{w.index}-exit"))

    def signal(self, sig: int) -> None:
        """Pass ``sig`` on to every worker still running (each drains on SIGTERM/SIGINT)."""
        self._stopping = True
        for w in self._workers:
            if w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    async def stop(self, timeout_s: float) -> None:
        """SIGTERM to every worker not yet sent a signal, then wait up to ``timeout_s`` for them
        all; one still running then is killed. Each that did not exit 0 is noted in
        :attr:`failures` (and logged)."""
        if not self._stopping:
            self.signal(signal.SIGTERM)
        waits = {w: asyncio.create_task(w.proc.wait()) for w in self._workers}
        if waits:
            await asyncio.wait(waits.values(), timeout=timeout_s)
        for w, task in waits.items():
            if not task.done():
                why = f"{w.name} did not exit {timeout_s:g} s after SIGTERM; killed"
                self.failures.append(why)
                log.error("%s", why)
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
            code = await task
            if code != 0 and not any(f.startswith(w.name) for f in self.failures):
                why = f"{w.name} exited with code {code}"
                self.failures.append(why)
                log.error("%s", why)
            for t in w.tasks:
                t.cancel()
            await asyncio.gather(*w.tasks, return_exceptions=True)
