"""A tiny OTLP/HTTP trace receiver for tests: a real HTTP server on loopback.

Point an exporter at :attr:`OtlpReceiver.url` (``http://127.0.0.1:<port>/v1/traces``) and read
back what it sent with :meth:`OtlpReceiver.spans`. Both OTLP/HTTP encodings are understood:
``application/x-protobuf`` (the Python SDK's exporter, Triton's opentelemetry-cpp exporter)
and ``application/json`` (ids as hex or, from older exporters, base64), optionally gzipped.

    with OtlpReceiver() as rx:
        ...  # export spans to rx.url
        spans = rx.wait_for_spans(lambda s: any(x["service_name"] == "triton" for x in s))

Each span is a plain dict: ``trace_id`` (32 hex), ``span_id`` (16 hex), ``parent_span_id``
(16 hex or ""), ``name``, ``kind`` (int), ``service_name`` (the resource's ``service.name``)
and ``attributes`` (a dict of plain Python values).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

Span = dict[str, Any]

TRACES_PATH = "/v1/traces"


def _id_hex(value: Any, size: int) -> str:
    """An OTLP id (bytes, hex string or base64 string) as lowercase hex; "" when empty."""
    if not value:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    text = str(value)
    if len(text) == 2 * size:
        try:
            bytes.fromhex(text)
            return text.lower()
        except ValueError:
            pass
    try:
        return base64.b64decode(text, validate=True).hex()
    except (binascii.Error, ValueError):
        return text


def _any_value(value: dict[str, Any]) -> Any:
    """An OTLP AnyValue in its JSON form (camelCase keys) as a plain Python value."""
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])  # int64 is a string in JSON
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [_any_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return _attributes(value["kvlistValue"].get("values", []))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def _attributes(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {kv["key"]: _any_value(kv.get("value", {})) for kv in items}


def _spans_from_json(doc: dict[str, Any]) -> list[Span]:
    out: list[Span] = []
    for rs in doc.get("resourceSpans", []):
        resource = _attributes(rs.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", ""))
        for ss in rs.get("scopeSpans", []) or rs.get("instrumentationLibrarySpans", []):
            for sp in ss.get("spans", []):
                kind = sp.get("kind", 0)
                out.append(
                    {
                        "trace_id": _id_hex(sp.get("traceId"), 16),
                        "span_id": _id_hex(sp.get("spanId"), 8),
                        "parent_span_id": _id_hex(sp.get("parentSpanId"), 8),
                        "name": sp.get("name", ""),
                        "kind": kind if isinstance(kind, int) else _KIND_NAMES.get(kind, 0),
                        "service_name": service,
                        "attributes": _attributes(sp.get("attributes", [])),
                    }
                )
    return out


_KIND_NAMES = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}


def parse_traces(body: bytes, content_type: str) -> list[Span]:
    """The spans in one OTLP/HTTP export request body."""
    if content_type.split(";", maxsplit=1)[0].strip().lower() == "application/json":
        return _spans_from_json(json.loads(body))
    return _spans_from_proto(ExportTraceServiceRequest.FromString(body))


def _pb_value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_pb_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _pb_attributes(value.kvlist_value.values)
    return getattr(value, which) if which else None


def _pb_attributes(items: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _pb_value(kv.value) for kv in items}


def _spans_from_proto(request: ExportTraceServiceRequest) -> list[Span]:
    out: list[Span] = []
    for rs in request.resource_spans:
        service = str(_pb_attributes(rs.resource.attributes).get("service.name", ""))
        for ss in rs.scope_spans:
            for sp in ss.spans:
                out.append(
                    {
                        "trace_id": sp.trace_id.hex(),
                        "span_id": sp.span_id.hex(),
                        "parent_span_id": sp.parent_span_id.hex(),
                        "name": sp.name,
                        "kind": int(sp.kind),
                        "service_name": service,
                        "attributes": _pb_attributes(sp.attributes),
                    }
                )
    return out


class OtlpReceiver:
    """An OTLP/HTTP receiver on ``127.0.0.1`` (a free port unless one is given)."""

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._spans: list[Span] = []
        self._requests: list[tuple[str, str]] = []  # (path, content type)
        self._bodies: list[tuple[str, bytes]] = []  # (content type, body unzipped)
        self._errors: list[str] = []

    @property
    def url(self) -> str:
        """The traces endpoint, e.g. ``http://127.0.0.1:43111/v1/traces``."""
        return f"{self.endpoint}{TRACES_PATH}"

    @property
    def endpoint(self) -> str:
        """The base URL (what ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes)."""
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                    body = gzip.decompress(body)
                ctype = self.headers.get("Content-Type") or ""
                receiver._record(self.path, ctype, body)
                is_json = ctype.startswith("application/json")
                reply = b"{}" if is_json else ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/json" if is_json else ctype)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _record(self, path: str, content_type: str, body: bytes) -> None:
        spans: list[Span] = []
        error = None
        if path.split("?", maxsplit=1)[0].rstrip("/") == TRACES_PATH:
            try:
                spans = parse_traces(body, content_type)
            except Exception as exc:
                error = f"{content_type}: {exc!r}"
        with self._changed:
            self._requests.append((path, content_type))
            self._bodies.append((content_type, body))
            self._spans.extend(spans)
            if error:
                self._errors.append(error)
            self._changed.notify_all()

    def spans(self) -> list[Span]:
        """Every span received so far, in arrival order."""
        with self._lock:
            return list(self._spans)

    def requests(self) -> list[tuple[str, str]]:
        """``(path, content type)`` of every request received so far."""
        with self._lock:
            return list(self._requests)

    def bodies(self) -> list[tuple[str, bytes]]:
        """``(content type, body)`` of every request received so far (gzip undone)."""
        with self._lock:
            return list(self._bodies)

    def errors(self) -> list[str]:
        """Bodies that could not be parsed."""
        with self._lock:
            return list(self._errors)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self._requests.clear()
            self._bodies.clear()
            self._errors.clear()

    def wait_for_spans(
        self, predicate: Callable[[list[Span]], bool], timeout_s: float = 10.0
    ) -> list[Span]:
        """Wait until ``predicate(spans)`` holds; returns the spans (whatever they are at the
        timeout, so the caller's assertion shows what arrived)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return list(self._spans)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
