"""The brief's Triton-native path on the real tritonserver: the routed_chat ensemble
(select_model, then chat_generate) answering from the provider simulator on loopback, alone
and as the router's backend (``routed-chat``): the real router and cost service in process,
billing each call as the model the ensemble chose."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from quorum import config
from quorum.backends.types import TokenUsage
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2
from quorum.localmodels.routedchat import OUTPUTS, SELECT_AUTO, ModelSelector
from quorum.pricing import bill
from quorum.registry import load_registry
from quorum.router.v1 import router_pb2
from quorum.simulator import LEAK_MARKER, Fault, ProviderSimulator
from quorum.tritonserver import TritonOptions, TritonServer, default_model_repository
from tests.integration.inproc import Stubs, free_port, reason, router_and_cost

pytestmark = pytest.mark.triton

KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY")
CODE_PROMPT = "Write a python function that reverses a list"


@pytest.fixture(scope="module")
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator() as s:
        yield s


@pytest.fixture(scope="module")
def server(sim: ProviderSimulator) -> Iterator[TritonServer]:
    options = TritonOptions(
        model_repository=default_model_repository(),
        models=("routed_chat",),  # its steps load with it
        # no key reaches three of the models: their provider is the simulator (simulated);
        # OpenAI's key is set and its endpoint is the simulator too, so gpt-4.1 is not
        env={
            "QUORUM_ROUTER__SIMULATOR_URL": sim.url,
            "QUORUM_PROVIDERS__OPENAI__BASE_URL": sim.url,
        }
        | dict.fromkeys(KEYS, "")
        | {"OPENAI_API_KEY": "sk-test-not-a-secret"},
    )
    with TritonServer(options) as srv:
        yield srv


@pytest.fixture(autouse=True)
def no_faults(sim: ProviderSimulator) -> Iterator[None]:
    yield
    sim.clear_faults()


async def ask(
    client: InferenceServerClient, text: str, select: int, parameters: dict[str, Any] | None = None
) -> dict[str, Any]:
    t = InferInput("TEXT", [1, 1], "BYTES")
    t.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    s = InferInput("MODEL_SELECT", [1, 1], "INT32")
    s.set_data_from_numpy(np.array([[select]], dtype=np.int32))
    result = await client.infer(
        "routed_chat", [t, s], outputs=[InferRequestedOutput(o) for o in OUTPUTS],
        client_timeout=60, parameters=parameters,
    )  # fmt: skip
    out: dict[str, Any] = {}
    for name in OUTPUTS:
        value = result.as_numpy(name)[0][0]
        out[name] = value.decode() if isinstance(value, bytes) else value.item()
    return out


# -- the ensemble alone -------------------------------------------------------------------------


async def test_auto_routes_a_code_prompt_to_deepseek_and_answers_from_the_simulator(
    client: InferenceServerClient, sim: ProviderSimulator
) -> None:
    before = sim.stats["completions"]
    out = await ask(client, CODE_PROMPT, SELECT_AUTO)
    assert out["MODEL"] == "deepseek-v3.2"
    assert str(out["ANSWER"]).startswith("[simulated deepseek-chat] ")
    assert int(out["PROMPT_TOKENS"]) > 0 and int(out["COMPLETION_TOKENS"]) > 0
    assert out["SIMULATED"] is True  # DEEPSEEK_API_KEY is not set where Triton runs
    assert "'python'" in out["ROUTE_REASON"] and "task 'code'" in out["ROUTE_REASON"]
    assert sim.stats["completions"] == before + 1
    # the provider was asked for DeepSeek's own model id
    assert sim.requests[-1].body["model"] == "deepseek-chat"


@pytest.mark.parametrize(
    ("select", "model", "simulated"),
    [
        (0, "gpt-4.1", False),  # its key is set: a real provider (that happens to be local)
        (1, "claude-sonnet-4.5", True),
        (2, "gemini-2.5-flash", True),
        (3, "deepseek-v3.2", True),
    ],
)
async def test_a_model_id_names_its_model(
    client: InferenceServerClient, select: int, model: str, simulated: bool
) -> None:
    out = await ask(client, "Write a python function", select)
    assert out["MODEL"] == model
    assert out["SIMULATED"] is simulated
    assert out["ROUTE_REASON"] == f"MODEL_SELECT {select} is {model}"


async def test_auto_routes_like_the_router(
    client: InferenceServerClient, sim: ProviderSimulator
) -> None:
    selector = ModelSelector.from_config(
        config.load(env={"QUORUM_ROUTER__SIMULATOR_URL": sim.url}), {}
    )
    for prompt in ("Give me a quick summary of Hamlet", "Compare TCP and UDP", "Plan a trip"):
        out = await ask(client, prompt, SELECT_AUTO)
        chosen = selector.select(prompt, SELECT_AUTO)
        assert (out["MODEL"], out["ROUTE_REASON"]) == (chosen.model, chosen.reason)
    assert {selector.select(p, SELECT_AUTO).model for p in ("quick one", "compare", "hi")} == {
        "gemini-2.5-flash", "claude-sonnet-4.5", "gpt-4.1",
    }  # fmt: skip


@pytest.mark.parametrize("select", [7, -5])
async def test_unknown_selector_is_a_clear_per_request_error(
    client: InferenceServerClient, sim: ProviderSimulator, select: int
) -> None:
    before = sim.stats["completions"]
    with pytest.raises(InferenceServerException) as info:
        await ask(client, "hello", select)
    assert "MODEL_SELECT" in str(info.value) or "model_id" in str(info.value)
    assert str(select) in str(info.value)
    assert sim.stats["completions"] == before  # no provider was called
    out = await ask(client, "hello again", 0)  # the server and the models are still fine
    assert out["MODEL"] == "gpt-4.1"


async def test_request_parameters_reach_the_generating_step(
    client: InferenceServerClient, sim: ProviderSimulator
) -> None:
    out = await ask(client, "Plan a trip", 0, {"max_tokens": 3, "temperature": 0.25})
    assert out["MODEL"] == "gpt-4.1"
    body = sim.requests[-1].body
    assert (body["max_tokens"], body["temperature"]) == (3, 0.25)
    with pytest.raises(InferenceServerException) as info:
        await ask(client, "Plan a trip", 0, {"max_tokens": -1})
    assert str(info.value.status()) == "StatusCode.INVALID_ARGUMENT"
    assert str(info.value.message()).endswith("[InvalidArgument:INVALID_FIELD]")


async def test_the_callers_deadline_bounds_the_generating_step(
    client: InferenceServerClient, sim: ProviderSimulator
) -> None:
    """timeout_ms is the caller's deadline: the step stops waiting for a provider that hangs
    (its own timeout_s is 30 s) and says why, in the error's tag."""
    sim.add_fault(Fault(kind="hang", seconds=20, model="gpt-4.1", times=1))
    start = time.monotonic()
    with pytest.raises(InferenceServerException) as info:
        await ask(client, "Plan a trip", 0, {"timeout_ms": 800})
    assert time.monotonic() - start < 5
    assert str(info.value.status()) == "StatusCode.UNAVAILABLE"
    assert str(info.value.message()).endswith("[DeadlineExceeded:PROVIDER_TIMEOUT]")


# -- as the router's backend ----------------------------------------------------------------------

ACME = (("quorum-tenant", "acme"),)


@pytest.fixture
async def mesh(server: TritonServer, sim: ProviderSimulator, tmp_path) -> AsyncIterator[Stubs]:
    """The router (Triton at ``server``, no provider key: its own models are simulated) and
    the cost service, in process."""
    data = config.load(env={})
    data["router"] |= {
        "address": "127.0.0.1:0",
        "voter_address": f"127.0.0.1:{free_port()}",  # no moderation: never called
        "moderation": "none",
        "triton_address": server.grpc_address,
        "simulator_url": sim.url,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.02,
    }
    data["cost"]["address"] = f"127.0.0.1:{free_port()}"
    data["router"]["cost_address"] = data["cost"]["address"]
    data["usage"]["record_wait_s"] = 2.0  # so that usage_recorded can be checked
    async with router_and_cost(data, {"QUORUM_DATA_DIR": str(tmp_path)}) as stubs:
        yield stubs


def routed(prompt: str, **kw: Any) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(prompt=prompt, model="routed-chat", **kw)


def priced(model: str, usage: router_pb2.CompleteResponse) -> int:
    """What ``usage`` costs at ``model``'s embedded prices, in micros."""
    registry = load_registry(config.defaults())
    tokens = TokenUsage(usage.usage.input_tokens, usage.usage.output_tokens)
    at = time.time_ns() // 1000
    return bill(model, registry.get(model).pricing, tokens, at, registry.rates).cost.micros


async def summary(cost, n: int, timeout_s: float = 10.0) -> cost_pb2.GetUsageSummaryResponse:
    deadline = time.monotonic() + timeout_s
    while True:
        s = await cost.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
        if s.requests >= n or time.monotonic() > deadline:
            return s
        await asyncio.sleep(0.05)


async def reserved_none(cost, tenant: str = "acme", timeout_s: float = 10.0) -> Any:
    """The tenant's budget status once nothing is reserved any more."""
    deadline = time.monotonic() + timeout_s
    while True:
        req = cost_pb2.GetBudgetStatusRequest(tenant=tenant)
        (s,) = (await cost.GetBudgetStatus(req, timeout=5)).budgets
        if s.reserved.micros == 0 or time.monotonic() > deadline:
            return s
        await asyncio.sleep(0.05)


async def test_the_router_bills_the_model_routed_chat_chose(mesh: Stubs, sim: ProviderSimulator):
    budget = cost_pb2.Budget(tenant="acme", limit=common_pb2.Money(micros=10**9, currency="USD"))
    await mesh.cost.SetBudget(cost_pb2.SetBudgetRequest(budget=budget), timeout=5)
    before = dict(sim.stats)
    resp = await mesh.router.Complete(routed(CODE_PROMPT), metadata=ACME, timeout=30)
    # one provider call, by the model the ensemble chose, and its counts are the usage
    assert sim.stats["completions"] == before["completions"] + 1
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (
        sim.stats["prompt_tokens"] - before["prompt_tokens"],
        sim.stats["completion_tokens"] - before["completion_tokens"],
    )
    assert resp.model == "deepseek-v3.2" and resp.provider == "triton" and resp.simulated
    assert resp.text.startswith("[simulated deepseek-chat] ")
    assert resp.route_reason.startswith("requested by the client; routed-chat chose deepseek-v3.2")
    assert "'python'" in resp.route_reason
    # priced at DeepSeek's prices (routed-chat's own are what the call was reserved at)
    assert resp.cost.micros == priced("deepseek-v3.2", resp) < priced("routed-chat", resp)
    assert resp.usage_recorded and not resp.usage_estimated

    # a prompt routed to gpt-4.1, whose key Triton has: not simulated
    plan = await mesh.router.Complete(routed("Plan a trip to Rome"), metadata=ACME, timeout=30)
    assert (plan.model, plan.simulated) == ("gpt-4.1", False)

    s = await summary(mesh.cost, 2)
    assert s.requests == 2 and s.estimated_requests == 0
    rows = {m.model: m for m in s.models}
    assert set(rows) == {"deepseek-v3.2", "gpt-4.1"}  # never routed-chat
    assert rows["deepseek-v3.2"].usage.output_tokens == resp.usage.output_tokens
    assert rows["deepseek-v3.2"].cost.micros == resp.cost.micros
    assert rows["gpt-4.1"].cost.micros == plan.cost.micros
    # the budget counts what the calls cost; the reservations made for routed-chat are gone
    status = await reserved_none(mesh.cost)
    assert (status.spent.micros, status.reserved.micros) == (resp.cost.micros + plan.cost.micros, 0)


async def test_a_stream_through_routed_chat_is_one_delta(mesh: Stubs, sim: ProviderSimulator):
    stream = mesh.router.CompleteStream(
        router_pb2.CompleteStreamRequest(request=routed(CODE_PROMPT)), timeout=30
    )
    events = [e async for e in stream]
    deltas = [e.delta for e in events if e.WhichOneof("event") == "delta"]
    (done,) = [e.summary for e in events if e.WhichOneof("event") == "summary"]
    assert len(deltas) == 1 and deltas[0].startswith("[simulated deepseek-chat] ")
    assert (done.model, done.simulated, done.provider) == ("deepseek-v3.2", True, "triton")
    assert done.usage.output_tokens > 0 and done.cost.micros == priced("deepseek-v3.2", done)
    s = await summary(mesh.cost, 1)
    assert [(m.model, m.requests) for m in s.models] == [("deepseek-v3.2", 1)]


async def test_a_request_routed_chat_cannot_take_is_refused_before_any_call(
    mesh: Stubs, sim: ProviderSimulator
):
    before = sim.stats["completions"]
    request = router_pb2.CompleteRequest(
        model="routed-chat",
        messages=[
            router_pb2.Message(role="system", content="Be brief."),
            router_pb2.Message(role="user", content=CODE_PROMPT),
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await mesh.router.Complete(request, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(e.value) == "ROUTED_ONE_MESSAGE"
    assert sim.stats["completions"] == before


async def test_provider_failures_are_retried_then_unavailable_and_bill_nothing(
    mesh: Stubs, sim: ProviderSimulator
):
    """A provider that answers 500 inside the ensemble: chat_generate tries it 3 times, the
    router tries routed-chat 3 times ([router] max_attempts), then UNAVAILABLE with the
    provider's reason; no provider text reaches the client, and nothing is billed."""
    sim.add_fault(Fault(kind="status", status=500, model="deepseek-chat"))
    asked = len([r for r in sim.requests if r.model == "deepseek-chat"])
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await mesh.router.Complete(routed(CODE_PROMPT), timeout=30)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(e.value) == "PROVIDER_ERROR"
    assert LEAK_MARKER not in (e.value.details() or "")
    assert len([r for r in sim.requests if r.model == "deepseek-chat"]) - asked == 3 * 3
    await asyncio.sleep(0.3)
    s = await mesh.cost.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
    assert s.requests == 0


async def test_a_deadline_reaches_the_provider_call_and_the_call_is_billed_as_an_estimate(
    mesh: Stubs, sim: ProviderSimulator
):
    """The router's deadline travels into the ensemble (timeout_ms): a hanging provider ends
    in DEADLINE_EXCEEDED when the client's time is up, not after chat_generate's 30 s. The
    provider had the request, so the call is billed, estimated, at routed-chat's prices (the
    router never learnt which model it was)."""
    sim.add_fault(Fault(kind="hang", seconds=20, model="deepseek-chat", times=1))
    start = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await mesh.router.Complete(routed(CODE_PROMPT), timeout=2.0)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 4
    # the ensemble gave up first and said why (its tag), before the router stopped waiting
    assert reason(e.value) == "PROVIDER_TIMEOUT"
    assert "failed (PROVIDER_TIMEOUT)" in (e.value.details() or "")
    s = await summary(mesh.cost, 1)
    assert [(m.model, m.requests, m.estimated_requests) for m in s.models] == [
        ("routed-chat", 1, 1)
    ]
