"""The brief's Triton-native path on the real tritonserver: the routed_chat ensemble
(select_model, then chat_generate) answering from the provider simulator on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from quorum import config
from quorum.localmodels.routedchat import OUTPUTS, SELECT_AUTO, ModelSelector
from quorum.simulator import Fault, ProviderSimulator
from quorum.tritonserver import TritonOptions, TritonServer, default_model_repository

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
