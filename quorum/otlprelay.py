"""Relay Triton's spans from OTLP/HTTP JSON to OTLP/HTTP protobuf.

Triton 2.51's OpenTelemetry mode exports OTLP/HTTP as JSON only, and some receivers (Arize
Phoenix among them) take protobuf only. In production an OpenTelemetry Collector sits between
them (its ``otlp`` receiver takes JSON, its ``otlphttp`` exporter sends protobuf); no Collector
binary installs offline here, so ``quorum up`` starts this small relay instead, on loopback,
only when span export is on, and points Triton at it.

Two parts:

- :func:`json_to_request` is the pure conversion: an OTLP JSON document to an
  ``ExportTraceServiceRequest``. OTLP JSON is *not* protobuf's JSON mapping in one respect:
  trace and span ids are hex strings, where the mapping wants base64; the rest (lowerCamelCase
  keys, enums as numbers or names, 64-bit integers as strings) the mapping already accepts.
  Unknown fields are ignored, as the OTLP specification asks of receivers.
- :class:`OtlpRelay` is the loopback server: it accepts ``POST /v1/traces`` (JSON or
  protobuf, optionally gzipped) up to a size limit, converts, and hands the protobuf to one
  forwarding thread through a bounded queue. When the queue is full the batch is dropped and
  counted (Triton is answered at once, with an OTLP partial success naming the rejected spans,
  so it never waits on the upstream). Each forward has its own timeout; a failed forward is
  counted and not retried.

Errors raised here: :class:`quorum.errors.InvalidArgument` (reason ``OTLP_JSON_INVALID``) for a
document that is not OTLP JSON.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import queue
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from quorum.errors import FailedPrecondition, InvalidArgument

__all__ = ["OtlpRelay", "RelayStats", "json_to_request"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
TRACES_PATH = "/v1/traces"
#: the largest request body accepted (after gzip); Triton's batches are a few KB each
MAX_BODY_BYTES = 4 * 1024 * 1024
#: batches waiting for the forwarding thread; more are dropped (and counted)
QUEUE_SIZE = 64
#: the whole forward of one batch (connect, write, read)
FORWARD_TIMEOUT_S = 5.0
#: how long a client may take to send its request (socket timeout of a connection)
READ_TIMEOUT_S = 10.0

_ID_BYTES = {"traceId": 16, "spanId": 8, "parentSpanId": 8}
_JSON = "application/json"
_PROTOBUF = "application/x-protobuf"


def _id_base64(value: Any, field: str) -> str:
    """An OTLP JSON id (hex, as the OTLP specification says; base64 from some older
    exporters) as the base64 that protobuf's JSON mapping wants. "" stays "" (no parent)."""
    if value in ("", None):
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string", reason="OTLP_JSON_INVALID")
    size = _ID_BYTES[field]
    raw: bytes | None = None
    if len(value) == 2 * size:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != size:
        raise InvalidArgument(f"{field} must be {2 * size} hex digits", reason="OTLP_JSON_INVALID")
    return base64.b64encode(raw).decode("ascii")


def _fix_ids(obj: dict[str, Any]) -> None:
    for field in _ID_BYTES:
        if field in obj:
            obj[field] = _id_base64(obj[field], field)


def _dicts(value: Any, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidArgument(f"{what} must be a list of objects", reason="OTLP_JSON_INVALID")
    return value


def json_to_request(doc: Any) -> ExportTraceServiceRequest:
    """The ``ExportTraceServiceRequest`` an OTLP/HTTP JSON body (already parsed) stands for.

    Raises InvalidArgument (``OTLP_JSON_INVALID``) when ``doc`` is not an OTLP JSON traces
    document. ``doc`` is not changed."""
    if not isinstance(doc, dict):
        raise InvalidArgument("an OTLP JSON body is an object", reason="OTLP_JSON_INVALID")
    doc = copy.deepcopy(doc)
    for rs in _dicts(doc.get("resourceSpans"), "resourceSpans"):
        for ss in _dicts(rs.get("scopeSpans"), "scopeSpans"):
            for span in _dicts(ss.get("spans"), "spans"):
                _fix_ids(span)
                for link in _dicts(span.get("links"), "links"):
                    _fix_ids(link)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        # the parser's message names the field and the bad value's type, never a value
        raise InvalidArgument(
            f"not an OTLP traces document: {str(exc)[:200]}", reason="OTLP_JSON_INVALID"
        ) from None
    return request


def _span_count(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise InvalidArgument("bad gzip body", reason="OTLP_BODY_INVALID") from None
    if len(out) > limit:
        raise InvalidArgument("body too large once unzipped", reason="OTLP_BODY_TOO_LARGE")
    return out


@dataclass
class RelayStats:
    """What the relay did since it started (batches, i.e. export requests)."""

    received: int = 0
    forwarded: int = 0
    #: refused: not OTLP, too large, wrong path or content type
    rejected: int = 0
    #: the queue was full
    dropped: int = 0
    #: the upstream failed or did not answer in time
    failed: int = 0


class OtlpRelay:
    """An OTLP/HTTP relay on ``127.0.0.1`` that forwards traces to ``upstream_url`` as
    protobuf. Use as a context manager or call :meth:`start` and :meth:`stop`.

    ``headers`` go with every forward (``OTEL_EXPORTER_OTLP_HEADERS``, e.g. an API key); they
    are never logged. ``transport`` is for tests (an ``httpx`` transport)."""

    def __init__(
        self,
        upstream_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        port: int = 0,
        max_body_bytes: int = MAX_BODY_BYTES,
        queue_size: int = QUEUE_SIZE,
        forward_timeout_s: float = FORWARD_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.upstream_url = upstream_url
        self._headers = {**(headers or {}), "Content-Type": _PROTOBUF}
        self._port = port
        self._max_body = max_body_bytes
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=queue_size)
        self._timeout = httpx.Timeout(forward_timeout_s, connect=min(forward_timeout_s, 2.0))
        self._transport = transport
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._drain_deadline = 0.0
        self._lock = threading.Lock()
        self._stats = RelayStats()

    @property
    def url(self) -> str:
        """Where to export to, e.g. ``http://127.0.0.1:40123/v1/traces``."""
        if self._server is None:
            raise FailedPrecondition("the OTLP relay is not started")
        return f"http://{HOST}:{self._server.server_address[1]}{TRACES_PATH}"

    @property
    def stats(self) -> RelayStats:
        with self._lock:
            return RelayStats(**vars(self._stats))

    def _count(self, field: str) -> int:
        with self._lock:
            value = getattr(self._stats, field) + 1
            setattr(self._stats, field, value)
            return int(value)

    # -- receiving -------------------------------------------------------------------------

    def _accept(self, path: str, content_type: str, encoding: str, body: bytes) -> tuple[int, int]:
        """Take one export request: (HTTP status, spans rejected). Raises InvalidArgument."""
        if path.split("?", 1)[0].rstrip("/") != TRACES_PATH:
            return HTTPStatus.NOT_FOUND, 0
        if encoding == "gzip":
            body = _gunzip(body, self._max_body)
        elif encoding not in ("", "identity"):
            return HTTPStatus.UNSUPPORTED_MEDIA_TYPE, 0
        if content_type == _JSON:
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise InvalidArgument("body is not JSON", reason="OTLP_JSON_INVALID") from None
            request = json_to_request(doc)
        elif content_type == _PROTOBUF:
            try:
                request = ExportTraceServiceRequest.FromString(body)
            except Exception:  # protobuf's DecodeError has no stable import path
                raise InvalidArgument("bad protobuf body", reason="OTLP_BODY_INVALID") from None
        else:
            return HTTPStatus.UNSUPPORTED_MEDIA_TYPE, 0
        self._count("received")
        try:
            self._queue.put_nowait(request.SerializeToString())
        except queue.Full:
            if self._count("dropped") == 1:
                log.warning("OTLP relay queue full: dropping span batches (counted)")
            return HTTPStatus.OK, _span_count(request)
        return HTTPStatus.OK, 0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = READ_TIMEOUT_S

            def do_POST(self) -> None:
                content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                content_type = content_type.lower()
                try:
                    length = int(self.headers.get("Content-Length") or "")
                except ValueError:
                    relay._count("rejected")
                    self._reply(HTTPStatus.LENGTH_REQUIRED, content_type, close=True)
                    return
                if length < 0 or length > relay._max_body:
                    relay._count("rejected")
                    self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, content_type, close=True)
                    return
                body = self.rfile.read(length)
                encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
                try:
                    status, rejected = relay._accept(self.path, content_type, encoding, body)
                except InvalidArgument as exc:
                    relay._count("rejected")
                    log.warning("OTLP relay: refused a batch (%s)", exc.reason)
                    self._reply(HTTPStatus.BAD_REQUEST, content_type, message=exc.message)
                    return
                if status != HTTPStatus.OK:
                    relay._count("rejected")
                self._reply(status, content_type, rejected=rejected)

            def _reply(
                self,
                status: int,
                content_type: str,
                *,
                rejected: int = 0,
                message: str = "",
                close: bool = False,
            ) -> None:
                response = ExportTraceServiceResponse()
                if rejected:
                    response.partial_success.rejected_spans = rejected
                    response.partial_success.error_message = "relay queue full"
                if content_type == _JSON:
                    doc = json_format.MessageToDict(response) if status == HTTPStatus.OK else {}
                    if message:
                        doc = {"message": message}
                    reply, reply_type = json.dumps(doc).encode(), _JSON
                else:
                    reply, reply_type = response.SerializeToString(), _PROTOBUF
                self.send_response(status)
                self.send_header("Content-Type", reply_type)
                self.send_header("Content-Length", str(len(reply)))
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    # -- forwarding ------------------------------------------------------------------------

    def _forward_loop(self) -> None:
        with httpx.Client(timeout=self._timeout, transport=self._transport, trust_env=False) as c:
            while True:
                try:
                    body = self._queue.get(timeout=0.2)
                except queue.Empty:
                    if self._stopping.is_set():
                        return
                    continue
                if self._stopping.is_set() and time.monotonic() > self._drain_deadline:
                    self._count("dropped")  # stopping, and out of time to drain
                    continue
                self._forward(c, body)

    def _forward(self, client: httpx.Client, body: bytes) -> None:
        try:
            response = client.post(self.upstream_url, content=body, headers=self._headers)
        except httpx.HTTPError as exc:
            why = type(exc).__name__
        else:
            if response.is_success:
                self._count("forwarded")
                return
            why = f"HTTP {response.status_code}"
        if self._count("failed") == 1:  # the first failure is a warning, the rest are counted
            log.warning("OTLP relay: forwarding to the traces endpoint failed (%s)", why)
        else:
            log.debug("OTLP relay: forward failed (%s)", why)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> OtlpRelay:
        if self._server is not None:
            raise FailedPrecondition("the OTLP relay is already started")
        self._stopping.clear()
        self._server = ThreadingHTTPServer((HOST, self._port), self._handler())
        self._server.daemon_threads = True
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="otlp-relay", daemon=True),
            threading.Thread(target=self._forward_loop, name="otlp-relay-forward", daemon=True),
        ]
        for t in self._threads:
            t.start()
        log.info("OTLP relay on %s forwards to the traces endpoint as protobuf", self.url)
        return self

    def stop(self, timeout_s: float = FORWARD_TIMEOUT_S + 2.0) -> None:
        """Stop taking requests, forward what is queued (new forwards start for up to
        ``timeout_s`` less one forward timeout; the rest are dropped), then log what was
        relayed. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._drain_deadline = time.monotonic() + max(timeout_s - FORWARD_TIMEOUT_S, 0.0)
        self._stopping.set()
        for t in self._threads:
            t.join(timeout=timeout_s)
        self._threads = []
        s = self.stats
        log.info(
            "OTLP relay stopped: %d batches received, %d forwarded, %d failed, %d dropped "
            "(queue full), %d rejected",
            s.received, s.forwarded, s.failed, s.dropped, s.rejected,
        )  # fmt: skip

    def __enter__(self) -> OtlpRelay:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
