"""Builds the cost server: the servicer over an open ledger, reflection and health (SERVING
only while the ledger answers). Starting, serving and stopping are the caller's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.server import HealthMonitor, create_server
from services.cost.config import CostSettings
from services.cost.ledger import Ledger, SqliteLedger
from services.cost.servicer import CostServicer

SERVICE_NAME: str = cost_pb2.DESCRIPTOR.services_by_name["CostService"].full_name

Close = Callable[[], Awaitable[None]]


async def create(
    settings: CostSettings,
    *,
    ledger: Ledger | None = None,
    health_interval_s: float = 2.0,
) -> tuple[grpc.aio.Server, int, HealthMonitor, Close]:
    """The server (not started) bound to ``settings.address``, its port, a health monitor
    (not started) and ``close``, which closes the ledger; call it after ``server.stop``.

    The ledger is :class:`SqliteLedger` on ``settings.database`` unless one is given (it is
    then still closed by ``close``). Raises ConfigError when the database cannot be opened and
    OSError when the address cannot be bound."""
    if ledger is None:
        ledger = await SqliteLedger.open(settings.database)
    servicer = CostServicer(settings.registry, ledger)

    def register(server: grpc.aio.Server) -> None:
        cost_pb2_grpc.add_CostServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]

    try:
        server, port, health = create_server(settings.address, register, [SERVICE_NAME])
    except BaseException:
        await ledger.close()
        raise
    monitor = HealthMonitor(health, [SERVICE_NAME], ledger.ping, interval_s=health_interval_s)
    return server, port, monitor, ledger.close
