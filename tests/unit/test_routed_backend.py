"""The routed_chat ensemble as a router backend, without Triton: the adapter's mapping of
Triton's answers and errors (the contract itself: tests/unit/test_routedchat.py), the one
dispatch by backend kind, and the router billing a call as the model the ensemble chose (a
real usage meter, an in-memory cost service)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from quorum import config, errors
from quorum.backends.chat import Chats
from quorum.backends.tritonrouted import (
    MAX_MARGIN_S,
    parse_answer,
    prompt_text,
    routed_error,
    timeout_ms,
)
from quorum.backends.types import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResult,
    Routed,
    TokenUsage,
)
from quorum.cost.v1 import cost_pb2
from quorum.deadline import Deadline
from quorum.registry import ConfigError, OpenAIBackend, TritonBackend, load_registry
from quorum.retry import RetryPolicy
from quorum.simulator import LEAK_MARKER
from quorum.usage import Charge, Meter, MeterSettings, UsageRecord
from services.router.completion import (
    Completer,
    Completion,
    Moderation,
    ModerationPolicy,
    Prompt,
)
from services.router.replay import Replays
from services.router.servicer import to_response

# -- the adapter's pure parts ------------------------------------------------------------------


def test_the_ensemble_gets_the_callers_time_less_a_margin() -> None:
    assert timeout_ms(1.0) == 900  # a tenth
    assert timeout_ms(30.0) == int((30.0 - MAX_MARGIN_S) * 1000)  # at most MAX_MARGIN_S
    assert timeout_ms(0.0001) == 1


def test_the_ensemble_takes_one_user_message() -> None:
    assert prompt_text(ChatRequest((ChatMessage("user", "hi"),)), "routed_chat") == "hi"
    for messages in (
        (ChatMessage("system", "be brief"), ChatMessage("user", "hi")),
        (ChatMessage("user", "hi"), ChatMessage("assistant", "hello"), ChatMessage("user", "?")),
    ):
        with pytest.raises(errors.InvalidArgument) as e:
            prompt_text(ChatRequest(messages), "routed_chat")
        assert e.value.reason == "ROUTED_ONE_MESSAGE"


def outputs(**over: Any) -> dict[str, Any]:
    good: dict[str, Any] = {
        "ANSWER": np.array([[b"an answer"]], dtype=np.object_),
        "MODEL": np.array([[b"deepseek-v3.2"]], dtype=np.object_),
        "PROMPT_TOKENS": np.array([[11]], dtype=np.int32),
        "COMPLETION_TOKENS": np.array([[7]], dtype=np.int32),
        "SIMULATED": np.array([[True]], dtype=np.bool_),
        "ROUTE_REASON": np.array([[b"automatic: code"]], dtype=np.object_),
    }
    return good | over


def test_an_answer_names_the_model_that_wrote_it() -> None:
    got = parse_answer(outputs().get, "routed_chat")
    assert got == ChatResult(
        text="an answer",
        usage=TokenUsage(11, 7),
        provider_model="deepseek-v3.2",
        routed=Routed("deepseek-v3.2", "automatic: code", simulated=True),
    )


def test_an_answer_with_no_counts_is_one_without_usage() -> None:
    zero = np.array([[0]], dtype=np.int32)
    got = parse_answer(outputs(PROMPT_TOKENS=zero, COMPLETION_TOKENS=zero).get, "routed_chat")
    assert not got.usage_reported  # the router counts the tokens and marks them estimated
    assert parse_answer(outputs().get, "routed_chat").usage_reported


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MODEL", None),
        ("MODEL", np.array([[b""]], dtype=np.object_)),
        ("SIMULATED", np.array([[1]], dtype=np.int32)),
        ("PROMPT_TOKENS", np.array([[-1]], dtype=np.int32)),
        ("COMPLETION_TOKENS", np.array([[1, 2]], dtype=np.int32)),
        ("ANSWER", np.array([[3]], dtype=np.int32)),
    ],
)
def test_a_malformed_answer_is_internal(name: str, value: Any) -> None:
    with pytest.raises(errors.Internal) as e:
        parse_answer(outputs(**{name: value}).get, "routed_chat")
    assert e.value.reason == "TRITON_BAD_RESPONSE" and e.value.metadata["output"] == name


@pytest.mark.parametrize(
    ("status", "text", "cls", "reason"),
    [
        # the ensemble's own errors: the class and reason its tag names
        ("StatusCode.UNAVAILABLE", "[Unavailable:PROVIDER_ERROR]", errors.Unavailable,
         "PROVIDER_ERROR"),
        ("StatusCode.UNAVAILABLE", "[ResourceExhausted:PROVIDER_RATE_LIMITED]",
         errors.ResourceExhausted, "PROVIDER_RATE_LIMITED"),
        ("StatusCode.UNAVAILABLE", "[DeadlineExceeded:PROVIDER_TIMEOUT]",
         errors.DeadlineExceeded, "PROVIDER_TIMEOUT"),
        ("StatusCode.INVALID_ARGUMENT", "[FailedPrecondition:MODEL_NOT_CONFIGURED]",
         errors.FailedPrecondition, "MODEL_NOT_CONFIGURED"),
        ("StatusCode.INTERNAL", "[Unauthenticated:PROVIDER_UNAUTHENTICATED]",
         errors.Unauthenticated, "PROVIDER_UNAUTHENTICATED"),
        # Triton's: the caller's time ran out (a provider may have been asked: billed)
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", errors.DeadlineExceeded,
         "PROVIDER_TIMEOUT"),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", errors.Unavailable,
         "TRITON_UNAVAILABLE"),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'routed_chat'", errors.Unavailable,
         "MODEL_NOT_READY"),
        ("StatusCode.INTERNAL", "something broke", errors.Internal, "TRITON_ERROR"),
    ],
)  # fmt: skip
def test_triton_errors_map_to_ours_without_their_text(
    status: str, text: str, cls: type[errors.QuorumError], reason: str
) -> None:
    raw = f"in ensemble 'routed_chat', HTTP 500 from upstream ({LEAK_MARKER}) {text}"
    err = routed_error(InferenceServerException(raw, status=status), "routed_chat", 5.0)
    assert type(err) is cls and err.reason == reason
    assert err.metadata["model"] == "routed_chat"
    assert LEAK_MARKER not in err.message and "upstream" not in err.message


# -- the registry and the one dispatch -----------------------------------------------------------


def test_routed_chat_is_a_generative_triton_model_in_the_defaults() -> None:
    spec = load_registry(config.defaults()).get("routed-chat")
    assert spec.backend == TritonBackend("routed_chat", outputs="routed", model="routed-chat")
    assert spec.generative and spec.provider_name == "triton" and not spec.simulated
    assert spec.pricing.prices  # its reservations and estimates need prices


def test_a_routing_ensemble_cannot_judge() -> None:
    bad = {
        "models": {
            "r": {
                "triton_model": "routed_chat",
                "triton_outputs": "routed",
                "moderation": {"weight": 1.0, "categories": ["hate"], "threshold": 0.5},
            }
        }
    }
    with pytest.raises(ConfigError, match="cannot judge"):
        load_registry(bad)


class Recorder:
    """A chat client that says which client got the call."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def complete(self, backend: Any, request: ChatRequest, *, timeout_s: float) -> Any:
        return self.name

    def stream(self, backend: Any, request: ChatRequest, *, timeout_s: float) -> Any:
        return self.name


async def test_one_dispatch_sends_each_kind_to_its_client() -> None:
    openai, chat, routed = Recorder("openai"), Recorder("chat"), Recorder("routed")
    chats = Chats(openai, chat, routed)  # type: ignore[arg-type]
    request = ChatRequest((ChatMessage("user", "hi"),))
    sim = load_registry(config.defaults()).resolve_keys({}, simulator_url="http://x/v1")
    backend = sim.get("gpt-4.1").backend
    assert isinstance(backend, OpenAIBackend)
    for b, name in (
        (backend, "openai"),
        (TritonBackend("smollm2", outputs="chat"), "chat"),
        (TritonBackend("routed_chat", outputs="routed"), "routed"),
    ):
        assert await chats.complete(b, request, timeout_s=1) == name
        assert chats.stream(b, request, timeout_s=1) == name
    with pytest.raises(errors.FailedPrecondition) as e:
        await Chats(openai, chat).complete(  # type: ignore[arg-type]
            TritonBackend("routed_chat", outputs="routed"), request, timeout_s=1
        )
    assert e.value.reason == "TRITON_NOT_CONFIGURED"


# -- the router billing the chosen model ----------------------------------------------------------


class FakeCost:
    """The cost service's calls the meter makes: every call reserved, every record taken."""

    def __init__(self) -> None:
        self.reserved: list[cost_pb2.ReserveRequest] = []
        self.released: list[str] = []
        self.records: list[cost_pb2.RecordUsageRequest] = []

    async def Reserve(self, request: cost_pb2.ReserveRequest, **_: Any) -> Any:
        self.reserved.append(request)
        return cost_pb2.ReserveResponse(reservation_id=f"rsv_{len(self.reserved)}")

    async def Release(self, request: cost_pb2.ReleaseRequest, **_: Any) -> Any:
        self.released.append(request.reservation_id)
        return cost_pb2.ReleaseResponse()

    async def RecordUsageBatch(self, request: cost_pb2.RecordUsageBatchRequest, **_: Any) -> Any:
        self.records.extend(request.records)
        ok = cost_pb2.RecordUsageResult(recorded=cost_pb2.RecordUsageResponse())
        return cost_pb2.RecordUsageBatchResponse(results=[ok] * len(request.records))


class Ensemble:
    """routed_chat in memory: it chose deepseek-v3.2 and answered; or fails with ``error``."""

    def __init__(self, error: errors.QuorumError | None = None) -> None:
        self.error = error

    async def complete(self, backend: Any, request: ChatRequest, *, timeout_s: float) -> Any:
        assert isinstance(backend, TritonBackend) and backend.outputs == "routed"
        if self.error is not None:
            raise self.error
        return ChatResult(
            "the answer",
            TokenUsage(100, 50),
            provider_model="deepseek-v3.2",
            routed=Routed("deepseek-v3.2", "automatic: code", simulated=True),
        )

    def stream(self, backend: Any, request: ChatRequest, *, timeout_s: float) -> Any:
        return self._stream(backend, request, timeout_s)

    async def _stream(
        self, backend: Any, request: ChatRequest, timeout_s: float
    ) -> AsyncGenerator[ChatChunk, None]:
        result = await self.complete(backend, request, timeout_s=timeout_s)
        yield ChatChunk(delta=result.text)
        yield ChatChunk(usage=result.usage, routed=result.routed)


@pytest.fixture
async def meter(tmp_path: Any) -> AsyncIterator[tuple[Meter, FakeCost]]:
    cost = FakeCost()
    m = Meter(cost, tmp_path / "router.journal", source="router", settings=MeterSettings())  # type: ignore[arg-type]
    await m.start()
    try:
        yield m, cost
    finally:
        await m.stop()


def completer(chat: Ensemble, meter: Meter) -> Completer:
    registry = load_registry(config.defaults()).resolve_keys({}, simulator_url="http://x/v1")
    return Completer(
        registry,
        chat,
        None,
        meter,
        retry=RetryPolicy(max_attempts=1),
        moderation=ModerationPolicy(default=Moderation.NONE),
        replays=Replays[Completion](ttl_s=60, max_entries=10),
        record_wait_s=1.0,
    )


PROMPT = Prompt("r1", (ChatMessage("user", "Write a python function"),), model="routed-chat")


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_the_call_is_billed_once_as_the_chosen_model(
    meter: tuple[Meter, FakeCost], streaming: bool
) -> None:
    m, cost = meter
    c = completer(Ensemble(), m)
    if streaming:
        events = [e async for e in c.stream(PROMPT, Deadline.after(5))]
        assert events[:-1] == ["the answer"]  # the whole answer, one delta
        done = events[-1]
        assert isinstance(done, Completion)
    else:
        done = await c.complete(PROMPT, Deadline.after(5))
    resp = to_response(done)
    assert (resp.model, resp.provider, resp.simulated) == ("deepseek-v3.2", "triton", True)
    assert resp.route_reason == (
        "requested by the client; routed-chat chose deepseek-v3.2 (automatic: code)"
    )
    # 100 in at $0.14, 50 out at $0.42 per million: DeepSeek's prices, not routed-chat's
    assert (resp.cost.micros, resp.cost.currency) == (35, "USD")
    assert resp.usage_recorded
    # reserved as routed-chat (the most it may cost), recorded as deepseek-v3.2 without
    # that reservation, which is given back
    (reserve,) = cost.reserved
    (record,) = cost.records
    assert reserve.model == "routed-chat"
    assert (record.model, record.usage.input_tokens, record.usage.output_tokens) == (
        "deepseek-v3.2", 100, 50,
    )  # fmt: skip
    assert record.reservation_id == "" and not record.estimated
    await m.stop()  # waits for the background release
    assert cost.released == ["rsv_1"]


async def test_a_call_that_ran_out_of_time_is_estimated_as_the_ensemble(
    meter: tuple[Meter, FakeCost],
) -> None:
    """No answer names the model: the call is billed as routed-chat (its prices are the
    dearest model's), estimated, committing its own reservation."""
    m, cost = meter
    timeout = errors.DeadlineExceeded("late", reason="PROVIDER_TIMEOUT")
    with pytest.raises(errors.DeadlineExceeded):
        await completer(Ensemble(timeout), m).complete(PROMPT, Deadline.after(5))
    await m.stop()
    (record,) = cost.records
    assert (record.model, record.estimated, record.reservation_id) == ("routed-chat", True, "rsv_1")
    assert cost.released == []


def test_a_charge_settled_as_its_own_model_keeps_its_reservation() -> None:
    """settle(model=...) with the model the call began for changes nothing."""
    intent = UsageRecord("k", "gpt-4.1", 1, 2, "router", 0, reservation_id="rsv_9")
    released: list[str] = []
    settled: list[UsageRecord] = []

    class M:
        def _release(self, rid: str) -> None:
            released.append(rid)

        def _settled(self, rec: UsageRecord) -> None:
            settled.append(rec)

    Charge(M(), intent).settle(3, 4, model="gpt-4.1")  # type: ignore[arg-type]
    assert (settled[0].model, settled[0].reservation_id, released) == ("gpt-4.1", "rsv_9", [])
