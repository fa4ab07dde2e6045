"""A throw-away PostgreSQL server from the OS packages, for tests and benchmarks.

``initdb`` makes a cluster in a new temporary directory (trust authentication on loopback
only, superuser ``quorum``), then the ``postgres`` binary serves it on a free 127.0.0.1 port
with no Unix socket. The server is a child process (not daemonized by ``pg_ctl``): on Linux
it gets SIGINT (fast shutdown) when the parent dies, so no server outlives the process that
started it, and :meth:`TempPostgres.stop` removes the directory.

PostgreSQL refuses to run as root: when this process is root, ``initdb`` and ``postgres`` run
as the ``postgres`` user that Debian's package creates (else ``nobody``), and the directory is
handed to that user.

The binaries are looked up on ``PATH``, then in Debian's ``/usr/lib/postgresql/<N>/bin``
(newest first). :func:`find_binaries` returns ``None`` when there are none; Debian's package
is ``postgresql``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from quorum.ids import free_ports
from quorum.signals import parent_death_signal

__all__ = ["PgBinaries", "TempPostgres", "find_binaries"]

SUPERUSER = "quorum"
DATABASE = "quorum"


@dataclass(frozen=True)
class PgBinaries:
    initdb: Path
    postgres: Path


def find_binaries() -> PgBinaries | None:
    """``initdb`` and ``postgres`` of one installation, or None when PostgreSQL is missing."""
    dirs: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb is not None:
        dirs.append(Path(initdb).resolve().parent)

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())

    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for d in dirs:
        if (d / "initdb").is_file() and (d / "postgres").is_file():
            return PgBinaries(d / "initdb", d / "postgres")
    return None


def _run_as() -> str | None:
    """The user to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


class TempPostgres:
    """One temporary PostgreSQL server. Use as a context manager or call :meth:`start` and
    :meth:`stop`. ``url`` names database ``quorum`` as superuser ``quorum`` (no password).

    ``durable=False`` turns off fsync and synchronous commit (fast, for tests); the default
    keeps PostgreSQL's own durability settings (for benchmarks)."""

    def __init__(
        self,
        binaries: PgBinaries,
        *,
        durable: bool = True,
        start_timeout_s: float = 30.0,
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        self.binaries = binaries
        self.durable = durable
        self.start_timeout_s = start_timeout_s
        self.extra_settings = dict(extra_settings or {})
        self.port = 0
        self.dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._user = _run_as()

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "postgres.log"

    def logs(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> TempPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """initdb, start, wait until it accepts connections and create database ``quorum``.
        Raises RuntimeError (with the server's log) when it does not come up."""
        self.dir = Path(tempfile.mkdtemp(prefix="quorum-pg-"))
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        try:
            self._initdb()
            self._serve()
            self._create_database()
        except BaseException:
            self.stop()
            raise

    def _subprocess_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._user is not None:
            env["HOME"] = str(self.dir)
        return env

    def _initdb(self) -> None:
        assert self.dir is not None
        args = [
            str(self.binaries.initdb),
            f"--pgdata={self.dir / 'data'}",
            f"--username={SUPERUSER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]
        done = subprocess.run(
            args,
            cwd=self.dir,
            env=self._subprocess_env(),
            user=self._user,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip()}")

    def _serve(self) -> None:
        assert self.dir is not None
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        settings |= self.extra_settings
        last_error = "no attempt"
        for _ in range(5):  # another process may take the free port first: try another
            (self.port,) = free_ports(1)
            args = [str(self.binaries.postgres), "-D", str(self.dir / "data")]
            args += ["-p", str(self.port)]
            for key, value in settings.items():
                args += ["-c", f"{key}={value}"]
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    args,
                    cwd=self.dir,
                    env=self._subprocess_env(),
                    user=self._user,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,  # a Ctrl-C reaches the parent only
                    preexec_fn=parent_death_signal(signal.SIGINT),  # noqa: PLW1509
                )
            if self._wait_ready():
                return
            last_error = self.logs()[-2000:]
            self._terminate()
        raise RuntimeError(f"PostgreSQL did not start: {last_error}")

    def _wait_ready(self) -> bool:
        import psycopg

        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with psycopg.connect(
                    self.url.rsplit("/", 1)[0] + "/postgres", connect_timeout=2
                ) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        return False

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(
            self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True, connect_timeout=5
        ) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # fast shutdown: sessions are ended, then it exits
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def stop(self) -> None:
        """Fast shutdown and remove the directory. Idempotent."""
        self._terminate()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
