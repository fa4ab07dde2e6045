"""Start and stop the ``tritonserver`` binary that ships in the ``nvidia-pytriton`` wheel.

It follows the launch recipe in DESIGN.md ("Triton on CPU"):

- the binary is ``<site-packages>/pytriton/tritonserver/bin/tritonserver``;
- a writable temporary backend directory ``B/python/`` holds symlinks to the Python backend
  library, ``triton_python_backend_utils.py`` and the stub built for the running Python's
  major.minor (``--backend-directory=B``);
- the running environment's ``bin/`` goes first on ``PATH`` (the stub takes its Python and
  site-packages from there; it ignores ``PYTHONPATH``) and Python's ``LIBDIR`` is appended to
  ``LD_LIBRARY_PATH``;
- every endpoint binds to 127.0.0.1; full model configs (``--disable-auto-complete-config``);
  explicit model control with one ``--load-model`` per model;
- before launch the models to load (and the models their ensembles call) are checked with
  :mod:`quorum.tritoncheck`: a broken repository fails at once, with messages that name the
  model, the field and the fix, instead of somewhere in the server's log;
- the Python backend's shared-memory regions get a prefix unique to this server, so
  :meth:`TritonServer.stop` removes exactly its own ``/dev/shm`` files (a killed server leaves
  them behind).

The child runs in its own process group (a Ctrl-C in the terminal reaches only the parent,
which stops it once) and, on Linux, gets SIGTERM when the parent dies, so no server outlives
the process that started it.

Run ``python -m quorum.tritonserver --help`` for the command line.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from quorum.errors import FailedPrecondition, Unavailable
from quorum.ids import free_ports
from quorum.signals import StopSignals, parent_death_signal

__all__ = [
    "TritonOptions",
    "TritonServer",
    "default_model_repository",
    "main",
    "missing_requirements",
    "optional_skipped",
    "requirements",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SHM_DIR = Path("/dev/shm")  # noqa: S108  (where POSIX shm_open puts its files)
_LOG_TAIL_LINES = 20
_TMP_PREFIX = "quorum-triton-"
_SHM_PREFIX = "quorum"


def default_model_repository() -> Path:
    """``$QUORUM_TRITON_REPOSITORY``, else the checkout's ``triton/`` folder (beside the
    ``quorum`` package, as in a source or editable install), else ``./triton``."""
    env = os.environ.get("QUORUM_TRITON_REPOSITORY")
    if env:
        return Path(env).expanduser().resolve()
    for candidate in (Path(__file__).resolve().parents[1] / "triton", Path.cwd() / "triton"):
        if candidate.is_dir():
            return candidate
    raise FailedPrecondition(
        "no Triton model repository: run from a Quorum checkout or set "
        "QUORUM_TRITON_REPOSITORY to its triton/ folder",
        reason="TRITON_REPOSITORY_MISSING",
    )


_REQUIRES = re.compile(
    r'key\s*:\s*"quorum_requires"\s*,?\s*value\s*:?\s*\{\s*string_value\s*:\s*"([^"]*)"'
)


def requirements(model_dir: Path) -> tuple[str, ...]:
    """The modules a model needs beyond the core install: the ``quorum_requires`` parameter of
    its ``config.pbtxt`` (space-separated module names), e.g. an optional extra's."""
    try:
        text = (Path(model_dir) / "config.pbtxt").read_text(encoding="utf-8")
    except OSError:
        return ()
    m = _REQUIRES.search(text)
    return tuple(m.group(1).split()) if m else ()


def missing_requirements(model_dir: Path) -> tuple[str, ...]:
    """The modules of :func:`requirements` this environment (the stub's: the same Python) lacks."""
    absent = []
    for module in requirements(model_dir):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            absent.append(module)
    return tuple(absent)


@dataclass(frozen=True)
class TritonOptions:
    """How to run one server. A port of 0 means "pick a free loopback port" at start."""

    model_repository: Path
    #: models to load; None loads every model directory in the repository but ``skip`` and
    #: those whose required modules (``quorum_requires`` in their config) are not installed
    models: tuple[str, ...] | None = None
    #: model directories not loaded when ``models`` is None; None: the configuration's
    #: ``[triton] optional_models`` that ``load_optional`` does not ask for
    skip: tuple[str, ...] | None = None
    #: variables added to the server's environment (its Python models read them)
    env: Mapping[str, str] = field(default_factory=dict)
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    #: OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces; None: no tracing
    otlp_traces_url: str | None = None
    #: how often Triton's span batch processor exports (ms); None: its default, 5000
    otlp_schedule_delay_ms: int | None = None
    #: where the server's log goes; None: a file in the server's temporary directory
    log_file: Path | None = None
    #: check the repository (quorum.tritoncheck) before launching; errors fail the start
    check_repository: bool = True


@dataclass(frozen=True)
class _Dist:
    """Where the pieces of the pytriton distribution are."""

    binary: Path
    backend_lib: Path
    backend_utils: Path
    stub: Path


def _locate_dist() -> _Dist:
    spec = importlib.util.find_spec("pytriton")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise Unavailable("nvidia-pytriton is not installed", reason="TRITON_NOT_INSTALLED")
    root = Path(spec.origin).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    dist = _Dist(
        binary=root / "bin" / "tritonserver",
        backend_lib=root / "backends" / "python" / "libtriton_python.so",
        backend_utils=root / "backends" / "python" / "triton_python_backend_utils.py",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for path in (dist.binary, dist.backend_lib, dist.backend_utils, dist.stub):
        if not path.is_file():
            raise Unavailable(
                f"pytriton has no {path.name} for Python {version} at {path.parent}",
                reason="TRITON_NOT_INSTALLED",
            )
    return dist


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *path])
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        if libdir not in parts:
            parts.append(str(libdir))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(parts)
    return env


def optional_skipped(
    triton: Mapping[str, Any], repository: Path, *, needed: Sequence[str] = ()
) -> tuple[str, ...]:
    """``[triton] optional_models`` that ``load_optional`` does not ask for, directly or as
    a step of an ensemble it names, and that no service needs (``needed``: e.g. the router's
    prompt classifier when ``[routing] classifier`` is on): the model folders ``quorum up``
    leaves unloaded."""
    from quorum import tritoncheck
    from quorum.registry import ConfigError

    optional = _names(triton.get("optional_models", []), "triton.optional_models")
    asked = _names(triton.get("load_optional", []), "triton.load_optional")
    unknown = sorted(set(asked) - set(optional))
    if unknown:
        raise ConfigError(f"triton.load_optional: {unknown} are not in triton.optional_models")
    wanted = [*asked, *(m for m in needed if m in optional and m not in asked)]
    if not wanted:
        return tuple(optional)
    configs, _ = tritoncheck.load_configs(repository)
    loaded = set(tritoncheck.models_with_dependencies(configs, wanted))
    return tuple(m for m in optional if m not in loaded)


def _names(value: object, where: str) -> list[str]:
    from quorum.registry import ConfigError

    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: a list of model folder names")
    return list(value)


def _tail(path: Path | None, lines: int = _LOG_TAIL_LINES, offset: int = 0) -> str:
    """The last ``lines`` lines of ``path`` written after byte ``offset``."""
    if path is None:
        return ""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            tail = collections.deque(f, maxlen=lines)
    except OSError:
        return ""
    return b"".join(tail).decode("utf-8", errors="replace").rstrip()


class TritonServer:
    """One ``tritonserver`` child process. Sync API; use as a context manager or call
    :meth:`start` and :meth:`stop`.

    :meth:`start` must run in a long-lived thread (normally the main thread) so that the
    parent-death signal does not fire early; from other threads it is simply not armed.
    """

    def __init__(self, options: TritonOptions) -> None:
        self.options = options
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None
        self._log_path: Path | None = None
        self._log_offset = 0  # where this run's lines start in a log file that is appended to
        self._shm_prefix: str | None = None
        self._ports: tuple[int, int, int] | None = None  # http, grpc, metrics
        self._models: tuple[str, ...] = ()
        self._left_out: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    # -- addresses and state ---------------------------------------------------------------

    def _port(self, index: int) -> int:
        if self._ports is None:
            raise FailedPrecondition("the Triton server has not been started")
        return self._ports[index]

    @property
    def http_address(self) -> str:
        return f"{HOST}:{self._port(0)}"

    @property
    def grpc_address(self) -> str:
        return f"{HOST}:{self._port(1)}"

    @property
    def metrics_address(self) -> str:
        return f"{HOST}:{self._port(2)}"

    @property
    def pid(self) -> int | None:
        """The server's process id, or None before start and after stop."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """None while the server runs (or was never started); its exit code once it exited."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def shm_prefix(self) -> str | None:
        """The prefix of this server's ``/dev/shm`` files (set at start)."""
        return self._shm_prefix

    @property
    def models(self) -> tuple[str, ...]:
        """The models this server loads (known once started)."""
        return self._models

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines this run wrote to the server's log."""
        return _tail(self._log_path, lines, self._log_offset)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def left_out(self) -> dict[str, tuple[str, ...]]:
        """Models of the repository not loaded because modules they need are not installed
        (model -> those modules); known once started."""
        return dict(self._left_out)

    def _model_names(self) -> tuple[str, ...]:
        self._left_out = {}
        if self.options.models is not None:
            return tuple(self.options.models)
        repo = Path(self.options.model_repository)
        if not repo.is_dir():
            return ()  # Triton itself reports the bad repository
        skip = self.options.skip
        if skip is None:
            from quorum import config
            from services.router.routing import triton_models

            data = config.load(None, os.environ)
            skip = optional_skipped(data.get("triton", {}), repo, needed=triton_models(data))
        names = []
        for p in sorted(repo.iterdir()):
            if not p.is_dir() or p.name.startswith((".", "_")) or p.name in skip:
                continue
            absent = missing_requirements(p)
            if absent:
                log.info("not loading Triton model %s: %s not installed", p.name, ", ".join(absent))
                self._left_out[p.name] = absent
                continue
            names.append(p.name)
        return tuple(names)

    def _check_repository(self) -> None:
        from quorum import tritoncheck

        repo = Path(self.options.model_repository)
        findings = tritoncheck.check_repository(repo, models=self._model_names())
        for f in findings:
            if f.severity is not tritoncheck.Severity.ERROR:
                log.warning("model repository: %s %s: %s (fix: %s)", f.model, f.field,
                            f.message, f.fix)  # fmt: skip
        bad = tritoncheck.errors(findings)
        if bad:
            raise FailedPrecondition(
                f"the Triton model repository {repo} has errors (quorum triton check):\n"
                + "\n".join(f"{f.model or '-'}: {f.field}: {f.message}; fix: {f.fix}" for f in bad),
                reason="TRITON_REPOSITORY_INVALID",
                metadata={"models": ",".join(sorted({f.model for f in bad}))},
            )

    def _command(self, dist: _Dist, backend_dir: Path) -> list[str]:
        assert self._ports is not None and self._shm_prefix is not None
        http, grpc, metrics = self._ports
        cmd = [
            str(dist.binary),
            f"--model-repository={Path(self.options.model_repository).resolve()}",
            f"--backend-directory={backend_dir}",
            f"--http-address={HOST}",
            f"--http-port={http}",
            f"--grpc-address={HOST}",
            f"--grpc-port={grpc}",
            f"--metrics-address={HOST}",
            f"--metrics-port={metrics}",
            "--disable-auto-complete-config",
            "--exit-timeout-secs=5",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self._models),
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            "--log-verbose=0",
        ]
        if self.options.otlp_traces_url:
            for setting in (
                "mode=opentelemetry",
                f"opentelemetry,url={self.options.otlp_traces_url}",
                "rate=1",
                "level=TIMESTAMPS",
                "opentelemetry,resource=service.name=triton",
            ):
                cmd += ["--trace-config", setting]
            delay = self.options.otlp_schedule_delay_ms
            if delay is not None:
                cmd += ["--trace-config", f"opentelemetry,bsp_schedule_delay={int(delay)}"]
        return cmd

    def start(self, timeout_s: float = 120.0) -> None:
        """Launch the server and wait until it is live and every model is ready.

        Raises FailedPrecondition (reason ``TRITON_REPOSITORY_INVALID``) without launching
        anything when the repository check finds errors; Unavailable (with the end of the
        server's log) when the server exits early or is not ready within ``timeout_s``; the
        server is stopped first.
        """
        with self._lock:
            if self._proc is not None:
                raise FailedPrecondition("the Triton server is already started")
            dist = _locate_dist()
            if self.options.check_repository:
                self._check_repository()
            _remove_stale_leftovers()
            self._tmpdir = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-"))
            try:
                backend_dir = self._tmpdir / "backends"
                (backend_dir / "python").mkdir(parents=True)
                for src in (dist.backend_lib, dist.backend_utils, dist.stub):
                    (backend_dir / "python" / src.name).symlink_to(src)
                o = self.options
                free = iter(free_ports(3, HOST))
                self._ports = (
                    o.http_port or next(free),
                    o.grpc_port or next(free),
                    o.metrics_port or next(free),
                )
                self._shm_prefix = f"{_SHM_PREFIX}{os.getpid()}x{secrets.token_hex(4)}"
                self._models = self._model_names()
                self._log_path = (
                    Path(o.log_file) if o.log_file is not None else self._tmpdir / "triton.log"
                )
                self._log_path.parent.mkdir(parents=True, exist_ok=True)
                cmd = self._command(dist, backend_dir)
                log.info("starting tritonserver: %s", " ".join(cmd))
                with self._log_path.open("ab") as log_file:
                    self._log_offset = log_file.tell()
                    self._proc = subprocess.Popen(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        env={**_child_env(), **o.env},
                        cwd=self._tmpdir,
                        start_new_session=True,  # own process group: Ctrl-C hits only us
                        preexec_fn=parent_death_signal(),  # noqa: PLW1509
                    )
            except BaseException:
                self._stop_locked(10.0)
                raise
        try:
            self._wait_ready(timeout_s)
        except Unavailable as exc:
            tail = self.log_tail()
            self.stop()
            raise Unavailable(
                f"{exc.message}; last log lines:\n{tail}", reason="TRITON_START_FAILED"
            ) from None
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        proc = self._proc
        if proc is None:
            raise Unavailable("tritonserver was stopped while starting")
        deadline = time.monotonic() + timeout_s
        base = f"http://{self.http_address}"
        paths = ["/v2/health/live", "/v2/health/ready"]
        paths += [f"/v2/models/{m}/ready" for m in self._models]
        timeout = httpx.Timeout(1.0, connect=0.5)
        with httpx.Client(base_url=base, timeout=timeout, trust_env=False) as client:
            pending = list(paths)
            while pending:
                code = proc.poll()
                if code is not None:
                    raise Unavailable(f"tritonserver exited with code {code}")
                if time.monotonic() > deadline:
                    raise Unavailable(f"tritonserver not ready after {timeout_s:.0f}s")
                try:
                    if client.get(pending[0]).status_code == httpx.codes.OK:
                        pending.pop(0)
                        continue
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        log.info("tritonserver ready: grpc %s, http %s", self.grpc_address, self.http_address)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the server, SIGKILL it (and its process group) after ``timeout_s``, then
        remove its temporary directory and its own ``/dev/shm`` files. Idempotent."""
        with self._lock:
            self._stop_locked(timeout_s)

    def _stop_locked(self, timeout_s: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver (pid %d) ignored SIGTERM; killing it", proc.pid)
                    _killpg(proc.pid)
                    proc.wait()
            # Stubs normally exit with the server; none may outlive it.
            if self._shm_prefix is not None:
                _kill_stragglers(proc.pid, self._shm_prefix)
        if self._shm_prefix is not None:
            for path in SHM_DIR.glob(f"{self._shm_prefix}*"):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("could not remove %s: %s", path, exc)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        if self.options.log_file is None:
            self._log_path = None

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdlines() -> list[bytes]:
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        with suppress(OSError):
            out.append((entry / "cmdline").read_bytes())
    return out


_STALE_SHM = re.compile(rf"^({_SHM_PREFIX}(\d+)x[0-9a-f]{{8}})")
_STALE_TMP = re.compile(rf"^{_TMP_PREFIX}(\d+)-")


def _remove_stale_leftovers() -> None:
    """Remove temporary backend dirs and ``/dev/shm`` files of servers whose launcher died
    without stopping them (SIGKILL, OOM). A leftover is removed only when the pid in its name
    is gone *and* no running process names it (an orphaned server still using it)."""
    if not Path("/proc").is_dir():
        return
    candidates: list[tuple[Path, str]] = []  # (path, marker that a user's cmdline holds)
    with suppress(OSError):
        for path in SHM_DIR.iterdir():
            m = _STALE_SHM.match(path.name)
            if m and not _pid_alive(int(m.group(2))):
                candidates.append((path, m.group(1)))
    tmp = Path(tempfile.gettempdir())
    with suppress(OSError):
        for path in tmp.glob(f"{_TMP_PREFIX}*"):
            m = _STALE_TMP.match(path.name)
            if m and path.is_dir() and not _pid_alive(int(m.group(1))):
                candidates.append((path, str(path)))
    if not candidates:
        return
    in_use = _cmdlines()
    for path, marker in candidates:
        needle = marker.encode()
        if any(needle in c for c in in_use):
            continue
        log.info("removing stale Triton leftover %s", path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with suppress(OSError):
                path.unlink()


def _killpg(pgid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_stragglers(pgid: int, marker: str) -> None:
    """SIGKILL what is left of the server's process group after the server was reaped.

    Only processes in group ``pgid`` whose command line holds ``marker`` (the shm prefix every
    stub gets as an argument) are killed, so a recycled process-group id is never hit.
    """
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return
    needle = marker.encode()
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid) and needle in cmdline:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


# -- command line ------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m quorum.tritonserver",
        description="Run Quorum's Triton model repository on loopback until SIGINT/SIGTERM.",
    )
    p.add_argument("--model-repository", type=Path, default=None, help="default: triton/")
    p.add_argument("--model", action="append", dest="models", help="repeatable; default: all")
    p.add_argument("--http-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--grpc-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--metrics-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--otlp-traces-url", default=None, help="OTLP/HTTP traces endpoint")
    p.add_argument("--otlp-schedule-delay-ms", type=int, default=None)
    p.add_argument("--log-file", type=Path, default=None)
    p.add_argument("--start-timeout", type=float, default=120.0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll
    options = TritonOptions(
        model_repository=args.model_repository or default_model_repository(),
        models=tuple(args.models) if args.models else None,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        otlp_traces_url=args.otlp_traces_url,
        otlp_schedule_delay_ms=args.otlp_schedule_delay_ms,
        log_file=args.log_file,
    )
    stopping = StopSignals().install()
    server = TritonServer(options)
    try:
        try:
            server.start(timeout_s=args.start_timeout)
        except Unavailable as exc:
            print(exc.message, file=sys.stderr)
            return 1
        out: IO[str] = sys.stdout
        print(f"pid {server.pid}", file=out)
        print(f"grpc {server.grpc_address}", file=out)
        print(f"http {server.http_address}", file=out)
        print(f"metrics {server.metrics_address}", file=out)
        print(f"models {','.join(server.models)}", file=out, flush=True)
        while not stopping.wait(0.5):
            code = server.returncode
            if code is not None:
                tail = server.log_tail()
                print(f"tritonserver exited with code {code}:\n{tail}", file=sys.stderr)
                return 1
        return 0
    finally:
        server.stop()
        stopping.restore()


if __name__ == "__main__":
    sys.exit(main())
