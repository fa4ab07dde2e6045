"""Build the voter: clients for Triton, the HTTP providers and the cost service, the judges,
the gRPC server. Everything opened here is closed by the returned ``close``."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import grpc
from tritonclient.grpc import aio as triton_aio

from quorum import channels, metrics, telemetry, tokens
from quorum.backends.coalesce import CoalescingScorer
from quorum.backends.openai import OpenAIChat
from quorum.backends.transport import ProviderClient
from quorum.cost.v1 import cost_pb2_grpc
from quorum.limits import RateLimiter
from quorum.registry import TritonBackend
from quorum.server import HealthMonitor, create_server
from quorum.usage import Meter
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc
from services.voter.config import VoterSettings
from services.voter.judges import LLMJudge, build_judges
from services.voter.moderation import Moderator
from services.voter.servicer import VoterServicer

SERVICE_NAME = voter_pb2.DESCRIPTOR.services_by_name["VoterService"].full_name


async def create(
    settings: VoterSettings, *, address: str | None = None
) -> tuple[grpc.aio.Server, int, HealthMonitor, Callable[[], Awaitable[None]]]:
    # before anything is opened: a refused address leaves nothing to close
    settings.auth.check_bind(address or settings.address, "[voter] address")
    http = ProviderClient(max_connections=100)
    triton = triton_aio.InferenceServerClient(url=settings.triton_address)
    cost_channel = channels.connect(
        settings.cost_address, settings.auth.service_token, settings.tls
    )
    meter = Meter(
        cost_pb2_grpc.CostServiceStub(cost_channel),
        settings.journal_path,
        source="voter",
        settings=settings.meter,
        on_settled=metrics.UsageObserver(settings.registry),  # tokens and cost by model
    )
    metrics.watch_backlog(meter)
    await meter.start()  # before serving: recovers what a previous process left
    chat = OpenAIChat(http, os.environ, capture_content=telemetry.capture_content(os.environ))
    scorer = CoalescingScorer(triton)  # concurrent texts to one model: one inference

    judges = build_judges(settings.registry, scorer, chat, meter)
    triton_models = [
        j.spec.backend.triton_model
        for j in judges.values()
        if isinstance(j.spec.backend, TritonBackend)
    ]
    moderator = Moderator(
        judges,
        settings.policy,
        model_timeout_s=settings.model_timeout_s,
        max_text_chars=settings.max_text_chars,
        early_decision=settings.early_decision,
        limiter=RateLimiter(settings.rate_limits, clock=time.monotonic),
        max_batch_texts=settings.max_batch_texts,
        max_batch_bytes=settings.max_batch_bytes,
    )
    servicer = VoterServicer(
        moderator,
        default_timeout_s=settings.default_timeout_s,
        max_timeout_s=settings.max_timeout_s,
    )
    server, port, health = create_server(
        address or settings.address,
        lambda s: voter_pb2_grpc.add_VoterServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        auth=settings.auth,
        tls=settings.tls,
        limits=settings.limits,
    )

    async def ready() -> bool:
        # SERVING only when every local model answers ready (remote ones are checked per call)
        for model in triton_models:
            if not await scorer.is_ready(model, timeout_s=1.0):
                return False
        return True

    monitor = HealthMonitor(health, [SERVICE_NAME], ready)
    if any(isinstance(j, LLMJudge) for j in judges.values()):
        await asyncio.to_thread(tokens.warm)  # paid judges bill estimates with it

    async def close() -> None:
        await meter.stop()
        await http.aclose()
        await triton.close()
        await cost_channel.close()

    return server, port, monitor, close
