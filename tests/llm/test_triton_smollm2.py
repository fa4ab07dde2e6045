"""The real tritonserver loads the decoupled ``smollm2`` model and streams through
:class:`quorum.backends.tritonchat.TritonChat` (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tritonclient.grpc.aio import InferenceServerClient

from quorum.backends.tritonchat import TritonChat
from quorum.backends.types import ChatMessage, ChatRequest
from quorum.errors import DeadlineExceeded, InvalidArgument, Unavailable
from quorum.registry import TritonBackend
from quorum.tritonserver import TritonOptions, TritonServer, default_model_repository

pytestmark = pytest.mark.triton

MODEL = TritonBackend("smollm2", outputs="chat")
STORY = (ChatMessage("user", "Write a long story about a dragon who learns to bake bread."),)


@pytest.fixture(scope="module")
def server() -> Iterator[TritonServer]:
    with TritonServer(
        TritonOptions(model_repository=default_model_repository(), models=("smollm2",))
    ) as s:
        yield s


@pytest.fixture
async def client(server) -> AsyncIterator[InferenceServerClient]:
    c = InferenceServerClient(url=server.grpc_address)
    try:
        yield c
    finally:
        await c.close()


def test_the_default_launch_loads_the_model_with_its_extra(tmp_path):
    s = TritonServer(TritonOptions(model_repository=default_model_repository()))
    assert "smollm2" in s._model_names() and s.left_out == {}


async def test_it_streams_deltas_then_the_models_own_counts(client, generator):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    chat = TritonChat(client, tracer_provider=provider)
    request = ChatRequest(messages=STORY, max_tokens=16, temperature=0.0)
    chunks = [c async for c in chat.stream(MODEL, request, timeout_s=60)]
    *deltas, last = chunks
    assert len(deltas) >= 5 and all(c.delta and c.usage is None for c in deltas)
    assert last.delta == "" and last.finish_reason == "length"
    prompt = generator.prompt_tokens([{"role": "user", "content": STORY[0].content}])
    assert last.usage is not None
    assert (last.usage.input_tokens, last.usage.output_tokens) == (len(prompt), 16)
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat smollm2"
    assert span.attributes["gen_ai.provider.name"] == "triton"
    assert span.attributes["gen_ai.usage.input_tokens"] == len(prompt)
    assert span.attributes["gen_ai.usage.output_tokens"] == 16
    # unary: the same stream collected
    result = await chat.complete(MODEL, request, timeout_s=60)
    assert result.text == "".join(c.delta for c in deltas)
    assert result.usage == last.usage and result.finish_reason == "length"


async def test_one_bad_request_fails_alone(client):
    chat = TritonChat(client)
    long = ChatRequest(messages=(ChatMessage("user", "word " * 5000),), max_tokens=4)
    ok = ChatRequest(messages=STORY, max_tokens=4)
    bad, good = await asyncio.gather(
        chat.complete(MODEL, long, timeout_s=60),
        chat.complete(MODEL, ok, timeout_s=60),
        return_exceptions=True,
    )
    assert isinstance(bad, InvalidArgument) and bad.reason == "PROMPT_TOO_LONG"
    assert "word" not in bad.message  # our text, not the model's
    assert not isinstance(good, BaseException) and good.usage.output_tokens == 4


async def test_deadline_cancels_the_generation_and_the_model_serves_on(client):
    chat = TritonChat(client)
    with pytest.raises(DeadlineExceeded) as e:
        await chat.complete(MODEL, ChatRequest(messages=STORY, max_tokens=2000), timeout_s=0.3)
    assert e.value.reason == "TRITON_DEADLINE"
    # a stream closed early cancels its call too
    stream = chat.stream(MODEL, ChatRequest(messages=STORY, max_tokens=2000), timeout_s=60)
    async with contextlib.aclosing(stream):
        first = await anext(stream)
        assert first.delta
    # the cancelled generations stopped: the next answer comes at once
    result = await chat.complete(MODEL, ChatRequest(messages=STORY, max_tokens=4), timeout_s=10)
    assert result.usage.output_tokens == 4


async def test_unknown_model_and_no_server_are_unavailable(client, server):
    chat = TritonChat(client)
    with pytest.raises(Unavailable) as e:
        await chat.complete(TritonBackend("nope", outputs="chat"), ChatRequest(STORY), timeout_s=5)
    assert e.value.reason == "MODEL_NOT_READY"
    dead = InferenceServerClient(url="127.0.0.1:9")
    try:
        with pytest.raises(Unavailable) as e:
            await TritonChat(dead).complete(MODEL, ChatRequest(STORY), timeout_s=5)
        assert e.value.reason == "TRITON_UNAVAILABLE"
    finally:
        await dead.close()
