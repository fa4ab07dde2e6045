"""The cost service's settings: built once at start-up from :func:`quorum.config.load`,
frozen, and wrong values fail there with :class:`~quorum.registry.ConfigError`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quorum import config
from quorum.registry import ConfigError, Registry, load_registry

SECTION = "cost"


@dataclass(frozen=True)
class CostSettings:
    #: "HOST:PORT" to listen on; port 0 picks a free one
    address: str
    #: the SQLite ledger file (absolute: relative config values are resolved at load)
    database: Path
    #: prices come from here; the cost service needs no API keys, so keys are not resolved
    registry: Registry


def check_address(address: str, where: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: {address!r} is not HOST:PORT")
    return address


def from_config(
    data: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    address: str | None = None,
    database: str | Path | None = None,
) -> CostSettings:
    """Settings from merged configuration; ``address`` and ``database`` (command-line flags)
    win over it. A relative database path is taken from :func:`quorum.config.data_dir`."""
    env = os.environ if env is None else env
    table = config.section(data, SECTION)
    if address is not None:
        table["address"] = address
    if database is not None:
        table["database"] = str(database)
    where = f"[{SECTION}]"
    addr = check_address(config.get_str(table, "address", where), f"{where}.address")
    db = Path(config.get_str(table, "database", where)).expanduser()
    if not db.is_absolute():
        db = config.data_dir(env) / db
    registry = load_registry(data)
    if not registry.models:
        raise ConfigError("[models]: the cost service needs at least one model to price")
    return CostSettings(address=addr, database=db.absolute(), registry=registry)


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    address: str | None = None,
    database: str | Path | None = None,
) -> CostSettings:
    """Read the configuration (defaults, ``path`` or ``$QUORUM_CONFIG``, ``QUORUM_*``
    variables) and build the settings."""
    env = os.environ if env is None else env
    return from_config(config.load(path, env), env, address=address, database=database)
