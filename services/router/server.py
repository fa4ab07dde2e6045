"""Build the router: the HTTP client, channels to voter and cost, the completer, the server.
Everything opened here is closed by the returned ``close``."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import aio as triton_aio

from quorum import channels, metrics, telemetry, tokens
from quorum.backends.chat import Chats
from quorum.backends.openai import OpenAIChat
from quorum.backends.transport import ProviderClient
from quorum.backends.triton import TritonScorer
from quorum.backends.tritonchat import TritonChat
from quorum.backends.tritonrouted import TritonRoutedChat
from quorum.cost.v1 import cost_pb2_grpc
from quorum.limits import RateLimiter
from quorum.registry import ConfigError, Registry, TritonBackend
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.server import HealthMonitor, create_server
from quorum.usage import Meter
from services.router.breaker import Breakers
from services.router.budgetview import BudgetView
from services.router.classifier import TaskClassifier
from services.router.completion import Completer, Completion, StepDown
from services.router.config import RouterSettings
from services.router.replay import Replays
from services.router.servicer import RouterServicer
from services.router.voterclient import VoterClient

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
#: how long start-up waits for Triton to say whether a chat model is loaded
TRITON_READY_TIMEOUT_S = 2.0

log = logging.getLogger(__name__)


async def local_models(
    registry: Registry, triton: triton_aio.InferenceServerClient | None, address: str
) -> Registry:
    """The registry with each Triton chat model (or routing ensemble) that cannot answer
    marked unavailable: no Triton configured, or the model not loaded there (its extra not
    installed, or an optional model not asked for)."""
    chat = [
        (m.name, m.backend.triton_model)
        for m in registry.models.values()
        if isinstance(m.backend, TritonBackend) and m.generative and m.unavailable_reason is None
    ]
    routed = {
        m.name
        for m in registry.models.values()
        if isinstance(m.backend, TritonBackend) and m.backend.outputs == "routed"
    }
    if not chat:
        return registry
    if triton is None:
        why = "no Triton address is configured ([router] triton_address)"
        return registry.without(dict.fromkeys((name for name, _ in chat), why))

    async def ready(model: str) -> bool:
        try:
            return bool(await triton.is_model_ready(model, client_timeout=TRITON_READY_TIMEOUT_S))
        except Exception:
            return False

    states = await asyncio.gather(*(ready(model) for _, model in chat))

    def not_loaded(name: str, model: str) -> str:
        load = (
            f'[triton] load_optional = ["{model}"]'
            if name in routed
            else "the local-llm extra: make local-llm"
        )
        return f"Triton model {model!r} is not loaded at {address} ({load})"

    reasons = {
        name: not_loaded(name, model)
        for (name, model), ok in zip(chat, states, strict=True)
        if not ok
    }
    for name, model in chat:
        if name not in reasons:
            log.info("local model %s: Triton model %s is ready at %s", name, model, address)
    return registry.without(reasons) if reasons else registry


async def _leftover_journals(settings: RouterSettings, cost: grpc.aio.Channel) -> list[Meter]:
    """The usage journals of workers beyond ``workers`` (left by a run with more of them),
    each opened by a meter of its own that sends what it holds to the cost service (the first
    process does this, so fewer workers lose no usage). One another process holds is left
    to it."""
    pattern = re.compile(
        rf"{re.escape(settings.journal_path.stem)}-(\d+){re.escape(settings.journal_path.suffix)}"
    )
    meters = []
    for path in sorted(settings.journal_path.parent.glob(f"{settings.journal_path.stem}-*")):
        m = pattern.fullmatch(path.name)
        if m is None or int(m[1]) < settings.workers:
            continue
        meter = Meter(
            cost_pb2_grpc.CostServiceStub(cost), path, source="router", settings=settings.meter
        )
        try:
            await meter.start()
        except ConfigError as e:  # in use: that worker is still running (draining)
            log.warning("not sending what %s holds: %s", path, e)
            continue
        if meter.backlog:
            log.info("sending the %d usage records left in %s", meter.backlog, path)
        metrics.watch_backlog(meter)
        meters.append(meter)
    return meters


async def create(
    settings: RouterSettings, *, address: str | None = None
) -> tuple[grpc.aio.Server, int, HealthMonitor, Callable[[], Awaitable[None]]]:
    # before anything is opened: a refused address leaves nothing to close
    settings.auth.check_bind(address or settings.address, "[router] address")
    http = ProviderClient(max_connections=200)
    voter_channel = channels.connect(
        settings.voter_address, settings.auth.service_token, settings.tls
    )
    cost_channel = channels.connect(
        settings.cost_address, settings.auth.service_token, settings.tls
    )
    meter = Meter(
        cost_pb2_grpc.CostServiceStub(cost_channel),
        settings.journal_path,
        source="router",
        settings=settings.meter,
        on_settled=metrics.UsageObserver(settings.registry),  # tokens and cost by model
    )
    metrics.watch_backlog(meter)
    await meter.start()  # before serving: recovers what a previous process left
    leftovers = await _leftover_journals(settings, cost_channel) if settings.worker == 0 else []
    await asyncio.to_thread(tokens.warm)
    # one Triton client: the chat models served there (routed_chat too), and the prompt
    # classifier
    triton = (
        triton_aio.InferenceServerClient(url=settings.triton_address)
        if settings.triton_address
        else None
    )
    registry = await local_models(settings.registry, triton, settings.triton_address)
    auto = settings.auto
    local_default = registry.no_key_model(settings.no_key_model)
    if local_default:
        registry, auto = replace(registry, default_model=local_default), None
        log.info(
            "no provider API key is set: requests that name no model or task go to the local "
            "model %s",
            local_default,
        )
    classifier: TaskClassifier | None = None
    if auto is not None and auto.classifier is not None and triton is not None:
        classifier = TaskClassifier(TritonScorer(triton), auto.classifier)
        await classifier.check()  # opens the connection; not ready: the rules route
    completer = Completer(
        registry,
        Chats(
            OpenAIChat(http, os.environ, capture_content=telemetry.capture_content(os.environ)),
            TritonChat(triton) if triton else None,
            TritonRoutedChat(triton) if triton else None,
        ),
        VoterClient(
            voter_channel, batch=settings.moderation_batch, in_flight=settings.moderation_calls
        ),
        meter,
        retry=settings.retry,
        moderation=settings.moderation,
        replays=Replays[Completion](
            ttl_s=settings.replay_ttl_s, max_entries=settings.replay_max_entries
        ),
        record_wait_s=settings.meter.record_wait_s,
        limits=RateLimiter(settings.rate_limits, clock=time.monotonic),
        auto=auto,
        classifier=classifier,
        breakers=Breakers(
            failures=settings.breaker_failures,
            cooldown_s=settings.breaker_cooldown_s,
            clock=time.monotonic,
        ),
        step_down=(
            StepDown(
                BudgetView(
                    cost_pb2_grpc.CostServiceStub(cost_channel), ttl_s=settings.budget_cache_s
                ),
                at=settings.step_down_at,
                task=settings.step_down_task,
            )
            if settings.step_down_at > 0
            else None
        ),
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
        auth=settings.auth,
        tls=settings.tls,
        limits=settings.limits,
        reuse_port=settings.workers > 1,  # the other workers bind this port too
    )
    voter_health = health_pb2_grpc.HealthStub(voter_channel)

    async def ready() -> bool:
        # the voter must be SERVING when moderation is on by default; the cost service may be
        # down (usage waits in the journal and is re-sent)
        if not settings.moderation.may_moderate:
            return True
        try:
            resp = await voter_health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    monitor = HealthMonitor(health, [SERVICE_NAME], ready)

    async def close() -> None:
        await meter.stop()
        for m in leftovers:
            await m.stop()
        await http.aclose()
        if triton is not None:
            await triton.close()
        await voter_channel.close()
        await cost_channel.close()

    return server, port, monitor, close
