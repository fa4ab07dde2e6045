"""The OTLP JSON → protobuf relay: the pure conversion against a body Triton 2.51 really sent,
and the loopback server against real HTTP servers (the test receiver, a slow upstream)."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from quorum import telemetry
from quorum.errors import InvalidArgument
from quorum.otlprelay import OtlpRelay, json_to_request
from tests.otlp_receiver import OtlpReceiver, parse_traces

#: one export request Triton 2.51 sent (captured with tests/otlp_receiver.py): three calls to
#: profanity_check, each continuing the traceparent it was sent
TRITON_BODY = (Path(__file__).parent / "data" / "triton_otlp_traces.json").read_bytes()
#: the traceparents of those calls: (trace id, caller span id)
CALLS = [
    ("9219d79d0fc3a27f0182bb401deb2118", "7ac4ed3d046a5a2f"),
    ("b03242f563df2260c729c62f754c28b3", "66679be528615108"),
    ("d79348a2ea7fb9d46d820c79d9c5861d", "bf09f3a60d9270dd"),
]


def _doc() -> dict[str, Any]:
    return json.loads(TRITON_BODY)


# -- the conversion -----------------------------------------------------------------------------


def test_triton_body_converts_to_the_same_spans():
    request = json_to_request(_doc())
    # decoded independently: the test receiver's own OTLP JSON reader against the protobuf
    want = parse_traces(TRITON_BODY, "application/json")
    got = parse_traces(request.SerializeToString(), "application/x-protobuf")
    assert len(want) == 9
    assert got == want


def test_triton_body_keeps_ids_parents_times_and_events():
    request = json_to_request(_doc())
    (rs,) = request.resource_spans
    service = {kv.key: kv.value.string_value for kv in rs.resource.attributes}["service.name"]
    assert service == "triton"
    spans = [s for ss in rs.scope_spans for s in ss.spans]
    for trace_id, caller in CALLS:
        mine = {s.name: s for s in spans if s.trace_id == bytes.fromhex(trace_id)}
        assert set(mine) == {"InferRequest", "profanity_check", "compute"}
        root = mine["InferRequest"]
        assert root.parent_span_id == bytes.fromhex(caller)
        assert mine["profanity_check"].parent_span_id == root.span_id
        assert mine["compute"].parent_span_id == mine["profanity_check"].span_id
        assert all(s.kind == Span.SPAN_KIND_SERVER for s in mine.values())
        assert root.start_time_unix_nano < root.end_time_unix_nano
        assert root.start_time_unix_nano > 1_700_000_000 * 10**9  # int64 strings, not lost
    model = next(s for s in spans if s.name == "profanity_check")
    attrs = {kv.key: kv.value for kv in model.attributes}
    assert attrs["triton.model_version"].int_value == 1
    assert attrs["triton.model_name"].string_value == "profanity_check"
    assert [e.name for e in model.events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]


def test_the_document_is_not_changed():
    doc = _doc()
    before = copy.deepcopy(doc)
    json_to_request(doc)
    assert doc == before


def _one_span(**fields: Any) -> dict[str, Any]:
    span = {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "s", **fields}
    return {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}


def _span(doc: dict[str, Any]) -> Span:
    return json_to_request(doc).resource_spans[0].scope_spans[0].spans[0]


def test_enum_names_links_status_and_base64_ids():
    b64_trace = base64.b64encode(bytes.fromhex("12" * 16)).decode()
    span = _span(
        _one_span(
            kind="SPAN_KIND_CLIENT",
            status={"code": "STATUS_CODE_ERROR", "message": "boom"},
            parentSpanId="",
            links=[{"traceId": b64_trace, "spanId": "ef" * 8}],
            startTimeUnixNano=1796585687900811490,  # a number is fine too
            unknownField={"x": 1},  # ignored, as OTLP asks of receivers
        )
    )
    assert span.kind == Span.SPAN_KIND_CLIENT
    assert span.status.code == Status.STATUS_CODE_ERROR
    assert span.parent_span_id == b""
    assert span.links[0].trace_id == bytes.fromhex("12" * 16)
    assert span.links[0].span_id == bytes.fromhex("ef" * 8)
    assert span.start_time_unix_nano == 1796585687900811490
    # an enum name from a newer version of OTLP is not an error: the value is unspecified
    assert _span(_one_span(kind="SPAN_KIND_SIDEWAYS")).kind == Span.SPAN_KIND_UNSPECIFIED


@pytest.mark.parametrize(
    "doc",
    [
        [],
        "resourceSpans",
        {"resourceSpans": {"not": "a list"}},
        {"resourceSpans": [{"scopeSpans": [{"spans": ["x"]}]}]},
        _one_span(traceId="ab" * 15),  # too short
        _one_span(spanId="zz" * 8),  # not hex, not base64
        _one_span(spanId=12),
        _one_span(kind=[2]),
        _one_span(startTimeUnixNano="soon"),
    ],
)
def test_what_is_not_otlp_json_is_refused(doc: Any):
    with pytest.raises(InvalidArgument) as info:
        json_to_request(doc)
    assert info.value.reason == "OTLP_JSON_INVALID"


@given(
    trace_id=st.binary(min_size=16, max_size=16),
    span_id=st.binary(min_size=8, max_size=8),
    parent=st.one_of(st.just(b""), st.binary(min_size=8, max_size=8)),
    kind=st.integers(0, 5),
    start=st.integers(0, 2**64 - 1),
    value=st.integers(-(2**63), 2**63 - 1),
)
def test_protobuf_written_as_otlp_json_comes_back_unchanged(
    trace_id: bytes, span_id: bytes, parent: bytes, kind: int, start: int, value: int
):
    want = ExportTraceServiceRequest()
    span = want.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.parent_span_id = trace_id, span_id, parent
    span.kind = kind  # type: ignore[assignment]
    span.start_time_unix_nano = start
    span.name = "x"
    attr = span.attributes.add()
    attr.key, attr.value.int_value = "n", value
    # OTLP JSON as an exporter writes it: protobuf's mapping with the ids in hex
    doc = json_format.MessageToDict(want)
    s = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    s["traceId"], s["spanId"] = trace_id.hex(), span_id.hex()
    if parent:
        s["parentSpanId"] = parent.hex()
    assert json_to_request(doc) == want


def test_traces_headers_come_from_the_environment():
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "api_key=s%20ecret,x=1"}
    assert telemetry.traces_headers(env) == {"api_key": "s ecret", "x": "1"}
    env["OTEL_EXPORTER_OTLP_TRACES_HEADERS"] = "only=this"
    assert telemetry.traces_headers(env) == {"only": "this"}
    assert telemetry.traces_headers({}) == {}


# -- the relay server ---------------------------------------------------------------------------


@pytest.fixture
def rx() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def _post(url: str, body: bytes, ctype: str = "application/json", **headers: str) -> httpx.Response:
    headers = {"Content-Type": ctype, **headers}
    return httpx.post(url, content=body, headers=headers, timeout=5, trust_env=False)


def _wait(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_relay_forwards_triton_json_as_protobuf(rx: OtlpReceiver):
    with OtlpRelay(rx.url) as relay:
        r = _post(relay.url, TRITON_BODY)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {}  # a full success
        spans = rx.wait_for_spans(lambda s: len(s) == 9)
    assert rx.requests() == [("/v1/traces", "application/x-protobuf")]
    assert spans == parse_traces(TRITON_BODY, "application/json")
    stats = relay.stats
    assert (stats.received, stats.forwarded, stats.failed, stats.dropped) == (1, 1, 0, 0)


def test_relay_takes_gzip_and_protobuf(rx: OtlpReceiver):
    proto = json_to_request(_doc()).SerializeToString()
    with OtlpRelay(rx.url) as relay:
        gz = _post(relay.url, gzip.compress(TRITON_BODY), **{"Content-Encoding": "gzip"})
        pb = _post(relay.url, proto, "application/x-protobuf")
        assert (gz.status_code, pb.status_code) == (200, 200)
        rx.wait_for_spans(lambda s: len(s) == 18)
    assert {ctype for _, ctype in rx.requests()} == {"application/x-protobuf"}
    assert [body for _, body in rx.bodies()] == [proto, proto]


def test_relay_refuses_what_it_cannot_relay(rx: OtlpReceiver):
    with OtlpRelay(rx.url, max_body_bytes=len(TRITON_BODY) - 1) as relay:
        assert _post(relay.url, TRITON_BODY).status_code == 413
        zipped = gzip.compress(TRITON_BODY)  # small enough zipped, too large once unzipped
        assert _post(relay.url, zipped, **{"Content-Encoding": "gzip"}).status_code == 400
        assert _post(relay.url, b"{not json").status_code == 400
        assert _post(relay.url, b'{"resourceSpans": 1}').status_code == 400
        assert _post(relay.url, b"\xff\x00", "application/x-protobuf").status_code == 400
        assert _post(relay.url, b"{}", "text/plain").status_code == 415
        assert _post(relay.url.replace("/v1/traces", "/v1/logs"), b"{}").status_code == 404
        assert _post(relay.url, b"{}").status_code == 200  # an empty export is fine
        assert relay.stats.rejected == 7
    assert rx.spans() == []


class _Upstream:
    """A real upstream that holds every request until released (or answers 503)."""

    def __init__(self, status: int = 200) -> None:
        self.release = threading.Event()
        self.seen = 0
        self.headers: list[dict[str, str]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                upstream.seen += 1
                upstream.headers.append({k.lower(): v for k, v in self.headers.items()})
                upstream.release.wait(10)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_stuck_upstream_drops_batches_without_holding_triton():
    upstream = _Upstream()
    try:
        with OtlpRelay(upstream.url, queue_size=1, forward_timeout_s=10) as relay:
            start = time.monotonic()
            answers = []
            for _ in range(4):  # one in flight, one queued, two dropped
                answers.append(_post(relay.url, TRITON_BODY))
                if not upstream.seen:
                    _wait(lambda: upstream.seen == 1)
            assert time.monotonic() - start < 3  # answered at once, not after the upstream
            assert [a.status_code for a in answers] == [200] * 4
            rejected = [a.json().get("partialSuccess", {}) for a in answers]
            assert rejected[:2] == [{}, {}]
            assert rejected[2:] == [{"rejectedSpans": "9", "errorMessage": "relay queue full"}] * 2
            assert relay.stats.dropped == 2
            upstream.release.set()
        assert relay.stats.forwarded == 2
    finally:
        upstream.close()


def test_a_slow_upstream_meets_the_forward_deadline():
    upstream = _Upstream()
    try:
        with OtlpRelay(upstream.url, forward_timeout_s=0.5) as relay:
            start = time.monotonic()
            assert _post(relay.url, TRITON_BODY).status_code == 200
            _wait(lambda: relay.stats.failed == 1)
            assert time.monotonic() - start < 3
    finally:
        upstream.close()


def test_an_upstream_error_or_absence_is_counted():
    refusing = _Upstream(status=503)
    refusing.release.set()
    try:
        with OtlpRelay(refusing.url, headers={"x-api-key": "k"}) as relay:
            assert _post(relay.url, TRITON_BODY).status_code == 200
            _wait(lambda: relay.stats.failed == 1)
        (headers,) = refusing.headers
        assert headers["x-api-key"] == "k"
        assert headers["content-type"] == "application/x-protobuf"
    finally:
        refusing.close()
    with OtlpRelay(refusing.url) as relay:  # nobody listens there now
        assert _post(relay.url, TRITON_BODY).status_code == 200
        _wait(lambda: relay.stats.failed == 1)
    assert relay.stats.forwarded == 0
