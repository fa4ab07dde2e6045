"""The brief's Triton-native path on the real tritonserver: the routed_chat ensemble
(select_model, then chat_generate) answering from the provider simulator on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from quorum import config
from quorum.localmodels.routedchat import SELECT_AUTO, ModelSelector
from quorum.simulator import ProviderSimulator
from quorum.tritonserver import TritonOptions, TritonServer, default_model_repository

pytestmark = pytest.mark.triton

OUTPUTS = ("ANSWER", "MODEL", "PROMPT_TOKENS", "COMPLETION_TOKENS")
KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY")


@pytest.fixture(scope="module")
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator() as s:
        yield s


@pytest.fixture(scope="module")
def server(sim: ProviderSimulator) -> Iterator[TritonServer]:
    options = TritonOptions(
        model_repository=default_model_repository(),
        models=("routed_chat",),  # its steps load with it
        # no key reaches the models: every provider is answered by the simulator
        env={"QUORUM_ROUTER__SIMULATOR_URL": sim.url} | dict.fromkeys(KEYS, ""),
    )
    with TritonServer(options) as srv:
        yield srv


async def ask(client: InferenceServerClient, text: str, select: int) -> dict[str, object]:
    t = InferInput("TEXT", [1, 1], "BYTES")
    t.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    s = InferInput("MODEL_SELECT", [1, 1], "INT32")
    s.set_data_from_numpy(np.array([[select]], dtype=np.int32))
    result = await client.infer(
        "routed_chat", [t, s], outputs=[InferRequestedOutput(o) for o in OUTPUTS],
        client_timeout=60,
    )  # fmt: skip
    out: dict[str, object] = {}
    for name in OUTPUTS:
        value = result.as_numpy(name)[0][0]
        out[name] = value.decode() if isinstance(value, bytes) else int(value)
    return out


async def test_auto_routes_a_code_prompt_to_deepseek_and_answers_from_the_simulator(
    client: InferenceServerClient, sim: ProviderSimulator
) -> None:
    before = sim.stats["completions"]
    out = await ask(client, "Write a python function that reverses a list", SELECT_AUTO)
    assert out["MODEL"] == "deepseek-v3.2"
    assert str(out["ANSWER"]).startswith("[simulated deepseek-chat] ")
    assert int(out["PROMPT_TOKENS"]) > 0 and int(out["COMPLETION_TOKENS"]) > 0  # type: ignore[call-overload]
    assert sim.stats["completions"] == before + 1
    # the provider was asked for DeepSeek's own model id
    assert sim.requests[-1].body["model"] == "deepseek-chat"


@pytest.mark.parametrize(
    ("select", "model"),
    [(0, "gpt-4.1"), (1, "claude-sonnet-4.5"), (2, "gemini-2.5-flash"), (3, "deepseek-v3.2")],
)
async def test_a_model_id_names_its_model(
    client: InferenceServerClient, select: int, model: str
) -> None:
    out = await ask(client, "Write a python function", select)
    assert out["MODEL"] == model


async def test_auto_routes_like_the_router(
    client: InferenceServerClient, sim: ProviderSimulator
) -> None:
    selector = ModelSelector.from_config(
        config.load(env={"QUORUM_ROUTER__SIMULATOR_URL": sim.url}), {}
    )
    for prompt in ("Give me a quick summary of Hamlet", "Compare TCP and UDP", "Plan a trip"):
        out = await ask(client, prompt, SELECT_AUTO)
        assert out["MODEL"] == selector.select(prompt, SELECT_AUTO)
    assert {selector.select(p, SELECT_AUTO) for p in ("quick one", "compare", "hi")} == {
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
