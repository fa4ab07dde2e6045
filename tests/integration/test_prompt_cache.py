"""Prompt-cache hits, from the provider's answer to the ledger: the OpenAI adapter reads them
(unary and streamed, OpenAI's and DeepSeek's fields), the router bills them, the cost service
prices them at the cached-input price. Real simulator, real router and cost servers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from quorum.backends.openai import OpenAIChat, _Call, _parse_completion
from quorum.backends.transport import ProviderClient
from quorum.backends.types import ChatMessage, ChatRequest, TokenUsage
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.errors import Unavailable
from quorum.registry import OpenAIBackend, Provider
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.simulator import ProviderSimulator, count_tokens
from tests.integration.inproc import free_port, mesh_config, router_and_cost

SYSTEM = "You answer questions about gardening, briefly and kindly. " * 80  # 1,160 tokens


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator() as s:
        yield s


def request(question: str) -> ChatRequest:
    return ChatRequest(messages=(ChatMessage("system", SYSTEM), ChatMessage("user", question)))


async def test_the_adapter_reads_cached_tokens_unary_and_streamed(sim: ProviderSimulator) -> None:
    backend = OpenAIBackend(Provider("sim", sim.url), "gpt-4.1")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with aclosing(ProviderClient(max_connections=10)) as client:
        chat = OpenAIChat(client, {}, tracer_provider=provider)
        first = await chat.complete(backend, request("When do I plant tulips?"), timeout_s=5)
        assert first.usage.cached_input_tokens == 0
        second = await chat.complete(backend, request("And daffodils?"), timeout_s=5)
        assert second.usage.cached_input_tokens == count_tokens(SYSTEM)
        assert second.usage.input_tokens == count_tokens(SYSTEM) + count_tokens("And daffodils?")
        chunks = [c async for c in chat.stream(backend, request("Roses?"), timeout_s=5)]
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.cached_input_tokens == count_tokens(SYSTEM)
    provider.shutdown()
    cache_reads = [
        (s.attributes or {}).get("gen_ai.usage.cache_read.input_tokens")
        for s in exporter.get_finished_spans()
    ]
    assert cache_reads == [None, count_tokens(SYSTEM), count_tokens(SYSTEM)]


def body(usage: dict[str, Any]) -> bytes:
    return json.dumps(
        {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage}
    ).encode()


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # OpenAI's field
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 64},
            },
            TokenUsage(100, 5, 64),
        ),
        # DeepSeek's
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 5,
                "prompt_cache_hit_tokens": 96,
                "prompt_cache_miss_tokens": 4,
            },
            TokenUsage(100, 5, 96),
        ),
        # nothing said, or null: none cached
        ({"prompt_tokens": 100, "completion_tokens": 5}, TokenUsage(100, 5, 0)),
        (
            {"prompt_tokens": 100, "completion_tokens": 5, "prompt_tokens_details": None},
            TokenUsage(100, 5, 0),
        ),
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": None},
            },
            TokenUsage(100, 5, 0),
        ),
        # never more than the prompt
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 64},
            },
            TokenUsage(10, 5, 10),
        ),
    ],
)
def test_cached_tokens_in_each_providers_shape(usage: dict[str, Any], expected: TokenUsage) -> None:
    call = _call()
    assert _parse_completion(call, body(usage)).usage == expected


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": -1}},
        {"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": "64"}},
        {"prompt_tokens": 100, "prompt_tokens_details": "64"},
    ],
)
def test_a_cached_count_that_is_no_count_is_a_bad_response(usage: dict[str, Any]) -> None:
    with pytest.raises(Unavailable) as info:
        _parse_completion(_call(), body(usage))
    assert info.value.reason == "PROVIDER_BAD_RESPONSE"


def _call() -> _Call:
    return _Call(OpenAIBackend(Provider("p", "http://127.0.0.1:9/v1"), "m"))


# --- through the router into the ledger ------------------------------------------------------


@pytest.fixture
async def mesh(
    sim: ProviderSimulator, tmp_path: Any
) -> AsyncIterator[tuple[router_pb2_grpc.RouterServiceStub, cost_pb2_grpc.CostServiceStub]]:
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    data = mesh_config(sim.url, cost_port=free_port(), voter_port=free_port(), moderation="none")
    data["models"]["sim-chat"]["cached_input_per_mtok"] = "0.10"  # input 1.00, output 2.00
    async with router_and_cost(data, env) as s:
        yield s.router, s.cost


async def test_cache_hits_are_billed_at_the_cached_price(
    mesh: tuple[router_pb2_grpc.RouterServiceStub, cost_pb2_grpc.CostServiceStub],
) -> None:
    router, cost = mesh
    prompt = SYSTEM + " Which tomatoes grow best in pots?"
    first = await router.Complete(router_pb2.CompleteRequest(prompt=prompt), timeout=10)
    again = await router.Complete(router_pb2.CompleteRequest(prompt=prompt), timeout=10)
    assert first.usage.cached_input_tokens == 0
    n, out = again.usage.input_tokens, again.usage.output_tokens
    assert again.usage.cached_input_tokens == n == count_tokens(prompt)
    # the router's answer and the ledger agree: n × 0.10 + out × 2.00 micro-USD, half-up
    assert again.cost.micros == (n * 10 + out * 200 + 50) // 100
    assert first.cost.micros == n + first.usage.output_tokens * 2
    deadline = time.monotonic() + 10
    while True:
        s = await cost.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
        if s.requests == 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert s.requests == 2
    assert s.usage.cached_input_tokens == n
    assert [t.micros for t in s.totals] == [first.cost.micros + again.cost.micros]
