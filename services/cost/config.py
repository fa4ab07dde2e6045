"""The cost service's settings: built once at start-up from :func:`quorum.config.load`,
frozen, and wrong values fail there with :class:`~quorum.registry.ConfigError`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quorum import config
from quorum.auth import AuthSettings
from quorum.metrics import MetricsSettings
from quorum.registry import ConfigError, Registry, load_registry
from quorum.server import ServerLimits
from quorum.tls import TlsSettings
from services.cost.groupcommit import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUED
from services.cost.pgledger import PostgresUrl, is_postgres_url

SECTION = "cost"


@dataclass(frozen=True)
class CostSettings:
    #: "HOST:PORT" to listen on; port 0 picks a free one
    address: str
    #: the ledger: a SQLite file (absolute: relative config values are resolved at load), or
    #: a ``postgresql://`` URL for a ledger that several replicas share (its ``str()`` masks
    #: the password; without one in the URL, ``PGPASSWORD`` is used)
    database: Path | PostgresUrl
    #: prices come from here; the cost service needs no API keys, so keys are not resolved
    registry: Registry
    #: who may call (the cost service calls no other service: it needs no key of its own)
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    limits: ServerLimits = field(default_factory=ServerLimits)
    #: the most usage records the ledger writes in one transaction (group commit)
    max_batch_records: int = DEFAULT_MAX_BATCH
    #: the most records waiting to be written; past it a record is answered RESOURCE_EXHAUSTED
    #: (LEDGER_BUSY) at once
    max_queued_records: int = DEFAULT_MAX_QUEUED
    #: the Prometheus scrape endpoint (:mod:`quorum.metrics`)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)


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
    win over it. A ``postgresql://`` or ``postgres://`` database is a PostgreSQL URL; anything
    else is a SQLite path, and a relative one is taken from :func:`quorum.config.data_dir`."""
    env = os.environ if env is None else env
    table = config.section(data, SECTION)
    if address is not None:
        table["address"] = address
    if database is not None:
        table["database"] = str(database)
    where = f"[{SECTION}]"
    addr = check_address(config.get_str(table, "address", where), f"{where}.address")
    raw = config.get_str(table, "database", where)
    db: Path | PostgresUrl
    if is_postgres_url(raw):
        try:
            db = PostgresUrl(raw, env)
        except ConfigError as e:
            raise ConfigError(f"{where}.database: {e}") from None
    else:
        path = Path(raw).expanduser()
        db = (path if path.is_absolute() else config.data_dir(env) / path).absolute()
    registry = load_registry(data)
    if not registry.models:
        raise ConfigError("[models]: the cost service needs at least one model to price")
    return CostSettings(
        address=addr,
        database=db,
        registry=registry,
        auth=AuthSettings.from_config(data, env),
        tls=TlsSettings.from_config(data, env),
        limits=ServerLimits.from_config(data),
        max_batch_records=config.get_int(table, "max_batch_records", where, minimum=1),
        max_queued_records=config.get_int(table, "max_queued_records", where, minimum=1),
        metrics=MetricsSettings.from_config(data, SECTION),
    )


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
