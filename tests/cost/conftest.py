"""Fixtures for the cost service tests: ledgers on SQLite and on a real PostgreSQL, and a real
cost server in process.

Every test that takes ``backend`` (or ``store``, ``ledger``, ``settings``, ``cost``) runs once
per backend: ``sqlite`` (a file in tmp_path) and ``postgres`` (a schema of its own in one
PostgreSQL server for the session, started from the OS packages by
:class:`quorum.pgserver.TempPostgres`). Without PostgreSQL installed the ``postgres`` cases
are skipped, saying so (under ``CI`` they fail: ``.ci/run`` installs it).
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest

from quorum import config
from quorum.cost.v1 import cost_pb2_grpc
from quorum.pgserver import TempPostgres, find_binaries
from quorum.server import HealthMonitor
from services.cost.config import CostSettings, from_config
from services.cost.ledger import SqliteLedger
from services.cost.pgledger import PostgresLedger
from services.cost.server import Close, create

BACKENDS = ("sqlite", "postgres")
NO_POSTGRES = (
    "PostgreSQL is not installed (no initdb and postgres on PATH or in "
    "/usr/lib/postgresql/*/bin); on Debian: apt-get install postgresql"
)

AnyLedger = SqliteLedger | PostgresLedger

# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[TempPostgres]:
    """One throw-away PostgreSQL for the session (fsync off), stopped and removed at the end."""
    binaries = find_binaries()
    if binaries is None:
        if os.environ.get("CI"):  # .ci/run installs it: never skip these there
            pytest.fail(NO_POSTGRES)
        pytest.skip(NO_POSTGRES)
    with TempPostgres(binaries, durable=False) as pg:
        yield pg


def fresh_schema_url(pg: TempPostgres) -> str:
    """A URL on ``pg`` whose ``search_path`` is a new, empty schema: a database of its own
    for one test, at the cost of one ``CREATE SCHEMA``."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg.url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{pg.url}?options=-csearch_path%3D{schema}"


# --- a place for ledgers, per backend --------------------------------------------------------


@dataclass(frozen=True)
class LedgerStore:
    """Where one test's ledgers live: ``database`` is what ``[cost] database`` would say
    (a SQLite path, or a PostgreSQL URL with the test's own schema)."""

    backend: str
    database: str

    async def open(
        self, *, max_batch: int | None = None, max_queued: int | None = None
    ) -> AnyLedger:
        """A ledger on the store (the group commit's bounds as given, else the defaults)."""
        bounds = {"max_batch": max_batch, "max_queued": max_queued}
        kw = {k: v for k, v in bounds.items() if v is not None}
        if self.backend == "postgres":
            return await PostgresLedger.open(self.database, **kw)
        return await SqliteLedger.open(self.database, **kw)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_store(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[[], LedgerStore]:
    """Makes a new, empty store of the test's backend on each call."""
    counter = itertools.count()
    if backend == "postgres":
        pg: TempPostgres = request.getfixturevalue("postgres_server")
        return lambda: LedgerStore(backend, fresh_schema_url(pg))
    return lambda: LedgerStore(backend, str(tmp_path / f"ledger-{next(counter)}.sqlite3"))


@pytest.fixture
def store(new_store: Callable[[], LedgerStore]) -> LedgerStore:
    return new_store()


@pytest.fixture
async def ledger(store: LedgerStore) -> AsyncIterator[AnyLedger]:
    led = await store.open()
    try:
        yield led
    finally:
        await led.close()


# --- the cost service in process -----------------------------------------------------------


def make_settings(tmp_path: Path, database: str = "ledger.sqlite3") -> CostSettings:
    """Settings from the embedded defaults only (no file, no QUORUM_* variables): the real
    registry and prices, the ledger ``database`` (a SQLite file in ``tmp_path`` by default),
    any free loopback port."""
    return from_config(
        config.defaults(),
        {"QUORUM_DATA_DIR": str(tmp_path)},
        address="127.0.0.1:0",
        database=database,
    )


@pytest.fixture
def settings(tmp_path: Path, store: LedgerStore) -> CostSettings:
    return make_settings(tmp_path, store.database)


@dataclass
class CostHarness:
    address: str
    channel: grpc.aio.Channel
    stub: cost_pb2_grpc.CostServiceStub
    monitor: HealthMonitor
    close_ledger: Close
    settings: CostSettings


@pytest.fixture
async def cost(settings: CostSettings) -> AsyncIterator[CostHarness]:
    """A real cost server on 127.0.0.1:0 over the test's ledger, and a channel."""
    server, port, monitor, close = await create(settings)
    await server.start()
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(address)
    try:
        yield CostHarness(
            address, channel, cost_pb2_grpc.CostServiceStub(channel), monitor, close, settings
        )
    finally:
        await channel.close()
        await monitor.stop()
        await server.stop(None)
        await close()
