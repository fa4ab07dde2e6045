"""Complete a prompt: route, moderate by policy, call the model with retries and fallbacks,
price and bill it. No gRPC types in or out except the voter's verdict messages.

Billing (see :mod:`quorum.usage`): every attempt at a provider call is noted in the usage
journal before it is made and settled the moment it ends (in a ``finally`` for streams), before
output moderation or anything else that can fail, so each provider call is billed exactly once
whatever happens next. A backend that chooses the model itself (the ``routed_chat`` ensemble,
``triton_outputs = "routed"``) is billed as the model that answered, with that model's counts
and at its prices; the answer names that model and says that the backend chose it. A request
id the client gave is kept (:mod:`services.router.replay`): the same request again is answered
from the first call, a different one is refused."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol, TypeVar

from opentelemetry import trace

from quorum import ids, tokens
from quorum.backends.chat import ChatBackend
from quorum.backends.types import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResult,
    Routed,
    TokenUsage,
)
from quorum.deadline import Deadline
from quorum.errors import (
    ContentBlocked,
    DeadlineExceeded,
    InvalidArgument,
    QuorumError,
    Unavailable,
)
from quorum.limits import RateLimiter
from quorum.money import NoExchangeRate
from quorum.pricing import Cost, PriceNotFound, Pricing, bill
from quorum.registry import ModelSpec, Registry
from quorum.retry import RetryPolicy, retryable
from quorum.usage import Budgeted, Charge, Meter, usage_key
from quorum.voter.v1 import voter_pb2
from services.router.breaker import Breakers
from services.router.budgetview import BudgetView
from services.router.replay import Replays, Ticket
from services.router.routing import AutoRouting, Route, TaskGuess, choose, step_down

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

ROLES = ("system", "user", "assistant")
MAX_REQUEST_ID = 100
MAX_TOKENS_LIMIT = 32_768
#: share of the remaining time one moderation pass may use
MODERATION_SHARE = 0.3
#: time kept back from the deadline for answering after the usage is settled
ACCOUNTING_MARGIN_S = 0.02


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

    def union(self, other: Moderation) -> Moderation:
        """What both ask for together (INPUT with OUTPUT is BOTH)."""
        i, o = self.input or other.input, self.output or other.output
        return (
            Moderation.BOTH
            if i and o
            else Moderation.INPUT
            if i
            else (Moderation.OUTPUT if o else Moderation.NONE)
        )


@dataclass(frozen=True)
class ModerationPolicy:
    """Which moderation a request gets: what it asks for (the router's default when it asks
    nothing), never less than its tenant's floor (the operator's ``[router]
    moderation_floor``, or the tenant's entry in ``[router.moderation_floors]``). A request
    that asks for less is raised to the floor, not refused."""

    default: Moderation = Moderation.INPUT
    floor: Moderation = Moderation.NONE
    tenant_floors: Mapping[str, Moderation] = field(default_factory=dict)

    @property
    def may_moderate(self) -> bool:
        """Whether any request can be moderated (the voter is then needed)."""
        modes = (self.default, self.floor, *self.tenant_floors.values())
        return any(m is not Moderation.NONE for m in modes)

    def effective(self, asked: Moderation | None, tenant: str) -> Moderation:
        return (asked or self.default).union(self.tenant_floors.get(tenant, self.floor))


T = TypeVar("T")


class ChatClient(Protocol):
    """What the router needs of a chat model client (:class:`quorum.backends.chat.Chats` is
    the one it is given: OpenAI-compatible HTTP or Triton, by the backend's kind): a unary
    call and a stream, each bounded by ``timeout_s`` overall and failing with
    :mod:`quorum.errors` only."""

    async def complete(
        self, backend: ChatBackend, request: ChatRequest, *, timeout_s: float
    ) -> ChatResult: ...

    def stream(
        self, backend: ChatBackend, request: ChatRequest, *, timeout_s: float
    ) -> AsyncGenerator[ChatChunk, None]: ...


class TaskClassifier(Protocol):
    """The prompt classifier automatic routing asks (:class:`services.router.classifier.
    TaskClassifier`): its guess at a prompt's task, or None when it did not answer in time; it
    never raises for an outage of its own."""

    async def guess(self, text: str, deadline: Deadline) -> TaskGuess | None: ...


class Moderator(Protocol):
    async def moderate(
        self, text: str, request_id: str, *, tenant: str, timeout_s: float
    ) -> voter_pb2.ModerateResponse: ...


def with_failures(err: QuorumError, failures: list[tuple[str, str]]) -> QuorumError:
    """``err`` (the last model's failure) carrying every model's, in the order tried, in its
    metadata (``failures``: "model: REASON; ..."), when more than one model was tried."""
    if len(failures) > 1:
        err.metadata["failures"] = "; ".join(f"{m}: {r}" for m, r in failures)
    return err


def fell_back(reason: str, failures: list[tuple[str, str]]) -> str:
    """A route's reason, saying which models failed (and why) before the one that answered."""
    if not failures:
        return reason
    return f"{reason}; answered after " + ", ".join(f"{m} failed ({r})" for m, r in failures)


@dataclass(frozen=True)
class StepDown:
    """Near a budget's limit, route to cheaper models: when the tenant has used ``at`` (a
    fraction) of a budget, a request that names no model goes to the cheapest usable models
    for ``task`` first (a request that names its model keeps it)."""

    view: BudgetView
    at: float = 0.8
    task: str = "chat"

    async def apply(self, registry: Registry, route: Route, tenant: str) -> Route:
        used = await self.view.used(tenant)
        if used is None or used < self.at:
            return route
        return step_down(registry, route, self.task, used, time.time_ns() // 1000)


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
    #: the client chose request_id: its retries are answered from the first call
    client_id: bool = False
    #: whose request it is: the budgets its calls count against
    tenant: str = ids.DEFAULT_TENANT
    #: the brief's integer model id, another way to name ``model``
    model_id: int | None = None

    def fingerprint(self) -> str:
        """What makes two requests with one id the same request."""
        body = {
            "messages": [[m.role, m.content] for m in self.messages],
            "model": self.model,
            "task": self.task,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "moderation": self.moderation.value if self.moderation else "",
            "model_id": self.model_id,
        }
        blob = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class Completion:
    request_id: str
    #: the model that answered (billed and priced as that model's)
    spec: ModelSpec
    route_reason: str
    text: str = ""
    #: the backend the router called: the answering model's provider, or "triton" for a
    #: model reached through a routing ensemble (set once the call has answered)
    provider: str = ""
    #: the answer came from the provider simulator
    simulated: bool = False
    finish_reason: str = ""
    usage: TokenUsage = field(default_factory=TokenUsage)
    cost: Cost | None = None
    usage_recorded: bool = False
    usage_estimated: bool = False
    replayed: bool = False
    latency_ms: int = 0
    input_moderation: voter_pb2.ModerateResponse | None = None
    output_moderation: voter_pb2.ModerateResponse | None = None
    charge: Charge | None = field(default=None, repr=False, compare=False)


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


@dataclass
class _Stream:
    """A provider's stream as it goes: what it has sent so far, and the rest of it."""

    chunks: AsyncGenerator[ChatChunk, None]
    parts: list[str] = field(default_factory=list)
    usage: TokenUsage = field(default_factory=TokenUsage)
    reported: bool = False
    finish: str = ""
    routed: Routed | None = None

    def take(self, chunk: ChatChunk) -> None:
        if chunk.delta:
            self.parts.append(chunk.delta)
        if chunk.usage is not None:
            self.usage, self.reported = chunk.usage, chunk.usage_reported
        if chunk.finish_reason:
            self.finish = chunk.finish_reason
        if chunk.routed is not None:
            self.routed = chunk.routed

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Completer:
    def __init__(
        self,
        registry: Registry,
        chat: ChatClient,
        moderator: Moderator | None,
        meter: Meter,
        *,
        retry: RetryPolicy,
        moderation: ModerationPolicy,
        replays: Replays[Completion],
        record_wait_s: float = 0.5,
        limits: RateLimiter | None = None,
        auto: AutoRouting | None = None,
        step_down: StepDown | None = None,
        breakers: Breakers | None = None,
        classifier: TaskClassifier | None = None,
    ) -> None:
        self._registry = registry
        self._chat = chat
        self._moderator = moderator
        self._meter = meter
        self._retry = retry
        self._moderation = moderation
        self._replays = replays
        self._record_wait = record_wait_s
        self._limits = limits or RateLimiter(clock=time.monotonic)
        self._auto = auto
        self._step_down = step_down
        self._breakers = breakers or Breakers(failures=0, cooldown_s=0, clock=time.monotonic)
        # asked only when the routing has a classifier to decide with
        self._classifier = classifier if auto is not None and auto.classifier else None

    # -- the two entry points ------------------------------------------------------------

    async def complete(self, prompt: Prompt, deadline: Deadline) -> Completion:
        start = time.monotonic()
        got = await self._acquire(prompt, deadline)
        if isinstance(got, Completion):
            done = got
        else:
            try:
                done = await self._generate(prompt, deadline)
            except BaseException:
                got.drop()
                raise
            got.store(done)
        await self._answer(prompt, done, deadline)
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

    async def stream(
        self, prompt: Prompt, deadline: Deadline
    ) -> AsyncGenerator[str | Completion, None]:
        """Yields text deltas, then the Completion (text left empty). Retries and fallbacks
        happen only before the first delta has been sent. Output moderation runs on the
        whole answer once it is complete; its verdict is in the Completion. A replayed
        request yields its stored text as one delta."""
        start = time.monotonic()
        got = await self._acquire(prompt, deadline)
        if isinstance(got, Completion):
            done = got
            if done.text:
                yield done.text
        else:
            try:
                route, done = await self._prepare(prompt, deadline)
                parts: list[str] = []
                # closed here, not left to the garbage collector, when the client goes away:
                # the call is settled (billed) at once
                async with contextlib.aclosing(
                    self._streamed(route, prompt, deadline, done)
                ) as deltas:
                    async for delta in deltas:
                        parts.append(delta)
                        yield delta
                done.text = "".join(parts)
            except BaseException:
                got.drop()
                raise
            got.store(done)
        await self._answer(prompt, done, deadline)
        done.latency_ms = int((time.monotonic() - start) * 1000)
        yield replace(done, text="")

    # -- steps -----------------------------------------------------------------------------

    async def _acquire(self, prompt: Prompt, deadline: Deadline) -> Completion | Ticket[Completion]:
        """A replay (a copy of the stored Completion), or a ticket to make the call (one that
        keeps nothing when the id is ours: nobody can send it again)."""
        if not prompt.client_id:
            return Ticket.unkept()
        # one tenant's request ids are its own: another tenant can neither collide with
        # them nor be answered from them
        got = await self._replays.acquire(
            f"{prompt.tenant}/{prompt.request_id}", prompt.fingerprint(), deadline.timeout()
        )
        if isinstance(got, Completion):
            trace.get_current_span().set_attribute("quorum.replayed", True)
            return replace(got, replayed=True)
        return got

    async def _generate(self, prompt: Prompt, deadline: Deadline) -> Completion:
        route, done = await self._prepare(prompt, deadline)
        result, spec, charge, failures = await self._attempts(route, prompt, deadline, self._call)
        done.route_reason = fell_back(done.route_reason, failures)
        self._settle(done, spec, charge, result, result.usage_reported)
        done.text, done.finish_reason = result.text, result.finish_reason
        self._priced(done)
        return done

    def _settle(
        self,
        done: Completion,
        spec: ModelSpec,
        charge: Charge,
        answer: ChatResult | _Stream,
        reported: bool,
    ) -> None:
        """``spec`` answered: bill the call (as the model a routing backend chose, when one
        did) and note who answered."""
        self._breakers.succeeded(spec.provider_name)
        routed = answer.routed
        charge.answered(
            answer.usage, reported=reported, text=answer.text, model=routed.model if routed else ""
        )
        self._answered_by(done, spec, routed)
        done.charge = charge

    def _answered_by(self, done: Completion, spec: ModelSpec, routed: Routed | None) -> None:
        """Who answered: ``spec``, or the model a routing backend (``spec``) chose, which the
        call is billed and priced as; the route's reason then says so."""
        done.provider = spec.provider_name
        if routed is None:
            done.spec, done.simulated = spec, spec.simulated
            return
        chosen = self._registry.models.get(routed.model)
        if chosen is None:
            # another registry where Triton runs: billed under the name it gave, the cost is
            # the cost service's to find (or to refuse, kept for a person to see)
            log.warning(
                "%s answered with %s, a model not in this registry", spec.name, routed.model
            )
            chosen = replace(spec, name=routed.model, pricing=Pricing())
        done.spec, done.simulated = chosen, routed.simulated
        why = f" ({routed.reason})" if routed.reason else ""
        done.route_reason += f"; {spec.name} chose {routed.model}{why}"

    async def _prepare(self, prompt: Prompt, deadline: Deadline) -> tuple[Route, Completion]:
        model = self._named_model(prompt)
        text = "\n".join(m.content for m in prompt.messages if m.role == "user")
        guess = None
        if self._classifier is not None and not model and not prompt.task:
            guess = await self._classifier.guess(text, deadline)
        route = choose(
            self._registry,
            model=model,
            task=prompt.task,
            auto=self._auto,
            text=text,
            guess=guess,
        )
        if self._step_down is not None and not self._named_model(prompt):
            route = await self._step_down.apply(self._registry, route, prompt.tenant)
        first = route.candidates[0]
        # the most the request may use: its input (counted cheaply) and its output allowance
        most = tokens.approx_messages(prompt.messages) + min(
            prompt.max_tokens or first.max_output_tokens, first.max_output_tokens
        )
        self._limits.admit(prompt.tenant, most)  # RESOURCE_EXHAUSTED (RATE_LIMITED)
        span = trace.get_current_span()
        span.set_attribute("gen_ai.request.model", route.candidates[0].name)
        span.set_attribute("quorum.route.reason", route.reason)
        done = Completion(prompt.request_id, route.candidates[0], route.reason)
        if self._mode(prompt).input:
            text = "\n".join(m.content for m in prompt.messages if m.role != "assistant")
            verdict = await self._moderate(prompt, text, "input", deadline)
            done.input_moderation = verdict
            if not verdict.is_safe:
                raise ContentBlocked(
                    "the prompt was blocked by moderation: " + "; ".join(verdict.reasons[:3]),
                    reason="INPUT_BLOCKED",
                    metadata={"request_id": prompt.request_id},
                )
        return route, done

    def _priced(self, done: Completion) -> None:
        """Usage and cost from the settled charge (what the ledger gets)."""
        assert done.charge is not None and done.charge.record is not None
        rec = done.charge.record
        done.usage = TokenUsage(rec.input_tokens, rec.output_tokens, rec.cached_input_tokens)
        done.usage_estimated = rec.estimated
        span = trace.get_current_span()
        # our own names here: gen_ai.usage.* sits on the model call's span alone, so that a
        # dashboard summing tokens over a trace counts each call once
        span.set_attribute("quorum.model", done.spec.name)
        span.set_attribute("quorum.usage.input_tokens", done.usage.input_tokens)
        span.set_attribute("quorum.usage.output_tokens", done.usage.output_tokens)
        try:
            done.cost = bill(
                done.spec.name, done.spec.pricing, done.usage, rec.occurred_at_us,
                self._registry.rates,
            ).cost  # fmt: skip
        except (PriceNotFound, NoExchangeRate) as e:
            # the call was made and its record is journaled; the cost service will say what
            # it costs (or refuse it for a person to see) once the price or rate is there
            log.warning("the cost of a call of %s is unknown: %s", done.spec.name, e.message)
            done.cost = None
            return
        span.set_attribute("quorum.cost.micros", done.cost.micros)
        span.set_attribute("quorum.cost.currency", done.cost.currency)

    async def _answer(self, prompt: Prompt, done: Completion, deadline: Deadline) -> None:
        """After the call is billed: moderate the output (when asked and not done yet) and
        see whether the cost service has taken the record."""
        if self._mode(prompt).output and done.output_moderation is None and done.text.strip():
            done.output_moderation = await self._moderate(prompt, done.text, "output", deadline)
        if done.charge is not None and not done.replayed:
            wait = min(self._record_wait, deadline.remaining() - ACCOUNTING_MARGIN_S)
            done.usage_recorded = await done.charge.recorded(wait)

    async def _moderate(
        self, prompt: Prompt, text: str, step: str, deadline: Deadline
    ) -> voter_pb2.ModerateResponse:
        """The voter's verdict on the ``step`` ("input", "output") of ``prompt``, for its
        tenant: the judges' calls are the tenant's spend."""
        request_id = f"{prompt.request_id}:{step}"
        if self._moderator is None:
            raise InvalidArgument(
                "moderation was asked for but this router has no voter configured",
                reason="MODERATION_UNAVAILABLE",
            )
        verdict = await self._moderator.moderate(
            text,
            request_id,
            tenant=prompt.tenant,
            timeout_s=deadline.timeout(share=MODERATION_SHARE),
        )
        if not verdict.quorum:  # an outage of the judges, not a judgement of the text
            raise Unavailable(
                "too few moderation models answered: " + "; ".join(verdict.reasons[:2]),
                reason="NO_QUORUM",
                metadata={"request_id": request_id},
            )
        return verdict

    async def _begin(
        self, prompt: Prompt, spec: ModelSpec, request: ChatRequest, deadline: Deadline
    ) -> Charge:
        """Reserve the call's most possible cost against the tenant's budgets, and note the
        call in the usage journal, before it is made (a simulated model's call is noted
        simulated and not reserved: see :meth:`Meter.begin`)."""
        max_output = request.max_tokens or spec.max_output_tokens
        return await self._meter.begin(
            usage_key(prompt.request_id, "complete", uuid.uuid4().hex[:12]),
            spec.name,
            input_tokens=tokens.approx_messages(request.messages),
            max_output_tokens=max_output,
            count_input=lambda: tokens.count_messages(request.messages),
            tenant=prompt.tenant,
            budget=Budgeted(
                tokens.most_messages(request.messages), max_output, deadline.remaining()
            ),
            simulated=spec.simulated,
        )

    async def _attempts(
        self,
        route: Route,
        prompt: Prompt,
        deadline: Deadline,
        attempt: Callable[[ModelSpec, ChatRequest, float], Awaitable[T]],
    ) -> tuple[T, ModelSpec, Charge, list[tuple[str, str]]]:
        """The one attempt loop, for unary calls and streams alike: the first model of
        ``route``, in order, that ``attempt`` (one call of it, given the seconds it may take)
        succeeds with. Returns what the attempt gave, the model, the call's charge, still
        open (the caller settles it and tells the breaker once the call is over: a unary call
        at once, a stream at its end), and the models that failed before it, with why.

        Each attempt is noted in the usage journal before it is made; one that fails is
        settled here (:meth:`Charge.failed`) and counts towards its provider's breaker when
        the provider is at fault. A transient failure (429, 5xx, a connection) is tried again
        on the same model after the provider's ``Retry-After`` or a jittered exponential
        backoff, up to ``max_attempts`` and never past the deadline, then the next model is
        tried; a model whose breaker is open is skipped at once. Any other failure ends the
        route. The error of a route that ends without an answer is the last model's, with
        each model's failure in order (:func:`with_failures`)."""
        last_err: QuorumError | None = None
        failures: list[tuple[str, str]] = []
        for spec in route.candidates:
            if not self._breakers.allow(spec.provider_name):
                last_err = self._breakers.refusal(spec.provider_name, spec.name)
                failures.append((spec.name, last_err.reason))
                continue
            tries = 0
            while True:
                tries += 1
                request = self._request(spec, prompt)
                charge = await self._begin(prompt, spec, request, deadline)
                try:
                    got = await attempt(spec, request, deadline.timeout())
                except BaseException as err:
                    charge.failed(err)
                    if not isinstance(err, QuorumError):
                        raise
                    self._note_failure(spec, err)
                    last_err = err
                    if not await self._should_retry(err, tries, deadline, spec):
                        break
                    continue
                return got, spec, charge, failures
            assert last_err is not None
            failures.append((spec.name, last_err.reason))
            if not retryable(last_err):
                raise with_failures(last_err, failures)
            if spec is not route.candidates[-1]:
                log.warning("model %s failed (%s); trying the next one", spec.name, last_err.reason)
        assert last_err is not None
        raise with_failures(last_err, failures)

    async def _call(self, spec: ModelSpec, request: ChatRequest, timeout_s: float) -> ChatResult:
        """One unary attempt."""
        return await self._chat.complete(self._backend(spec), request, timeout_s=timeout_s)

    async def _open(self, spec: ModelSpec, request: ChatRequest, timeout_s: float) -> _Stream:
        """One streaming attempt, over once the stream has sent its first delta (or ended
        without any): a failure before it is the attempt's, and the route may go on."""
        stream = _Stream(self._chat.stream(self._backend(spec), request, timeout_s=timeout_s))
        try:
            async for chunk in stream.chunks:
                stream.take(chunk)
                if stream.parts:
                    break
        except BaseException:
            await stream.chunks.aclose()
            raise
        return stream

    async def _streamed(
        self, route: Route, prompt: Prompt, deadline: Deadline, done: Completion
    ) -> AsyncGenerator[str, None]:
        """Yields the deltas of the first model whose stream starts; fills in ``done``. Once
        a delta is sent the stream is the answer: a failure after it is raised, never retried
        on another model. The call is settled in a ``finally``: a stream cut short (the
        client went away, the provider broke off) is billed for what was generated,
        estimated."""
        stream, spec, charge, failures = await self._attempts(route, prompt, deadline, self._open)
        done.route_reason = fell_back(done.route_reason, failures)
        err: BaseException | None = None
        try:
            async with contextlib.aclosing(stream.chunks):
                if stream.parts:
                    yield stream.parts[0]
                async for chunk in stream.chunks:
                    stream.take(chunk)
                    if chunk.delta:
                        yield chunk.delta
            self._settle(done, spec, charge, stream, stream.reported)
            done.finish_reason = stream.finish
            self._priced(done)
        except QuorumError as e:
            err = e
            self._note_failure(spec, e)
            raise
        except BaseException as e:
            err = e
            raise
        finally:
            if not charge.done:
                charge.failed(err, partial_text=stream.text)

    def _note_failure(self, spec: ModelSpec, err: QuorumError) -> None:
        """A provider that is down, slow or overloaded counts towards opening its breaker;
        a request it refused (4xx) does not."""
        if retryable(err) or isinstance(err, DeadlineExceeded):
            self._breakers.failed(spec.provider_name)

    async def _should_retry(
        self, err: QuorumError, attempt: int, deadline: Deadline, spec: ModelSpec
    ) -> bool:
        """Wait and return True when the same model deserves another attempt."""
        wait = self._retry.next_wait(err, attempt, deadline.remaining())
        if wait is None:
            return False
        log.info("%s: %s; attempt %d in %.2fs", spec.name, err.reason, attempt + 1, wait)
        await asyncio.sleep(wait)
        return True

    # -- helpers -----------------------------------------------------------------------------

    def _named_model(self, prompt: Prompt) -> str:
        """The model the request names, by name or by the brief's integer id (both: they must
        agree)."""
        if prompt.model_id is None:
            return prompt.model
        spec = self._registry.by_id(prompt.model_id)  # NotFound, field model_id
        if prompt.model and prompt.model != spec.name:
            raise InvalidArgument(
                f"model_id: {prompt.model_id} is {spec.name!r}, but model says {prompt.model!r}",
                reason="INVALID_FIELD",
                metadata={"field": "model_id"},
            )
        return spec.name

    def _mode(self, prompt: Prompt) -> Moderation:
        return self._moderation.effective(prompt.moderation, prompt.tenant)

    @staticmethod
    def _backend(spec: ModelSpec) -> ChatBackend:
        assert spec.generative  # routing only picks these
        return spec.backend

    @staticmethod
    def _request(spec: ModelSpec, prompt: Prompt) -> ChatRequest:
        max_tokens = min(prompt.max_tokens or spec.max_output_tokens, spec.max_output_tokens)
        return ChatRequest(
            messages=prompt.messages, max_tokens=max_tokens, temperature=prompt.temperature
        )
