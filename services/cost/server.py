"""Builds the cost server: the servicer over an open ledger, reflection and health (SERVING
only while the ledger answers). Starting, serving and stopping are the caller's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from quorum.auth import KeyStore
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.server import HealthMonitor, create_server
from services.cost.config import CostSettings
from services.cost.groupcommit import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUED
from services.cost.ledger import Ledger, SqliteLedger
from services.cost.pgledger import PostgresLedger, PostgresUrl
from services.cost.servicer import CostServicer

SERVICE_NAME: str = cost_pb2.DESCRIPTOR.services_by_name["CostService"].full_name

Close = Callable[[], Awaitable[None]]


async def open_ledger(
    database: Path | PostgresUrl,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_queued: int = DEFAULT_MAX_QUEUED,
) -> Ledger:
    """The ledger ``[cost] database`` names: PostgreSQL for a URL, else a SQLite file; its
    writer's group commit bounded by ``max_batch`` and ``max_queued`` records."""
    if isinstance(database, PostgresUrl):
        return await PostgresLedger.open(database, max_batch=max_batch, max_queued=max_queued)
    return await SqliteLedger.open(database, max_batch=max_batch, max_queued=max_queued)


async def create(
    settings: CostSettings,
    *,
    ledger: Ledger | None = None,
    health_interval_s: float = 2.0,
) -> tuple[grpc.aio.Server, int, HealthMonitor, Close]:
    """The server (not started) bound to ``settings.address``, its port, a health monitor
    (not started) and ``close``, which closes the ledger; call it after ``server.stop``.

    The ledger is the one ``settings.database`` names (:func:`open_ledger`) unless one is
    given (it is then still closed by ``close``). Raises ConfigError when the database cannot
    be opened and OSError when the address cannot be bound."""
    if ledger is None:
        ledger = await open_ledger(
            settings.database,
            max_batch=settings.max_batch_records,
            max_queued=settings.max_queued_records,
        )
    # with keys on, the tenants are those the keys file names (read again as it changes)
    tenants = KeyStore(settings.auth.keys_file).has_tenant if settings.auth.enabled else None
    servicer = CostServicer(settings.registry, ledger, tenants=tenants)

    def register(server: grpc.aio.Server) -> None:
        cost_pb2_grpc.add_CostServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]

    try:
        server, port, health = create_server(
            settings.address,
            register,
            [SERVICE_NAME],
            auth=settings.auth,
            tls=settings.tls,
            limits=settings.limits,
        )
    except BaseException:
        await ledger.close()
        raise
    monitor = HealthMonitor(health, [SERVICE_NAME], ledger.ping, interval_s=health_interval_s)
    return server, port, monitor, ledger.close
