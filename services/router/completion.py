"""Complete a prompt: route, moderate by policy, call the model with retries and fallbacks,
price and record the usage. No gRPC types in or out except the voter's verdict messages."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from opentelemetry import trace

from quorum import ids
from quorum.backends.openai import OpenAIChat
from quorum.backends.types import ChatMessage, ChatRequest, ChatResult, TokenUsage
from quorum.deadline import Deadline
from quorum.errors import ContentBlocked, InvalidArgument, QuorumError
from quorum.pricing import Cost, cost_of
from quorum.registry import ModelSpec, OpenAIBackend, Registry
from quorum.retry import RetryPolicy, retryable
from quorum.usage import UsageRecord, UsageRecorder, usage_key
from quorum.voter.v1 import voter_pb2
from services.router.routing import Route, choose

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

ROLES = ("system", "user", "assistant")
MAX_REQUEST_ID = 100
MAX_TOKENS_LIMIT = 32_768
#: share of the remaining time one moderation pass may use
MODERATION_SHARE = 0.3
#: at most this long for the usage record before it goes to the spool
RECORD_TIMEOUT_S = 1.0


class Moderation(Enum):
    NONE = "none"
    INPUT = "input"
    OUTPUT = "output"
    BOTH = "both"

    @property
    def input(self) -> bool:
        return self in (Moderation.INPUT, Moderation.BOTH)

    @property
    def output(self) -> bool:
        return self in (Moderation.OUTPUT, Moderation.BOTH)


class Moderator(Protocol):
    async def moderate(
        self, text: str, request_id: str, *, timeout_s: float
    ) -> voter_pb2.ModerateResponse: ...


@dataclass(frozen=True)
class Prompt:
    """A validated completion request."""

    request_id: str
    messages: tuple[ChatMessage, ...]
    model: str = ""
    task: str = ""
    max_tokens: int = 0
    temperature: float | None = None
    moderation: Moderation | None = None  # None: the router's default


@dataclass
class Completion:
    request_id: str
    spec: ModelSpec
    route_reason: str
    text: str = ""
    finish_reason: str = ""
    usage: TokenUsage = field(default_factory=TokenUsage)
    cost: Cost | None = None
    usage_recorded: bool = False
    latency_ms: int = 0
    input_moderation: voter_pb2.ModerateResponse | None = None
    output_moderation: voter_pb2.ModerateResponse | None = None


def validate(
    *,
    request_id: str,
    prompt: str,
    messages: Sequence[tuple[str, str]],
    max_chars: int,
    max_messages: int,
    max_tokens: int,
    temperature: float | None,
) -> tuple[str, tuple[ChatMessage, ...]]:
    """Check a request's fields; returns the request id to use and the messages."""
    rid = ids.request_id(request_id, limit=MAX_REQUEST_ID)
    if messages and prompt:
        raise InvalidArgument(
            "give either prompt or messages, not both",
            reason="PROMPT_AND_MESSAGES",
            metadata={"field": "messages"},
        )
    msgs = (
        tuple(ChatMessage(r, c) for r, c in messages)
        if messages
        else ((ChatMessage("user", prompt),) if prompt else ())
    )
    for i, m in enumerate(msgs):
        if m.role not in ROLES:
            raise InvalidArgument(
                f"messages[{i}].role must be one of {', '.join(ROLES)}",
                reason="BAD_ROLE",
                metadata={"field": f"messages[{i}].role"},
            )
    if not msgs or not any(m.content.strip() for m in msgs if m.role == "user"):
        raise InvalidArgument(
            "the prompt is empty: give a prompt or at least one non-empty user message",
            reason="PROMPT_EMPTY",
            metadata={"field": "prompt"},
        )
    if len(msgs) > max_messages:
        raise InvalidArgument(
            f"{len(msgs)} messages; the limit is {max_messages}",
            reason="TOO_MANY_MESSAGES",
            metadata={"field": "messages", "limit": str(max_messages)},
        )
    # counted as the voter sees it: the messages joined by newlines
    total = sum(len(m.content) for m in msgs) + len(msgs) - 1
    if total > max_chars:
        raise InvalidArgument(
            f"the prompt has {total} characters; the limit is {max_chars}",
            reason="PROMPT_TOO_LONG",
            metadata={"field": "prompt", "limit": str(max_chars)},
        )
    if not 0 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise InvalidArgument(
            f"max_tokens must be within 0..{MAX_TOKENS_LIMIT}",
            reason="BAD_MAX_TOKENS",
            metadata={"field": "max_tokens"},
        )
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise InvalidArgument(
            "temperature must be within 0..2",
            reason="BAD_TEMPERATURE",
            metadata={"field": "temperature"},
        )
    return rid, msgs


class Completer:
    def __init__(
        self,
        registry: Registry,
        chat: OpenAIChat,
        moderator: Moderator | None,
        recorder: UsageRecorder,
        *,
        retry: RetryPolicy,
        default_moderation: Moderation,
    ) -> None:
        self._registry = registry
        self._chat = chat
        self._moderator = moderator
        self._recorder = recorder
        self._retry = retry
        self._default_moderation = default_moderation

    # -- the two entry points ------------------------------------------------------------

    async def complete(self, prompt: Prompt, deadline: Deadline) -> Completion:
        start = time.monotonic()
        route, done = await self._prepare(prompt, deadline)
        result, spec = await self._call_with_fallbacks(route, prompt, deadline)
        done.spec = spec
        done.text, done.finish_reason, done.usage = result.text, result.finish_reason, result.usage
        await self._finish(prompt, done, deadline)
        done.latency_ms = int((time.monotonic() - start) * 1000)
        if done.output_moderation is not None and not done.output_moderation.is_safe:
            # the call happened and is paid for (usage is recorded); the text is withheld
            raise ContentBlocked(
                "the answer was withheld by moderation: "
                + "; ".join(done.output_moderation.reasons[:3]),
                reason="OUTPUT_BLOCKED",
                metadata={"request_id": prompt.request_id, "model": done.spec.name},
            )
        return done

    async def stream(self, prompt: Prompt, deadline: Deadline) -> AsyncIterator[str | Completion]:
        """Yields text deltas, then the Completion (text left empty). Retries and fallbacks
        happen only before the first delta has been sent. Output moderation runs on the
        whole answer once it is complete; its verdict is in the Completion."""
        start = time.monotonic()
        route, done = await self._prepare(prompt, deadline)
        parts: list[str] = []
        last_err: QuorumError | None = None
        for spec in route.candidates:
            attempt = 0
            while True:
                attempt += 1
                sent = False
                try:
                    async for chunk in self._chat.stream(
                        self._backend(spec),
                        self._request(spec, prompt),
                        timeout_s=deadline.timeout(),
                    ):
                        if chunk.delta:
                            sent = True
                            parts.append(chunk.delta)
                            yield chunk.delta
                        if chunk.usage is not None:
                            done.usage = chunk.usage
                        if chunk.finish_reason:
                            done.finish_reason = chunk.finish_reason
                    done.spec = spec
                    done.text = "".join(parts)
                    await self._finish(prompt, done, deadline)
                    done.text = ""
                    done.latency_ms = int((time.monotonic() - start) * 1000)
                    yield done
                    return
                except QuorumError as err:
                    if sent:
                        raise
                    last_err = err
                    if not await self._should_retry(err, attempt, deadline, spec):
                        break
            if last_err is not None and not retryable(last_err):
                raise last_err
        assert last_err is not None
        raise last_err

    # -- steps -----------------------------------------------------------------------------

    async def _prepare(self, prompt: Prompt, deadline: Deadline) -> tuple[Route, Completion]:
        route = choose(self._registry, model=prompt.model, task=prompt.task)
        span = trace.get_current_span()
        span.set_attribute("gen_ai.request.model", route.candidates[0].name)
        span.set_attribute("quorum.route.reason", route.reason)
        done = Completion(prompt.request_id, route.candidates[0], route.reason)
        if self._mode(prompt).input:
            text = "\n".join(m.content for m in prompt.messages if m.role != "assistant")
            verdict = await self._moderate(text, f"{prompt.request_id}:input", deadline)
            done.input_moderation = verdict
            if not verdict.is_safe:
                raise ContentBlocked(
                    "the prompt was blocked by moderation: " + "; ".join(verdict.reasons[:3]),
                    reason="INPUT_BLOCKED",
                    metadata={"request_id": prompt.request_id},
                )
        return route, done

    async def _finish(self, prompt: Prompt, done: Completion, deadline: Deadline) -> None:
        if self._mode(prompt).output and done.text.strip():
            done.output_moderation = await self._moderate(
                done.text, f"{prompt.request_id}:output", deadline
            )
        done.cost = cost_of(done.spec.price, done.usage)
        span = trace.get_current_span()
        span.set_attribute("gen_ai.response.model", done.spec.name)
        span.set_attribute("gen_ai.usage.input_tokens", done.usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", done.usage.output_tokens)
        span.set_attribute("quorum.cost.micros", done.cost.micros)
        span.set_attribute("quorum.cost.currency", done.cost.currency)
        record = UsageRecord(
            request_id=usage_key(prompt.request_id, "complete"),
            model=done.spec.name,
            input_tokens=done.usage.input_tokens,
            output_tokens=done.usage.output_tokens,
            source="router",
            occurred_at_us=int(time.time() * 1_000_000),
        )
        timeout = min(RECORD_TIMEOUT_S, max(deadline.remaining() - 0.02, 0.05))
        done.usage_recorded = await self._recorder.record(record, timeout_s=timeout) is not None

    async def _moderate(
        self, text: str, request_id: str, deadline: Deadline
    ) -> voter_pb2.ModerateResponse:
        if self._moderator is None:
            raise InvalidArgument(
                "moderation was asked for but this router has no voter configured",
                reason="MODERATION_UNAVAILABLE",
            )
        return await self._moderator.moderate(
            text, request_id, timeout_s=deadline.timeout(share=MODERATION_SHARE)
        )

    async def _call_with_fallbacks(
        self, route: Route, prompt: Prompt, deadline: Deadline
    ) -> tuple[ChatResult, ModelSpec]:
        last_err: QuorumError | None = None
        for spec in route.candidates:
            attempt = 0
            while True:
                attempt += 1
                try:
                    result = await self._chat.complete(
                        self._backend(spec),
                        self._request(spec, prompt),
                        timeout_s=deadline.timeout(),
                    )
                    return result, spec
                except QuorumError as err:
                    last_err = err
                    if not await self._should_retry(err, attempt, deadline, spec):
                        break
            if not retryable(last_err):
                raise last_err
            log.warning("model %s failed (%s); trying the next one", spec.name, last_err.reason)
        assert last_err is not None
        raise last_err

    async def _should_retry(
        self, err: QuorumError, attempt: int, deadline: Deadline, spec: ModelSpec
    ) -> bool:
        """Wait and return True when the same model deserves another attempt."""
        if not retryable(err) or attempt >= self._retry.max_attempts:
            return False
        wait = self._retry.delay(attempt, err, random.random())
        if wait >= deadline.remaining():
            return False
        log.info("%s: %s; attempt %d in %.2fs", spec.name, err.reason, attempt + 1, wait)
        await asyncio.sleep(wait)
        return True

    # -- helpers -----------------------------------------------------------------------------

    def _mode(self, prompt: Prompt) -> Moderation:
        return prompt.moderation or self._default_moderation

    @staticmethod
    def _backend(spec: ModelSpec) -> OpenAIBackend:
        assert isinstance(spec.backend, OpenAIBackend)  # routing only picks these
        return spec.backend

    @staticmethod
    def _request(spec: ModelSpec, prompt: Prompt) -> ChatRequest:
        max_tokens = min(prompt.max_tokens or spec.max_output_tokens, spec.max_output_tokens)
        return ChatRequest(
            messages=prompt.messages, max_tokens=max_tokens, temperature=prompt.temperature
        )
