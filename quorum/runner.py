"""The ``__main__`` of every service: arguments, logs, tracing, metrics, serve, drain, close.

    python -m services.<name> [--config FILE] [--address HOST:PORT] [--set SECTION.KEY=VALUE ...]

Prints one line ``quorum-<name> listening on HOST:PORT`` on stdout once it accepts calls
(scripts and tests read the port from it), then logs JSON on stderr (``metrics on URL`` first,
when the settings name a scrape endpoint: :mod:`quorum.metrics`). Exits 0 after a graceful
drain on SIGTERM or SIGINT, 2 on a configuration error, 1 when an address cannot be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from quorum import config, logs, metrics, telemetry
from quorum.registry import ConfigError
from quorum.server import HealthMonitor, serve_until_signal

log = logging.getLogger(__name__)

#: the drain of a service whose settings name no longest deadline (the cost service's own
#: bound on a call is 30 s)
DEFAULT_GRACE_S = 30.0

S = TypeVar("S")
Created = tuple[grpc.aio.Server, int, HealthMonitor, Callable[[], Awaitable[None]]]


def _set_override(data: dict[str, Any], item: str) -> None:
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
    args = parser.parse_args(argv)
    service = f"quorum-{name}"
    logs.setup(service, args.log_level)
    try:
        data = config.load(args.config)
        for item in args.set:
            _set_override(data, item)
        if args.address:
            data.setdefault(name, {})["address"] = args.address
        settings = settings_from(data)
    except ConfigError as e:
        print(f"{service}: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    shutdown_tracing = telemetry.setup(service)  # before any channel or server exists
    installed: metrics.Installed | None = None
    try:
        scrape = getattr(settings, "metrics", None) or metrics.MetricsSettings()
        installed = metrics.setup(service, scrape)
        asyncio.run(_serve(service, settings, create))
    except ConfigError as e:
        print(f"{service}: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:
        print(f"{service}: cannot serve: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if installed is not None:
            installed.shutdown()
        shutdown_tracing()


async def _serve(service: str, settings: S, create: Callable[[S], Awaitable[Created]]) -> None:
    server, port, monitor, close = await create(settings)
    try:
        await monitor.update()  # health tells the truth before the first call arrives
        await server.start()
    except BaseException:
        await close()
        raise
    host = getattr(settings, "address", "127.0.0.1:0").rsplit(":", 1)[0]

    def announce() -> None:
        print(f"{service} listening on {host}:{port}", flush=True)
        log.info("listening on %s:%d", host, port)

    # a call in flight may run for as long as the service allows one to: let it finish
    grace_s = float(getattr(settings, "max_timeout_s", DEFAULT_GRACE_S)) + 1.0
    await serve_until_signal(server, monitor, grace_s=grace_s, on_stop=close, on_ready=announce)
