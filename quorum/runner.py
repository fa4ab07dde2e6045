"""The ``__main__`` of every service: arguments, logs, tracing, metrics, serve, drain, close.

    python -m services.<name> [--config FILE] [--address HOST:PORT] [--set SECTION.KEY=VALUE ...]

Prints one line ``quorum-<name> listening on HOST:PORT`` on stdout once it accepts calls
(scripts and tests read the port from it), then logs JSON on stderr (``metrics on URL`` first,
when the settings name a scrape endpoint: :mod:`quorum.metrics`). Exits 0 after a graceful
drain on SIGTERM or SIGINT, 2 on a configuration error, 1 when an address cannot be bound.

Settings with ``workers`` over 1 (the router's) serve with that many processes on one port
(:mod:`quorum.workers`): this one binds, starts the others and prints its line once they all
listen; it exits 1 when one of them fails to start, dies, or does not exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from quorum import config, logs, metrics, signals, telemetry
from quorum.registry import ConfigError
from quorum.server import HealthMonitor, serve_until_signal
from quorum.workers import EXIT_MARGIN_S, WorkerFailed, Workers, check_port_free, worker_command

log = logging.getLogger(__name__)

#: the drain of a service whose settings name no longest deadline (the cost service's own
#: bound on a call is 30 s)
DEFAULT_GRACE_S = 30.0

S = TypeVar("S")
Created = tuple[grpc.aio.Server, int, HealthMonitor, Callable[[], Awaitable[None]]]


def set_override(data: dict[str, Any], item: str) -> None:
    """``--set SECTION.KEY=VALUE``: ``data[SECTION][KEY] = VALUE`` (a TOML scalar when it
    parses as one, else the string)."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: use SECTION.KEY=VALUE")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {p} is not a table")
        node = child
    node[parts[-1]] = config._scalar(raw)


def run(
    name: str,
    settings_from: Callable[[Mapping[str, Any]], S],
    create: Callable[[S], Awaitable[Created]],
    argv: Sequence[str] | None = None,
) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}")
    parser.add_argument("--config", help="TOML file merged over the embedded defaults")
    parser.add_argument("--address", help=f"listen address (overrides {name}.address)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--log-level", default="INFO")
    # a worker started by the first of several processes (quorum.workers): its index, the first
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, default=0, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    service = f"quorum-{name}"
    logs.setup(service, args.log_level)
    if args.worker and not signals.die_with_parent(args.parent):
        print(f"{service}: worker {args.worker}: process {args.parent} is gone", file=sys.stderr)
        raise SystemExit(1)
    try:
        data = config.load(args.config)
        for item in args.set:
            set_override(data, item)
        if args.address:
            data.setdefault(name, {})["address"] = args.address
        settings = settings_from(data)
        count = int(getattr(settings, "workers", 1))
        if args.worker:
            settings = settings.for_worker(args.worker)  # type: ignore[attr-defined]
    except ConfigError as e:
        print(f"{service}: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    worker = args.worker if count > 1 else None
    if worker is not None:
        logs.setup(service, args.log_level, worker=worker)
    shutdown_tracing = telemetry.setup(service)  # before any channel or server exists
    installed: metrics.Installed | None = None
    try:
        scrape = getattr(settings, "metrics", None) or metrics.MetricsSettings()
        installed = metrics.setup(service, scrape, worker=worker)
        spawn = (
            (lambda address, i: worker_command(f"services.{name}", argv, address, i))
            if count > 1 and not args.worker
            else None
        )
        asyncio.run(_serve(service, settings, create, count if spawn else 1, spawn))
    except ConfigError as e:
        print(f"{service}: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:
        print(f"{service}: cannot serve: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except WorkerFailed as e:
        print(f"{service}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if installed is not None:
            installed.shutdown()
        shutdown_tracing()


async def _serve(
    service: str,
    settings: S,
    create: Callable[[S], Awaitable[Created]],
    count: int = 1,
    spawn: Callable[[str, int], Sequence[str]] | None = None,
) -> None:
    """Serve until a signal; with ``spawn``, as the first of ``count`` processes on one port
    (``spawn(HOST:PORT, index)`` is worker ``index``'s command)."""
    address = str(getattr(settings, "address", "127.0.0.1:0"))
    if spawn is not None:
        check_port_free(address)  # SO_REUSEPORT would share it with a stranger silently
    server, port, monitor, close = await create(settings)
    try:
        await monitor.update()  # health tells the truth before the first call arrives
        await server.start()
    except BaseException:
        await close()
        raise
    host = address.rsplit(":", 1)[0]
    line = f"{service} listening on {host}:{port}"
    # a call in flight may run for as long as the service allows one to: let it finish
    grace_s = float(getattr(settings, "max_timeout_s", DEFAULT_GRACE_S)) + 1.0
    workers: Workers | None = None
    if spawn is not None:
        workers = Workers(lambda i: spawn(f"{host}:{port}", i), count, line)
        try:
            await workers.start()
        except BaseException:
            await workers.stop(grace_s + EXIT_MARGIN_S)
            await server.stop(grace_s)
            await close()
            raise

    def announce() -> None:
        print(line, flush=True)
        if workers is None:
            log.info("listening on %s:%d", host, port)
        else:
            log.info("listening on %s:%d with %d processes (workers' pids %s)",
                     host, port, count, workers.pids)  # fmt: skip

    stop = asyncio.Event()
    if workers is not None:
        workers.watch(stop.set)
    await serve_until_signal(
        server,
        monitor,
        grace_s=grace_s,
        on_stop=close,
        on_ready=announce,
        on_signal=workers.signal if workers is not None else None,
        stop=stop,
    )
    if workers is not None:
        await workers.stop(grace_s + EXIT_MARGIN_S)
        if workers.failures:
            raise WorkerFailed("; ".join(workers.failures))
