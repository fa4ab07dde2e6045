"""The router's attempt loop (retries, Retry-After, deadlines, fallbacks, breakers) and the
billing of each attempt, for unary calls and streams, with an in-memory chat client behind
the Completer's :class:`ChatClient` seam and a real usage meter (journal in a temporary
directory; no cost service: the records wait in the journal)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

import grpc
import pytest

from quorum import tokens
from quorum.backends.types import ChatChunk, ChatMessage, ChatRequest, ChatResult, TokenUsage
from quorum.cost.v1 import cost_pb2_grpc
from quorum.deadline import Deadline
from quorum.errors import (
    InvalidArgument,
    QuorumError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from quorum.registry import OpenAIBackend, Registry, load_registry
from quorum.retry import RetryPolicy
from quorum.usage import Meter, MeterSettings, UsageRecord, replay
from services.router.breaker import Breakers
from services.router.completion import (
    Completer,
    Completion,
    Moderation,
    ModerationPolicy,
    Prompt,
)
from services.router.replay import Replays

# -- what the providers do --------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A whole answer: a ChatResult, or streamed as one chunk per word and a last chunk."""

    text: str
    usage: TokenUsage = field(default_factory=lambda: TokenUsage(9, 4))


#: a stream step that waits for ever (until the call is cancelled)
HANG = "hang"

Step = Answer | QuorumError | list[ChatChunk | QuorumError | str]


def e503() -> Unavailable:
    return Unavailable("HTTP 503", reason="PROVIDER_ERROR", metadata={"http_status": "503"})


def e429(retry_after: float | None = None) -> ResourceExhausted:
    return ResourceExhausted(
        "HTTP 429",
        reason="PROVIDER_RATE_LIMITED",
        metadata={"http_status": "429"},
        retry_after=retry_after,
    )


def unreachable() -> Unavailable:
    return Unavailable("connect failed", reason="PROVIDER_UNREACHABLE")


def interrupted() -> Unavailable:
    """What the adapter raises when a 200 stream breaks off."""
    return Unavailable(
        "the stream broke off", reason="STREAM_INTERRUPTED", metadata={"http_status": "200"}
    )


@dataclass(frozen=True)
class Call:
    model: str
    timeout_s: float
    at: float


class ScriptedChat:
    """A chat client whose models follow scripts: each call of a model takes its next step.
    An :class:`Answer` or an error serves both kinds of call; a list is a stream's chunks,
    errors and :data:`HANG` in order."""

    def __init__(self, **scripts: list[Step]) -> None:
        self._scripts = {model: list(steps) for model, steps in scripts.items()}
        self.calls: list[Call] = []

    def _next(self, backend: OpenAIBackend, timeout_s: float) -> Step:
        model = backend.provider_model
        self.calls.append(Call(model, timeout_s, time.monotonic()))
        steps = self._scripts.get(model)
        assert steps, f"{model} was called more often than its script says"
        return steps.pop(0)

    @property
    def models(self) -> list[str]:
        return [c.model for c in self.calls]

    async def complete(
        self, backend: OpenAIBackend, request: ChatRequest, *, timeout_s: float
    ) -> ChatResult:
        step = self._next(backend, timeout_s)
        if isinstance(step, QuorumError):
            raise step
        assert isinstance(step, Answer), "a stream's script in a unary call"
        return ChatResult(step.text, step.usage, finish_reason="stop")

    def stream(
        self, backend: OpenAIBackend, request: ChatRequest, *, timeout_s: float
    ) -> AsyncGenerator[ChatChunk, None]:
        return self._stream(self._next(backend, timeout_s))

    async def _stream(self, step: Step) -> AsyncGenerator[ChatChunk, None]:
        if isinstance(step, QuorumError):
            raise step
        if isinstance(step, Answer):
            words = step.text.split(" ")
            step = [
                *(ChatChunk(delta=w if i == 0 else " " + w) for i, w in enumerate(words)),
                ChatChunk(usage=step.usage, finish_reason="stop"),
            ]
        for item in step:
            if isinstance(item, QuorumError):
                raise item
            if item == HANG:
                await asyncio.Event().wait()
            assert isinstance(item, ChatChunk)
            yield item


# -- the router around them -------------------------------------------------------------------


def registry() -> Registry:
    """Models a, b, c, one provider each, for task "chat" in that (price) order."""
    return load_registry(
        {
            "providers": {p: {"base_url": "http://127.0.0.1:9/v1"} for p in ("pa", "pb", "pc")},
            "models": {
                name: {
                    "provider": f"p{name}",
                    "tasks": ["chat"],
                    "input_per_mtok": price,
                    "output_per_mtok": price,
                }
                for name, price in (("a", "1"), ("b", "2"), ("c", "3"))
            },
            "registry": {"default_model": "a"},
        }
    )


@dataclass
class Usage:
    meter: Meter
    settled: list[UsageRecord]


@pytest.fixture
async def usage(tmp_path) -> AsyncGenerator[Usage, None]:
    settled: list[UsageRecord] = []
    async with grpc.aio.insecure_channel("127.0.0.1:9") as ch:  # no cost service there
        meter = Meter(
            cost_pb2_grpc.CostServiceStub(ch),
            tmp_path / "router.journal",
            source="router",
            settings=MeterSettings(reserve=False),
            on_settled=settled.append,
        )
        await meter.start()
        try:
            yield Usage(meter, settled)
        finally:
            await meter.stop(drain_s=0)


def completer(
    chat: ScriptedChat, usage: Usage, *, attempts: int = 3, breakers: Breakers | None = None
) -> Completer:
    return Completer(
        registry(),
        chat,
        None,
        usage.meter,
        retry=RetryPolicy(max_attempts=attempts, backoff_base_s=0.01, backoff_max_s=0.02),
        moderation=ModerationPolicy(default=Moderation.NONE),
        replays=Replays[Completion](ttl_s=60, max_entries=100),
        record_wait_s=0.0,
        breakers=breakers,
    )


def prompt(model: str = "") -> Prompt:
    """A request for task "chat" (route a, b, c), or for ``model`` alone."""
    return Prompt("r1", (ChatMessage("user", "hello"),), model=model, task="" if model else "chat")


async def answer(c: Completer, p: Prompt, deadline: Deadline, streaming: bool) -> Completion:
    """The Completion of a unary call, or of a stream with its deltas joined as its text."""
    if not streaming:
        return await c.complete(p, deadline)
    *deltas, done = [event async for event in c.stream(p, deadline)]
    assert isinstance(done, Completion) and not done.text
    assert all(isinstance(d, str) for d in deltas)
    done.text = "".join(str(d) for d in deltas)
    return done


def billed(usage: Usage) -> list[tuple[str, int, int, bool]]:
    return [(r.model, r.input_tokens, r.output_tokens, r.estimated) for r in usage.settled]


both = pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])


# -- retries ----------------------------------------------------------------------------------


@both
async def test_a_transient_failure_is_retried_on_the_same_model_and_billed_once(usage, streaming):
    chat = ScriptedChat(a=[e503(), unreachable(), Answer("fine thanks")], b=[Answer("no")])
    done = await answer(completer(chat, usage), prompt(), Deadline.after(5), streaming)
    assert chat.models == ["a", "a", "a"]
    assert (done.spec.name, done.text, done.finish_reason) == ("a", "fine thanks", "stop")
    assert done.usage == TokenUsage(9, 4) and not done.usage_estimated
    assert billed(usage) == [("a", 9, 4, False)]  # the failed attempts bill nothing


@both
async def test_retry_after_is_waited_for_before_the_next_attempt(usage, streaming):
    chat = ScriptedChat(a=[e429(retry_after=0.3), Answer("ok")])
    done = await answer(completer(chat, usage), prompt(), Deadline.after(5), streaming)
    assert done.text == "ok"
    first, second = chat.calls
    # the backoff alone would wait at most 0.01 s
    assert 0.3 <= second.at - first.at < 1.0


@both
async def test_no_retry_waits_past_the_deadline(usage, streaming):
    chat = ScriptedChat(a=[e429(retry_after=0.5), e429(retry_after=0.5), Answer("late")])
    start = time.monotonic()
    deadline = Deadline.after(1.0)
    with pytest.raises(ResourceExhausted) as e:
        await answer(completer(chat, usage, attempts=10), prompt("a"), deadline, streaming)
    # one retry fits in the second, the next would end past the deadline: given up at once
    assert chat.models == ["a", "a"]
    assert time.monotonic() - start < 0.9
    assert e.value.reason == "PROVIDER_RATE_LIMITED"
    first, second = chat.calls
    # each attempt may take what is left of the request's time, no more
    assert first.timeout_s <= 1.0 and second.timeout_s <= 1.0 - 0.5
    assert not usage.settled


# -- fallbacks --------------------------------------------------------------------------------


@both
async def test_a_model_that_keeps_failing_falls_back_to_the_next(usage, streaming):
    chat = ScriptedChat(a=[e503(), e503(), e429()], b=[Answer("from b")])
    done = await answer(completer(chat, usage, attempts=3), prompt(), Deadline.after(5), streaming)
    assert chat.models == ["a", "a", "a", "b"]
    assert (done.spec.name, done.text) == ("b", "from b")
    assert billed(usage) == [("b", 9, 4, False)]
    assert done.route_reason.endswith("; answered after a failed (PROVIDER_RATE_LIMITED)")


@both
@pytest.mark.parametrize(
    "refusal",
    [
        lambda: Unauthenticated(
            "HTTP 401", reason="PROVIDER_UNAUTHENTICATED", metadata={"http_status": "401"}
        ),
        lambda: InvalidArgument(
            "HTTP 400", reason="PROVIDER_REJECTED_REQUEST", metadata={"http_status": "400"}
        ),
    ],
    ids=["401", "400"],
)
async def test_a_refused_request_is_neither_retried_nor_sent_to_another_model(
    usage, streaming, refusal: Callable[[], QuorumError]
):
    err = refusal()
    chat = ScriptedChat(a=[err, Answer("again")], b=[Answer("from b")])
    with pytest.raises(type(err)) as e:
        await answer(completer(chat, usage), prompt(), Deadline.after(5), streaming)
    assert e.value is err
    assert chat.models == ["a"]
    assert "failures" not in e.value.metadata
    assert not usage.settled


@both
async def test_when_every_model_fails_the_error_names_each_failure_in_order(usage, streaming):
    chat = ScriptedChat(a=[e503()], b=[e429()], c=[unreachable()])
    with pytest.raises(Unavailable) as e:
        await answer(completer(chat, usage, attempts=1), prompt(), Deadline.after(5), streaming)
    assert chat.models == ["a", "b", "c"]
    assert e.value.reason == "PROVIDER_UNREACHABLE"  # the last model's
    assert e.value.metadata["failures"] == (
        "a: PROVIDER_ERROR; b: PROVIDER_RATE_LIMITED; c: PROVIDER_UNREACHABLE"
    )
    assert not usage.settled


# -- breakers ---------------------------------------------------------------------------------


@both
async def test_an_open_breaker_sends_the_route_on_at_once(usage, streaming):
    now = [0.0]
    breakers = Breakers(failures=2, cooldown_s=10, clock=lambda: now[0])
    chat = ScriptedChat(a=[e503(), e503(), Answer("a is back")], b=[Answer("b")] * 3)
    c = completer(chat, usage, attempts=1, breakers=breakers)
    for _ in range(3):
        assert (await answer(c, prompt(), Deadline.after(5), streaming)).spec.name == "b"
    assert chat.models == ["a", "b", "a", "b", "b"]  # a's breaker opened after two failures
    with pytest.raises(Unavailable) as e:
        await answer(c, prompt("a"), Deadline.after(5), streaming)
    assert e.value.reason == "CIRCUIT_OPEN"
    assert len(chat.calls) == 5
    now[0] = 10.0  # after the cooldown one call probes a, and its success closes the breaker
    assert (await answer(c, prompt(), Deadline.after(5), streaming)).spec.name == "a"
    assert not breakers.is_open("pa")


# -- streams ----------------------------------------------------------------------------------


async def test_a_stream_that_fails_before_its_first_delta_falls_back(usage):
    chat = ScriptedChat(a=[[ChatChunk(), interrupted()]], b=[Answer("from b")])
    c = completer(chat, usage, attempts=1)
    events = [e async for e in c.stream(prompt(), Deadline.after(5))]
    assert events[:-1] == ["from", " b"]
    done = events[-1]
    assert isinstance(done, Completion) and done.spec.name == "b"
    assert chat.models == ["a", "b"]
    # a broke off after its 200: the provider had the prompt, so its input is billed
    a_input = tokens.count_messages(prompt().messages)
    assert billed(usage) == [("a", a_input, 0, True), ("b", 9, 4, False)]


async def test_a_stream_that_fails_after_its_first_delta_is_not_sent_elsewhere(usage):
    breakers = Breakers(failures=1, cooldown_s=10, clock=time.monotonic)
    chat = ScriptedChat(
        a=[[ChatChunk(delta="Once upon"), ChatChunk(delta=" a time"), interrupted()]],
        b=[Answer("from b")],
    )
    c = completer(chat, usage, breakers=breakers)
    deltas: list[str] = []
    with pytest.raises(Unavailable) as e:
        async for event in c.stream(prompt(), Deadline.after(5)):
            assert isinstance(event, str)
            deltas.append(event)
    assert deltas == ["Once upon", " a time"]
    assert e.value.reason == "STREAM_INTERRUPTED" and "failures" not in e.value.metadata
    assert chat.models == ["a"]
    a_input = tokens.count_messages(prompt().messages)
    assert billed(usage) == [("a", a_input, tokens.count("Once upon a time"), True)]
    assert breakers.is_open("pa")  # the provider broke off: it counts against it


async def test_a_stream_the_client_cancels_is_billed_for_what_was_generated(usage, tmp_path):
    chat = ScriptedChat(a=[[ChatChunk(delta="Hello there,"), ChatChunk(delta=" friend"), HANG]])
    c = completer(chat, usage)
    deltas: list[str] = []
    two = asyncio.Event()

    async def client() -> None:
        async for event in c.stream(prompt(), Deadline.after(5)):
            assert isinstance(event, str)
            deltas.append(event)
            if len(deltas) == 2:
                two.set()

    task = asyncio.create_task(client())
    await asyncio.wait_for(two.wait(), 5)
    assert not usage.settled
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    a_input = tokens.count_messages(prompt().messages)
    expected = ("a", a_input, tokens.count("Hello there, friend"), True)
    assert billed(usage) == [expected]
    await usage.meter.sync()
    _, pending = replay(tmp_path / "router.journal")
    (rec,) = pending.values()
    assert (rec.model, rec.input_tokens, rec.output_tokens, rec.estimated) == expected


async def test_a_stream_closed_by_its_reader_is_billed_at_once(usage):
    """What the servicer does when the client goes away: close the stream of events."""
    chat = ScriptedChat(a=[Answer("one two three four")])
    events = completer(chat, usage).stream(prompt(), Deadline.after(5))
    assert await anext(events) == "one"
    assert await anext(events) == " two"
    await events.aclose()
    a_input = tokens.count_messages(prompt().messages)
    assert billed(usage) == [("a", a_input, tokens.count("one two"), True)]
