"""Build the router: the HTTP client, channels to voter and cost, the completer, the server.
Everything opened here is closed by the returned ``close``."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quorum import channels
from quorum.backends.openai import OpenAIChat
from quorum.cost.v1 import cost_pb2_grpc
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.server import HealthMonitor, create_server
from quorum.usage import UsageRecorder
from services.router.completion import Completer, Moderation
from services.router.config import RouterSettings
from services.router.servicer import RouterServicer
from services.router.voterclient import VoterClient

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


async def create(
    settings: RouterSettings, *, address: str | None = None
) -> tuple[grpc.aio.Server, int, HealthMonitor, Callable[[], Awaitable[None]]]:
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=50))
    voter_channel = channels.insecure_channel(settings.voter_address)
    cost_channel = channels.insecure_channel(settings.cost_address)
    recorder = UsageRecorder(cost_pb2_grpc.CostServiceStub(cost_channel), settings.spool_path)
    completer = Completer(
        settings.registry,
        OpenAIChat(http, os.environ),
        VoterClient(voter_channel),
        recorder,
        retry=settings.retry,
        default_moderation=settings.moderation,
    )
    servicer = RouterServicer(
        completer,
        default_timeout_s=settings.default_timeout_s,
        max_timeout_s=settings.max_timeout_s,
        max_prompt_chars=settings.max_prompt_chars,
        max_messages=settings.max_messages,
    )
    server, port, health = create_server(
        address or settings.address,
        lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
    )
    voter_health = health_pb2_grpc.HealthStub(voter_channel)

    async def ready() -> bool:
        # the voter must be SERVING when moderation is on by default; the cost service may be
        # down (usage is spooled and re-sent)
        if settings.moderation is Moderation.NONE:
            return True
        try:
            resp = await voter_health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    monitor = HealthMonitor(health, [SERVICE_NAME], ready)
    recorder.start()

    async def close() -> None:
        await recorder.stop()
        await http.aclose()
        await voter_channel.close()
        await cost_channel.close()

    return server, port, monitor, close
