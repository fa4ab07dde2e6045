"""Build the voter: clients for Triton, the HTTP providers and the cost service, the judges,
the gRPC server. Everything opened here is closed by the returned ``close``."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import grpc
import httpx
from tritonclient.grpc import aio as triton_aio

from quorum import channels
from quorum.backends.openai import OpenAIChat
from quorum.backends.triton import TritonScorer
from quorum.cost.v1 import cost_pb2_grpc
from quorum.registry import OpenAIBackend, TritonBackend
from quorum.server import HealthMonitor, create_server
from quorum.usage import UsageRecorder
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc
from services.voter.config import VoterSettings
from services.voter.judges import Judge, LLMJudge, TritonJudge
from services.voter.moderation import Moderator
from services.voter.servicer import VoterServicer
from services.voter.voting import Policy

SERVICE_NAME = voter_pb2.DESCRIPTOR.services_by_name["VoterService"].full_name


async def create(
    settings: VoterSettings, *, address: str | None = None
) -> tuple[grpc.aio.Server, int, HealthMonitor, Callable[[], Awaitable[None]]]:
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))
    triton = triton_aio.InferenceServerClient(url=settings.triton_address)
    cost_channel = channels.insecure_channel(settings.cost_address)
    recorder = UsageRecorder(cost_pb2_grpc.CostServiceStub(cost_channel), settings.spool_path)
    chat = OpenAIChat(http, os.environ)
    scorer = TritonScorer(triton)

    judges: dict[str, Judge] = {}
    triton_models: list[str] = []
    for spec in settings.registry.judges():
        if isinstance(spec.backend, TritonBackend):
            judges[spec.name] = TritonJudge(spec, scorer)
            triton_models.append(spec.backend.triton_model)
        elif isinstance(spec.backend, OpenAIBackend):
            judges[spec.name] = LLMJudge(spec, chat)
    moderator = Moderator(
        judges,
        Policy(
            min_votes=settings.min_votes,
            category_threshold=settings.category_threshold,
            review_confidence=settings.review_confidence,
        ),
        model_timeout_s=settings.model_timeout_s,
        max_text_chars=settings.max_text_chars,
        recorder=recorder,
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
    )

    async def ready() -> bool:
        # SERVING only when every local model answers ready (remote ones are checked per call)
        for model in triton_models:
            if not await scorer.is_ready(model, timeout_s=1.0):
                return False
        return True

    monitor = HealthMonitor(health, [SERVICE_NAME], ready)
    recorder.start()

    async def close() -> None:
        await recorder.stop()
        await http.aclose()
        await triton.close()
        await cost_channel.close()

    return server, port, monitor, close
