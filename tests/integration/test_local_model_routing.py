"""The local chat model (``smollm2-135m``, backend triton) through the real router without
Triton or its extra: it is unavailable, saying why, and the brief's models keep their routes.
(With the local-llm extra, tests/llm runs the model itself.)"""

from __future__ import annotations

import grpc
import pytest

from quorum import config
from quorum.router.v1 import router_pb2
from tests.integration.inproc import free_port, reason, router_and_cost

PROMPT = "Name three colours of the rainbow."


def data_for(sim_url: str) -> dict:
    data = config.load(env={})
    data["router"] |= {
        "address": "127.0.0.1:0",
        "voter_address": f"127.0.0.1:{free_port()}",
        "moderation": "none",
        "simulator_url": sim_url,
    }
    data["cost"]["address"] = f"127.0.0.1:{free_port()}"
    data["router"]["cost_address"] = data["cost"]["address"]
    return data


async def test_without_triton_the_local_model_is_unavailable(tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    async with router_and_cost(data_for(""), env) as stubs:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stubs.router.Complete(
                router_pb2.CompleteRequest(prompt=PROMPT, model="smollm2-135m"), timeout=10
            )
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(e.value) == "MODEL_NOT_CONFIGURED"
        assert "triton_address" in e.value.details()


@pytest.mark.triton
async def test_a_triton_without_the_model_leaves_the_simulated_routes(sim, tmp_path):
    """Triton answers but has no smollm2 loaded (the extra is absent): the no-key rule stays
    off, requests that name nothing are routed by keyword to the simulated models."""
    from quorum.tritonserver import TritonOptions, TritonServer, default_model_repository

    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    data = data_for(sim.url)
    with TritonServer(
        TritonOptions(model_repository=default_model_repository(), models=("profanity_check",))
    ) as triton:
        data["router"]["triton_address"] = triton.grpc_address
        async with router_and_cost(data, env) as stubs:
            resp = await stubs.router.Complete(
                router_pb2.CompleteRequest(prompt="Write a python function", max_tokens=8),
                timeout=10,
            )
            assert resp.simulated and resp.model == "deepseek-v3.2"
            assert resp.route_reason.startswith("automatic")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stubs.router.Complete(
                    router_pb2.CompleteRequest(prompt=PROMPT, model="smollm2-135m"), timeout=10
                )
            assert reason(e.value) == "MODEL_NOT_CONFIGURED"
            assert "not loaded" in e.value.details()


async def test_triton_chat_errors_without_a_server_are_ours():
    """TritonChat's errors where no Triton answers (its streaming path runs in tests/llm)."""
    from tritonclient.grpc.aio import InferenceServerClient

    from quorum.backends.tritonchat import TritonChat
    from quorum.backends.types import ChatMessage, ChatRequest
    from quorum.errors import DeadlineExceeded, Unavailable
    from quorum.registry import TritonBackend

    backend = TritonBackend("smollm2", outputs="chat")
    request = ChatRequest((ChatMessage("user", "hi"),), max_tokens=4)
    client = InferenceServerClient(url=f"127.0.0.1:{free_port()}")
    try:
        chat = TritonChat(client)
        with pytest.raises(Unavailable) as e:
            await chat.complete(backend, request, timeout_s=5)
        assert e.value.reason == "TRITON_UNAVAILABLE"
        assert e.value.metadata["model"] == "smollm2"
        with pytest.raises(DeadlineExceeded) as d:
            await chat.complete(backend, request, timeout_s=0)
        assert d.value.reason == "TRITON_DEADLINE"
    finally:
        await client.close()
