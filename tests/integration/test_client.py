"""quorum.client.MultiModelClient against a real in-process router and cost service, the
embedded registry's models served by the provider simulator (no API key in the env)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from quorum import config
from quorum.client import MultiModelClient
from quorum.errors import NotFound
from quorum.simulator import ProviderSimulator
from tests.integration.inproc import cost_and_router, free_port, mesh_config


@pytest.fixture
async def client(tmp_path) -> AsyncIterator[tuple[MultiModelClient, ProviderSimulator]]:
    with ProviderSimulator(token_delay_s=0.01) as sim:
        data = mesh_config(
            sim.url, cost_port=free_port(), voter_port=free_port(), moderation="none"
        )
        data["models"] = config.load(env={})["models"]  # the brief's four models, ids 0-3
        data["registry"] = {"default_model": "gpt-4.1"}
        data["router"]["simulator_url"] = sim.url
        env = {"QUORUM_DATA_DIR": str(tmp_path)}
        async with (
            cost_and_router(data, env) as (_, router),
            MultiModelClient(f"127.0.0.1:{router[1]}", timeout_s=10) as c,
        ):
            yield c, sim


@pytest.mark.parametrize(
    ("model_id", "model"),
    [(0, "gpt-4.1"), (1, "claude-sonnet-4.5"), (2, "gemini-2.5-flash"), (3, "deepseek-v3.2")],
)
async def test_infer_by_model_id(client, model_id: int, model: str) -> None:
    c, sim = client
    result = await c.infer("What is a quorum?", model_id)
    assert (result.model_id, result.model) == (model_id, model)
    assert result.text and result.simulated
    assert result.input_tokens > 0 and result.output_tokens > 0
    assert 0 < result.latency_ms < 10_000
    assert sim.stats["completions"] == 1


async def test_no_model_id_routes_from_the_prompt(client) -> None:
    c, _ = client
    result = await c.infer("Write a python function that reverses a list")
    assert result.model == "deepseek-v3.2" and result.model_id is None


async def test_stream_gives_the_same_answer_and_its_ttft(client) -> None:
    c, _ = client
    unary = await c.infer("Write a haiku about the sea", 1)
    streamed = await c.infer_stream("Write a haiku about the sea", 1)
    assert streamed.model == "claude-sonnet-4.5"
    assert streamed.text == unary.text
    assert streamed.output_tokens == unary.output_tokens
    # the simulator waits 10 ms between pieces: the first comes well before the last
    assert 0 < streamed.ttft_ms < streamed.latency_ms - 10


async def test_unknown_model_id_is_not_found(client) -> None:
    c, sim = client
    with pytest.raises(NotFound) as info:
        await c.infer("hello", 42)
    assert "model_id" in info.value.message
    assert sim.stats["completions"] == 0
