"""The OpenAI adapter against a real provider simulator on loopback (no patched client)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from quorum import telemetry
from quorum.backends.openai import OpenAIChat, parse_retry_after
from quorum.backends.transport import ProviderClient
from quorum.backends.types import ChatChunk, ChatMessage, ChatRequest, ChatResult, TokenUsage
from quorum.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuorumError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from quorum.registry import OpenAIBackend, Provider
from quorum.simulator import LEAK_MARKER, Fault, ProviderSimulator, count_tokens

KEY_ENV = "QUORUM_TEST_PROVIDER_KEY"
FAKE_KEY = "sk-test-FAKEKEY-0123456789abcdef"
MODEL = "gpt-4.1"
PROMPT = "Explain how a bicycle gear system works to a ten year old"
REQUEST = ChatRequest(messages=(ChatMessage("user", PROMPT),))


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator(api_key=FAKE_KEY) as s:
        yield s


@pytest.fixture
async def client() -> AsyncIterator[ProviderClient]:
    # the client the services send with
    async with contextlib.aclosing(ProviderClient(max_connections=100)) as c:
        yield c


@pytest.fixture
def adapter(client: ProviderClient) -> OpenAIChat:
    return OpenAIChat(client, {KEY_ENV: FAKE_KEY})


def backend_for(url: str, key_env: str | None = KEY_ENV, model: str = MODEL) -> OpenAIBackend:
    return OpenAIBackend(provider=Provider("simprov", url, key_env), provider_model=model)


@pytest.fixture
def backend(sim: ProviderSimulator) -> OpenAIBackend:
    return backend_for(sim.url)


async def collect(
    adapter: OpenAIChat,
    backend: OpenAIBackend,
    timeout_s: float = 5.0,
    request: ChatRequest = REQUEST,
) -> list[ChatChunk]:
    return [c async for c in adapter.stream(backend, request, timeout_s=timeout_s)]


def assert_clean(err: QuorumError) -> None:
    """Neither the provider's body nor the key leaks into the error in any form."""
    texts = [
        str(err),
        repr(err),
        err.message,
        json.dumps(err.metadata),
        "".join(traceback.format_exception(err)),
    ]
    for text in texts:
        assert LEAK_MARKER not in text
        assert FAKE_KEY not in text
        assert PROMPT not in text


def assert_meta(err: QuorumError, http_status: int | None) -> None:
    assert err.metadata["provider"] == "simprov"
    assert err.metadata["model"] == MODEL
    if http_status is None:
        assert "http_status" not in err.metadata
    else:
        assert err.metadata["http_status"] == str(http_status)
        assert f"HTTP {http_status}" in err.message
    assert "simprov" in err.message and MODEL in err.message


# -- success --------------------------------------------------------------------------------


async def test_complete_returns_text_and_usage(
    adapter: OpenAIChat, backend: OpenAIBackend, sim: ProviderSimulator
) -> None:
    result = await adapter.complete(backend, REQUEST, timeout_s=5)
    assert result.text.startswith(f"[simulated {MODEL}] ")
    assert result.finish_reason == "stop"
    assert result.provider_model == MODEL
    assert result.usage == TokenUsage(count_tokens(PROMPT), count_tokens(result.text))
    assert result.usage_reported is True
    (rec,) = sim.requests
    assert rec.has_authorization is True  # and the simulator accepted the key
    assert rec.body["model"] == MODEL
    assert rec.body["stream"] is False
    assert rec.body["messages"] == [{"role": "user", "content": PROMPT}]


async def test_request_options_are_sent(
    adapter: OpenAIChat, backend: OpenAIBackend, sim: ProviderSimulator
) -> None:
    request = ChatRequest(messages=REQUEST.messages, max_tokens=3, temperature=0.2)
    result = await adapter.complete(backend, request, timeout_s=5)
    assert result.finish_reason == "length"
    body = sim.requests[0].body
    assert (body["max_tokens"], body["temperature"]) == (3, 0.2)


async def test_stream_joins_to_unary_text(adapter: OpenAIChat, backend: OpenAIBackend) -> None:
    unary = await adapter.complete(backend, REQUEST, timeout_s=5)
    chunks = await collect(adapter, backend)
    assert len(chunks) > 2
    assert "".join(c.delta for c in chunks) == unary.text
    *body, last = chunks
    assert all(c.usage is None and c.finish_reason is None for c in body)
    assert last.delta == ""
    assert last.usage == unary.usage
    assert last.usage_reported is True
    assert last.finish_reason == "stop"
    assert last.extra == {"provider_model": MODEL}


async def test_stream_asks_for_usage(
    adapter: OpenAIChat, backend: OpenAIBackend, sim: ProviderSimulator
) -> None:
    await collect(adapter, backend)
    body = sim.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_missing_usage_is_flagged_not_estimated(
    adapter: OpenAIChat, backend: OpenAIBackend, sim: ProviderSimulator
) -> None:
    sim.add_fault(Fault("no_usage", times=2))
    result = await adapter.complete(backend, REQUEST, timeout_s=5)
    assert result.text
    assert (result.usage, result.usage_reported) == (TokenUsage(0, 0), False)
    last = (await collect(adapter, backend))[-1]
    assert (last.usage, last.usage_reported, last.finish_reason) == (
        TokenUsage(0, 0),
        False,
        "stop",
    )


async def test_judge_mode_round_trip(adapter: OpenAIChat, backend: OpenAIBackend) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "moderation_verdict", "schema": {}}}
    request = ChatRequest(
        messages=(ChatMessage("user", "you are a worthless idiot"),), response_format=fmt
    )
    verdict = json.loads((await adapter.complete(backend, request, timeout_s=5)).text)
    assert verdict["is_safe"] is False
    assert verdict["categories"]["harassment"] >= 0.5


async def test_no_key_env_sends_no_authorization(client: ProviderClient) -> None:
    with ProviderSimulator() as open_sim:
        adapter = OpenAIChat(client, {KEY_ENV: FAKE_KEY})
        await adapter.complete(backend_for(open_sim.url, key_env=None), REQUEST, timeout_s=5)
        assert open_sim.requests[0].has_authorization is False


# -- errors ---------------------------------------------------------------------------------

STATUS_CASES = [
    (400, InvalidArgument, "PROVIDER_REJECTED_REQUEST"),
    (422, InvalidArgument, "PROVIDER_REJECTED_REQUEST"),
    (401, Unauthenticated, "PROVIDER_UNAUTHENTICATED"),
    (403, PermissionDenied, "PROVIDER_PERMISSION_DENIED"),
    (404, NotFound, "PROVIDER_MODEL_NOT_FOUND"),
    (500, Unavailable, "PROVIDER_ERROR"),
    (503, Unavailable, "PROVIDER_ERROR"),
]


@pytest.mark.parametrize(("status", "cls", "reason"), STATUS_CASES)
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_http_status_mapping(
    adapter: OpenAIChat,
    backend: OpenAIBackend,
    sim: ProviderSimulator,
    status: int,
    cls: type[QuorumError],
    reason: str,
    streaming: bool,
) -> None:
    sim.add_fault(Fault("status", status=status))
    with pytest.raises(cls) as info:
        if streaming:
            await collect(adapter, backend)
        else:
            await adapter.complete(backend, REQUEST, timeout_s=5)
    err = info.value
    assert type(err) is cls
    assert err.reason == reason
    assert_meta(err, status)
    assert_clean(err)


async def test_real_auth_failure_is_unauthenticated(
    client: ProviderClient, backend: OpenAIBackend
) -> None:
    wrong_key = "sk-test-WRONGKEY-999"
    adapter = OpenAIChat(client, {KEY_ENV: wrong_key})
    with pytest.raises(Unauthenticated) as info:
        await adapter.complete(backend, REQUEST, timeout_s=5)
    assert_clean(info.value)
    assert wrong_key not in str(info.value) and wrong_key not in repr(info.value.metadata)


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_rate_limit_carries_retry_after(
    adapter: OpenAIChat, backend: OpenAIBackend, sim: ProviderSimulator, streaming: bool
) -> None:
    sim.add_fault(Fault("rate_limit", retry_after=7, times=1))
    with pytest.raises(ResourceExhausted) as info:
        if streaming:
            await collect(adapter, backend)
        else:
            await adapter.complete(backend, REQUEST, timeout_s=5)
    err = info.value
    assert err.reason == "PROVIDER_RATE_LIMITED"
    assert err.retry_after == 7.0
    assert_meta(err, 429)
    assert_clean(err)
    # the fault was for one request only: the caller's retry succeeds
    assert (await adapter.complete(backend, REQUEST, timeout_s=5)).text


async def test_rate_limit_http_date_and_absent(
    adapter: OpenAIChat, backend: OpenAIBackend, sim: ProviderSimulator
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    sim.add_fault(Fault("rate_limit", retry_after=format_datetime(when, usegmt=True), times=1))
    sim.add_fault(Fault("status", status=429, times=1))  # no Retry-After header at all
    with pytest.raises(ResourceExhausted) as first:
        await adapter.complete(backend, REQUEST, timeout_s=5)
    assert first.value.retry_after is not None
    assert 100 <= first.value.retry_after <= 121
    with pytest.raises(ResourceExhausted) as second:
        await adapter.complete(backend, REQUEST, timeout_s=5)
    assert second.value.retry_after is None


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_hang_is_bounded_by_timeout(
    adapter: OpenAIChat, backend: OpenAIBackend, sim: ProviderSimulator, streaming: bool
) -> None:
    sim.add_fault(Fault("hang", seconds=30))
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        if streaming:
            await collect(adapter, backend, timeout_s=0.5)
        else:
            await adapter.complete(backend, REQUEST, timeout_s=0.5)
    elapsed = time.monotonic() - t0
    assert 0.45 <= elapsed < 1.0
    assert info.value.reason == "PROVIDER_TIMEOUT"
    assert_meta(info.value, None)
    assert_clean(info.value)


async def test_stream_deadline_is_overall_not_per_read(
    client: ProviderClient,
) -> None:
    # every token arrives within 50 ms, but the whole answer takes ~2.5 s
    with ProviderSimulator(token_delay_s=0.05) as slow:
        adapter = OpenAIChat(client, {})
        got: list[str] = []
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            async for chunk in adapter.stream(backend_for(slow.url, None), REQUEST, timeout_s=0.6):
                got.append(chunk.delta)
        elapsed = time.monotonic() - t0
        assert 0.55 <= elapsed < 1.1
        assert got  # it did stream before running out of time
        assert info.value.reason == "PROVIDER_TIMEOUT"


async def test_no_time_left_fails_at_once(adapter: OpenAIChat, backend: OpenAIBackend) -> None:
    with pytest.raises(DeadlineExceeded):
        await adapter.complete(backend, REQUEST, timeout_s=0)


async def test_cut_stream_is_interrupted(
    adapter: OpenAIChat, backend: OpenAIBackend, sim: ProviderSimulator
) -> None:
    sim.add_fault(Fault("cut_stream", after_chunks=4, times=1))
    got: list[ChatChunk] = []
    with pytest.raises(Unavailable) as info:
        async for chunk in adapter.stream(backend, REQUEST, timeout_s=5):
            got.append(chunk)
    assert info.value.reason == "STREAM_INTERRUPTED"
    assert_meta(info.value, 200)
    assert_clean(info.value)
    assert len(got) == 3  # role chunk + 3 content chunks sent; no usage chunk ever came
    assert all(c.usage is None for c in got)


async def test_cut_unary_body_is_unavailable(
    adapter: OpenAIChat, backend: OpenAIBackend, sim: ProviderSimulator
) -> None:
    sim.add_fault(Fault("cut_stream", times=1))
    with pytest.raises(Unavailable) as info:
        await adapter.complete(backend, REQUEST, timeout_s=5)
    assert info.value.reason == "PROVIDER_CONNECTION_ERROR"
    assert_clean(info.value)


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_bad_body_is_bad_response(
    adapter: OpenAIChat, backend: OpenAIBackend, sim: ProviderSimulator, streaming: bool
) -> None:
    sim.add_fault(Fault("bad_body"))
    with pytest.raises(Unavailable) as info:
        if streaming:
            await collect(adapter, backend)
        else:
            await adapter.complete(backend, REQUEST, timeout_s=5)
    assert info.value.reason == "PROVIDER_BAD_RESPONSE"
    assert_meta(info.value, 200)
    assert_clean(info.value)


async def test_malformed_json_content_is_returned_as_text(
    adapter: OpenAIChat, backend: OpenAIBackend, sim: ProviderSimulator
) -> None:
    # the HTTP body is valid; judging the content is the caller's job
    sim.add_fault(Fault("malformed_json", times=1))
    result = await adapter.complete(backend, REQUEST, timeout_s=5)
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.text)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_connection_refused_is_unreachable(adapter: OpenAIChat, streaming: bool) -> None:
    backend = backend_for(f"http://127.0.0.1:{closed_port()}/v1")
    with pytest.raises(Unavailable) as info:
        if streaming:
            await collect(adapter, backend)
        else:
            await adapter.complete(backend, REQUEST, timeout_s=2)
    assert info.value.reason == "PROVIDER_UNREACHABLE"
    assert_meta(info.value, None)
    assert_clean(info.value)


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_missing_key_env_is_failed_precondition(
    client: ProviderClient, backend: OpenAIBackend, sim: ProviderSimulator, streaming: bool
) -> None:
    adapter = OpenAIChat(client, {"SOME_OTHER_VAR": FAKE_KEY})
    with pytest.raises(FailedPrecondition) as info:
        if streaming:
            await collect(adapter, backend)
        else:
            await adapter.complete(backend, REQUEST, timeout_s=5)
    err = info.value
    assert err.reason == "API_KEY_MISSING"
    assert KEY_ENV in err.message
    assert err.metadata["env_var"] == KEY_ENV
    assert_clean(err)
    assert sim.requests == []  # nothing was sent


async def test_unusable_key_value_is_not_echoed(
    client: ProviderClient, backend: OpenAIBackend
) -> None:
    bad = "sk-test-BAD KEY\nInjected: 1"
    adapter = OpenAIChat(client, {KEY_ENV: bad})
    with pytest.raises(FailedPrecondition) as info:
        await adapter.complete(backend, REQUEST, timeout_s=5)
    assert info.value.reason == "API_KEY_INVALID"
    assert "BAD KEY" not in str(info.value) and "Injected" not in str(info.value)


# -- tracing --------------------------------------------------------------------------------


@pytest.fixture
def tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A local SDK provider; the global one is never touched."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def only_chat_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    return span


def assert_no_secrets_in(span: ReadableSpan) -> None:
    dumped = span.to_json()
    assert FAKE_KEY not in dumped
    assert PROMPT not in dumped
    assert LEAK_MARKER not in dumped


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_span_and_traceparent(
    client: ProviderClient,
    backend: OpenAIBackend,
    sim: ProviderSimulator,
    tracing: tuple[TracerProvider, InMemorySpanExporter],
    streaming: bool,
) -> None:
    provider, exporter = tracing
    adapter = OpenAIChat(client, {KEY_ENV: FAKE_KEY}, tracer_provider=provider)
    with provider.get_tracer("test").start_as_current_span("request") as parent:
        if streaming:
            usage = (await collect(adapter, backend))[-1].usage
        else:
            usage = (await adapter.complete(backend, REQUEST, timeout_s=5)).usage
    assert usage is not None
    span = only_chat_span(exporter)
    assert span.name == f"chat {MODEL}"
    assert span.kind is SpanKind.CLIENT
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "simprov"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.response.model"] == MODEL
    assert attrs["gen_ai.usage.input_tokens"] == usage.input_tokens
    assert attrs["gen_ai.usage.output_tokens"] == usage.output_tokens
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == ("stop",)  # type: ignore[arg-type]
    assert span.status.status_code is not StatusCode.ERROR
    assert_no_secrets_in(span)
    # the W3C context that reached the provider names this span in this trace
    ctx = span.get_span_context()
    assert ctx is not None
    recorded = sim.requests[0].traceparent
    assert recorded is not None
    version, trace_id, span_id, flags = recorded.split("-")
    assert (version, trace_id, span_id) == (
        "00",
        format_trace_id(ctx.trace_id),
        format_span_id(ctx.span_id),
    )
    assert int(flags, 16) & 0x01  # sampled


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_content_on_the_span_only_when_the_operator_opts_in(
    client: ProviderClient,
    backend: OpenAIBackend,
    tracing: tuple[TracerProvider, InMemorySpanExporter],
    streaming: bool,
) -> None:
    provider, exporter = tracing
    for opted_in in (False, True):
        exporter.clear()
        adapter = OpenAIChat(
            client, {KEY_ENV: FAKE_KEY}, tracer_provider=provider, capture_content=opted_in
        )
        if streaming:
            text = "".join(c.delta for c in await collect(adapter, backend))
        else:
            text = (await adapter.complete(backend, REQUEST, timeout_s=5)).text
        span = only_chat_span(exporter)
        attrs = dict(span.attributes or {})
        if not opted_in:
            assert_no_secrets_in(span)
            assert not any("messages" in k or k.endswith(".value") for k in attrs)
            continue
        sent = json.loads(str(attrs["gen_ai.input.messages"]))
        assert sent == [{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]
        assert attrs["input.value"] == attrs["gen_ai.input.messages"]
        (answer,) = json.loads(str(attrs["gen_ai.output.messages"]))
        assert answer["role"] == "assistant" and answer["finish_reason"] == "stop"
        assert answer["parts"] == [{"type": "text", "content": text}]
        assert attrs["output.value"] == text and text.startswith("[simulated")
        assert FAKE_KEY not in span.to_json()  # content, never the key


async def test_the_span_names_the_model_as_the_registry_does(
    client: ProviderClient,
    backend: OpenAIBackend,
    tracing: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = tracing
    adapter = OpenAIChat(client, {KEY_ENV: FAKE_KEY}, tracer_provider=provider)
    named = dataclasses.replace(backend, model="our-name-4.5")
    await adapter.complete(named, REQUEST, timeout_s=5)
    span = only_chat_span(exporter)
    attrs = dict(span.attributes or {})
    assert span.name == "chat our-name-4.5"  # one name per model across every span
    assert attrs["quorum.model"] == "our-name-4.5"
    assert attrs["gen_ai.request.model"] == MODEL  # the provider's own name, its own attribute


def test_capture_content_follows_the_genai_variable() -> None:
    var = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
    assert not telemetry.capture_content({})
    assert not telemetry.capture_content({var: "false"})
    assert telemetry.capture_content({var: "true"})
    assert telemetry.capture_content({var: "TRUE"})


async def test_error_span(
    client: ProviderClient,
    backend: OpenAIBackend,
    sim: ProviderSimulator,
    tracing: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = tracing
    adapter = OpenAIChat(client, {KEY_ENV: FAKE_KEY}, tracer_provider=provider)
    sim.add_fault(Fault("status", status=503))
    with pytest.raises(Unavailable):
        await adapter.complete(backend, REQUEST, timeout_s=5)
    with pytest.raises(Unavailable):
        await collect(adapter, backend)
    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert len(spans) == 2
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "PROVIDER_ERROR"
        assert_no_secrets_in(span)


async def test_stream_closed_early_ends_its_span(
    client: ProviderClient,
    backend: OpenAIBackend,
    tracing: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = tracing
    adapter = OpenAIChat(client, {KEY_ENV: FAKE_KEY}, tracer_provider=provider)
    stream = adapter.stream(backend, REQUEST, timeout_s=5)
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        first = await anext(stream)
        assert first.delta
    span = only_chat_span(exporter)
    assert span.end_time is not None
    # and the connection pool is still usable
    assert (await adapter.complete(backend, REQUEST, timeout_s=5)).text


async def test_traceparent_propagates_without_global_provider(
    adapter: OpenAIChat,
    backend: OpenAIBackend,
    sim: ProviderSimulator,
    tracing: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    # the adapter's tracer is the (unset) global one; an active span still propagates
    provider, _ = tracing
    with provider.get_tracer("test").start_as_current_span("request") as parent:
        await adapter.complete(backend, REQUEST, timeout_s=5)
    trace_id = format_trace_id(parent.get_span_context().trace_id)
    recorded = sim.requests[0].traceparent
    assert recorded is not None and recorded.split("-")[1] == trace_id


# -- parse_retry_after ----------------------------------------------------------------------

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_parse_retry_after_examples() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("  ") is None
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(" 12 ") == 12.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-3") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 01 Jan 2030 12:00:30 GMT", NOW) == 30.0
    assert parse_retry_after("Tue, 31 Dec 2029 12:00:00 GMT", NOW) == 0.0  # in the past
    naive_now = NOW.replace(tzinfo=None)
    assert parse_retry_after("Wed, 01 Jan 2030 12:01:00 GMT", naive_now) == 60.0


@given(st.integers(min_value=0, max_value=10**12))
def test_parse_retry_after_delta_seconds(n: int) -> None:
    assert parse_retry_after(str(n)) == float(n)


@given(
    st.datetimes(
        min_value=datetime(1980, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    )
)
def test_parse_retry_after_http_date(when: datetime) -> None:
    when = when.replace(microsecond=0)
    got = parse_retry_after(format_datetime(when, usegmt=True), NOW)
    assert got == max(0.0, (when - NOW).total_seconds())


@given(st.text(max_size=80))
def test_parse_retry_after_never_raises(value: str) -> None:
    got = parse_retry_after(value, NOW)
    assert got is None or (got >= 0 and got != float("inf"))


def test_result_types_default_to_reported_usage() -> None:
    assert ChatResult(text="", usage=TokenUsage()).usage_reported is True
    assert ChatChunk().usage_reported is True


@pytest.mark.parametrize("streaming", [False, True])
async def test_provider_labels_are_made_safe(
    adapter: OpenAIChat, sim: ProviderSimulator, streaming: bool
) -> None:
    """The simulator answers with the model name it was asked for: a hostile one comes back
    without control characters or markup, and short."""
    hostile = "gpt-4.1\n<script>alert(1)</script>\x1b[31m" + "x" * 500
    backend = backend_for(sim.url, model=hostile)
    if streaming:
        last = (await collect(adapter, backend))[-1]
        got = last.extra["provider_model"]
    else:
        got = (await adapter.complete(backend, REQUEST, timeout_s=5)).provider_model
    assert got.startswith("gpt-4.1scriptalert1/script31mxx") and len(got) == 64


def test_label_keeps_model_names_and_drops_anything_else() -> None:
    from quorum.backends.openai import label

    assert label("gpt-4.1-2025-04-14") == "gpt-4.1-2025-04-14"
    assert label("accounts/fireworks/models/llama-v3p1-8b@v1") == (
        "accounts/fireworks/models/llama-v3p1-8b@v1"
    )
    assert label("stop") == "stop" and label(None) == "" and label(42) == ""
    assert label("a b\tc\u202e") == "abc"
    # a host path (llama-server's model is the GGUF file it loaded): the file's name only
    assert label("/home/ann/models/SmolLM2-135M-Instruct-Q8_0.gguf") == (
        "SmolLM2-135M-Instruct-Q8_0.gguf"
    )
    assert label("C:\\Users\\ann\\m.gguf") == "m.gguf" and label("~/m/x.gguf") == "x.gguf"


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": "too long sk-secret-echo", "type": "invalid_request_error",
                   "param": "messages", "code": "context_length_exceeded"}},  # OpenAI
        {"error": {"code": 400, "message": "too long sk-secret-echo",
                   "type": "exceed_context_size_error", "n_prompt_tokens": 9000}},  # llama.cpp
    ],
    ids=["openai", "llama.cpp"],
)  # fmt: skip
@pytest.mark.parametrize("streaming", [False, True])
async def test_a_context_overflow_is_named_as_such(
    adapter: OpenAIChat, body: dict, streaming: bool
) -> None:
    """A real HTTP server on loopback answers 400 with a provider's context-overflow error:
    it becomes CONTEXT_LENGTH_EXCEEDED, and nothing of the body's message leaks."""
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            data = json.dumps(body).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = backend_for(f"http://127.0.0.1:{server.server_port}/v1")
        with pytest.raises(InvalidArgument) as info:
            if streaming:
                await collect(adapter, backend)
            else:
                await adapter.complete(backend, REQUEST, timeout_s=5)
    finally:
        server.shutdown()
        server.server_close()
    assert info.value.reason == "CONTEXT_LENGTH_EXCEEDED"
    assert "sk-secret-echo" not in str(info.value) + json.dumps(info.value.metadata)
