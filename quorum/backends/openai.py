"""Adapter for OpenAI-compatible chat-completions endpoints (unary and SSE streaming).

The caller injects one long-lived :class:`~quorum.backends.transport.ProviderClient` and the
environment mapping the API keys are read from (by ``provider.api_key_env``). Every call takes
an explicit ``timeout_s`` that bounds the whole call -- for streams, the whole stream -- and
sets the client's connect and read timeouts from it. Retries are the caller's business (see
:func:`parse_retry_after` and ``ResourceExhausted.retry_after``).

Errors are :mod:`quorum.errors` only, with messages written here that name the provider, the
model and the HTTP status; a provider's body is never read into an error (it may hold
secrets), and neither the key nor the prompt goes into an error, a log line or a span (the
prompt and answer only when the operator opts in: ``capture_content``). Each
error has ``metadata`` ``provider``, ``model`` and, when a response arrived, ``http_status``.

    ===========================================  ==================  ============================
    what happened                                error               reason
    ===========================================  ==================  ============================
    key variable unset / not a valid header      FailedPrecondition  API_KEY_MISSING / _INVALID
    bad ``base_url``                             FailedPrecondition  PROVIDER_MISCONFIGURED
    HTTP 400, 413, 422                           InvalidArgument     PROVIDER_REJECTED_REQUEST
    HTTP 401                                     Unauthenticated     PROVIDER_UNAUTHENTICATED
    HTTP 403                                     PermissionDenied    PROVIDER_PERMISSION_DENIED
    HTTP 404                                     NotFound            PROVIDER_MODEL_NOT_FOUND
    HTTP 429 (``retry_after`` from Retry-After)  ResourceExhausted   PROVIDER_RATE_LIMITED
    HTTP 408 / timeouts / overall deadline       DeadlineExceeded    PROVIDER_TIMEOUT
    HTTP 5xx, 409                                Unavailable         PROVIDER_ERROR
    other 4xx                                    Internal            PROVIDER_UNEXPECTED_STATUS
    connect failed                               Unavailable         PROVIDER_UNREACHABLE
    connection lost before the response          Unavailable         PROVIDER_CONNECTION_ERROR
    non-JSON / unexpected / oversized 200 body   Unavailable         PROVIDER_BAD_RESPONSE
    stream ended without ``[DONE]`` or broke     Unavailable         STREAM_INTERRUPTED
    ===========================================  ==================  ============================

A response without ``usage`` is not estimated: usage is zero and ``usage_reported`` is False.
The part of the input served from the provider's prompt cache is read from
``usage.prompt_tokens_details.cached_tokens`` (OpenAI's field) or, without it, DeepSeek's
``usage.prompt_cache_hit_tokens``; it is never more than ``prompt_tokens``.
Each call is one CLIENT span ``chat <provider_model>`` with the OpenTelemetry GenAI attributes;
the W3C trace context is injected into the request headers, so it reaches the provider.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncGenerator, Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from quorum.backends.transport import (
    BadURL,
    ConnectError,
    ProviderClient,
    ProviderResponse,
    Timeout,
    TransportError,
    Undecodable,
)
from quorum.backends.types import ChatChunk, ChatRequest, ChatResult, TokenUsage
from quorum.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuorumError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from quorum.registry import OpenAIBackend

#: Largest unary response body read (after content decoding); larger ones are refused.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
#: Largest streamed body in all, and largest single SSE line.
MAX_STREAM_BYTES = 16 * 1024 * 1024
MAX_SSE_LINE_BYTES = 1024 * 1024
#: Connect and pool-acquire timeouts never exceed this, whatever the call's budget.
CONNECT_TIMEOUT_CAP_S = 5.0

_DELTA_SECONDS = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what a header value can carry


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    Returns None when the value is absent or unparseable, a finite number ``>= 0`` otherwise
    (a date in the past gives 0). ``now`` defaults to the current UTC time; naive datetimes
    are taken as UTC. Never raises.
    """
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ref = now or datetime.now(UTC)
    if ref.tzinfo is None:
        ref = ref.replace(tzinfo=UTC)
    try:
        delta = (when - ref).total_seconds()
    except OverflowError:
        return None
    return max(0.0, delta) if math.isfinite(delta) else None


def _body(payload: dict[str, Any]) -> bytes:
    """The request's JSON, compact and UTF-8 (non-ASCII text as itself)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class OpenAIChat:
    """Chat completions against one OpenAI-compatible backend per call.

    ``tracer_provider`` is optional (default: the global one), like OpenTelemetry
    instrumentations take it, so tests can trace without touching global state.
    ``capture_content``: the operator's opt-in (:func:`quorum.telemetry.capture_content`) to
    put the messages and the answer on the span (``gen_ai.input.messages``,
    ``gen_ai.output.messages``, and ``input.value``/``output.value`` for OpenInference
    dashboards such as Phoenix), each clipped to :data:`MAX_CONTENT_CHARS`; off, no content.
    """

    def __init__(
        self,
        client: ProviderClient,
        env: Mapping[str, str],
        *,
        tracer_provider: TracerProvider | None = None,
        capture_content: bool = False,
    ) -> None:
        self._client = client
        self._env = env
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._content = capture_content

    # -- public ----------------------------------------------------------------------------

    async def complete(
        self, backend: OpenAIBackend, request: ChatRequest, *, timeout_s: float
    ) -> ChatResult:
        """One unary chat completion, bounded by ``timeout_s`` overall."""
        call = _Call(backend)
        headers = self._headers(call)
        payload = _payload(backend, request, stream=False)
        deadline = asyncio.get_running_loop().time() + timeout_s
        span = self._start_span(call, request)
        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                propagate.inject(headers)
                result = await self._complete(call, headers, payload, timeout_s, deadline)
        except QuorumError as err:
            _fail_span(span, err)
            raise
        except BaseException:
            span.end()
            raise
        _finish_span(
            span, result.provider_model, result.usage, result.usage_reported, result.finish_reason
        )
        if self._content:
            _answer_on(span, result.text, result.finish_reason)
        span.end()
        return result

    def stream(
        self, backend: OpenAIBackend, request: ChatRequest, *, timeout_s: float
    ) -> AsyncGenerator[ChatChunk, None]:
        """Stream a chat completion over SSE, bounded by ``timeout_s`` for the whole stream.

        Yields a chunk per content delta, then a last chunk (``delta == ""``) with usage,
        finish_reason and ``extra["provider_model"]``. Close the iterator (``aclose()`` or
        ``contextlib.aclosing``) when stopping early.
        """
        return self._stream(backend, request, timeout_s)

    # -- internals -------------------------------------------------------------------------

    def _headers(self, call: _Call) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        var = call.backend.provider.api_key_env
        if var:
            key = self._env.get(var)
            if not key:
                raise FailedPrecondition(
                    f"provider {call.provider!r} needs an API key in environment variable "
                    f"{var}, which is not set",
                    reason="API_KEY_MISSING",
                    metadata={**call.meta(), "env_var": var},
                )
            if not _KEY_CHARS.fullmatch(key):
                raise FailedPrecondition(
                    f"environment variable {var} for provider {call.provider!r} does not hold "
                    "a usable API key (it must be visible ASCII without spaces)",
                    reason="API_KEY_INVALID",
                    metadata={**call.meta(), "env_var": var},
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _start_span(self, call: _Call, request: ChatRequest) -> Span:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": call.provider,
            "gen_ai.request.model": call.model,  # the provider's name for it
            "quorum.model": call.name,  # the registry's, as on every other span
        }
        if request.max_tokens is not None:
            attrs["gen_ai.request.max_tokens"] = request.max_tokens
        if request.temperature is not None:
            attrs["gen_ai.request.temperature"] = request.temperature
        url = urlsplit(call.url)
        if url.hostname:
            attrs["server.address"] = url.hostname
        if url.port:
            attrs["server.port"] = url.port
        if self._content:
            messages = [
                {"role": m.role, "parts": [{"type": "text", "content": m.content}]}
                for m in request.messages
            ]
            attrs["gen_ai.input.messages"] = _clip(json.dumps(messages, ensure_ascii=False))
            attrs["input.value"] = attrs["gen_ai.input.messages"]
            attrs["input.mime_type"] = "application/json"
        return self._tracer.start_span(f"chat {call.name}", kind=SpanKind.CLIENT, attributes=attrs)

    async def _send(
        self,
        call: _Call,
        headers: dict[str, str],
        payload: dict[str, Any],
        timeout_s: float,
        deadline: float,
    ) -> ProviderResponse:
        """Send the request and return the response, its body unread (caller closes it)."""
        if timeout_s <= 0:
            raise call.error(DeadlineExceeded, "no time left for the call", "NO_TIME_LEFT")
        t = max(timeout_s, 0.001)
        try:
            async with asyncio.timeout_at(deadline):
                return await self._client.post(
                    call.url,
                    _body(payload),
                    headers,
                    connect_s=min(t, CONNECT_TIMEOUT_CAP_S),
                    read_s=t,
                )
        except TimeoutError:
            raise call.error(
                DeadlineExceeded, f"no response within {timeout_s:g}s", "PROVIDER_TIMEOUT"
            ) from None
        except TransportError as exc:
            raise call.transport_error(exc, timeout_s) from None

    async def _complete(
        self,
        call: _Call,
        headers: dict[str, str],
        payload: dict[str, Any],
        timeout_s: float,
        deadline: float,
    ) -> ChatResult:
        response = await self._send(call, headers, payload, timeout_s, deadline)
        try:
            call.status = response.status_code
            if response.status_code != 200:
                raise await _status_error(call, response, deadline)
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                raise call.bad_response(f"body over {MAX_RESPONSE_BYTES} bytes")
            body = bytearray()
            try:
                async with asyncio.timeout_at(deadline):
                    async for data in response.aiter_bytes():
                        body += data
                        if len(body) > MAX_RESPONSE_BYTES:
                            raise call.bad_response(f"body over {MAX_RESPONSE_BYTES} bytes")
            except TimeoutError:
                raise call.error(
                    DeadlineExceeded, f"no full response within {timeout_s:g}s", "PROVIDER_TIMEOUT"
                ) from None
            except TransportError as exc:
                raise call.transport_error(exc, timeout_s) from None
        finally:
            await response.aclose()
        return _parse_completion(call, bytes(body))

    async def _stream(
        self, backend: OpenAIBackend, request: ChatRequest, timeout_s: float
    ) -> AsyncGenerator[ChatChunk, None]:
        call = _Call(backend)
        headers = self._headers(call)
        payload = _payload(backend, request, stream=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        span = self._start_span(call, request)
        response: ProviderResponse | None = None
        try:
            propagate.inject(headers, context=trace.set_span_in_context(span))
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                response = await self._send(call, headers, payload, timeout_s, deadline)
            call.status = response.status_code
            if response.status_code != 200:
                raise await _status_error(call, response, deadline)
            ctype = response.headers.get("Content-Type", "")
            if not ctype.lower().startswith("text/event-stream"):
                raise call.bad_response("a stream that is not text/event-stream")
            sse = _SSEDecoder()
            body_iter = response.aiter_bytes()
            total = 0
            finish: str | None = None
            usage: TokenUsage | None = None
            model = call.model
            done = False
            answer: list[str] = []  # kept only to put on the span (capture_content)
            while not done:
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await anext(body_iter)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise call.error(
                        DeadlineExceeded,
                        f"stream not finished within {timeout_s:g}s",
                        "PROVIDER_TIMEOUT",
                    ) from None
                except Timeout as exc:
                    raise call.transport_error(exc, timeout_s) from None
                except TransportError as exc:
                    raise call.interrupted(type(exc).__name__) from None
                total += len(data)
                if total > MAX_STREAM_BYTES:
                    raise call.bad_response(f"stream over {MAX_STREAM_BYTES} bytes")
                for event in sse.feed(data, call):
                    if event == "[DONE]":
                        done = True
                        break
                    obj = _json_object(call, event)
                    if "error" in obj:
                        raise call.error(
                            Unavailable, "the stream reported an error", "PROVIDER_ERROR"
                        )
                    model = label(obj.get("model")) or model
                    if obj.get("usage") is not None:
                        usage = _usage(call, obj["usage"])
                    delta, fr = _stream_choice(call, obj)
                    if fr:
                        finish = fr
                    if delta:
                        if self._content:
                            answer.append(delta)
                        yield ChatChunk(delta=delta)
            if not done:
                raise call.interrupted("ended without [DONE]")
            reported = usage is not None
            last_usage = usage or TokenUsage()
            _finish_span(span, model, last_usage, reported, finish or "")
            if self._content:
                _answer_on(span, "".join(answer), finish or "")
            span.end()
            yield ChatChunk(
                delta="",
                usage=last_usage,
                finish_reason=finish or "",
                extra={"provider_model": model},
                usage_reported=reported,
            )
        except QuorumError as err:
            _fail_span(span, err)
            raise
        finally:
            if span.is_recording():
                span.end()
            if response is not None:
                await response.aclose()


class _Call:
    """What one call knows about itself, for error messages and metadata."""

    def __init__(self, backend: OpenAIBackend) -> None:
        self.backend = backend
        self.provider = backend.provider.name
        self.model = backend.provider_model
        #: the registry's name of the model (spans are named by it)
        self.name = backend.model or backend.provider_model
        self.url = backend.provider.base_url.rstrip("/") + "/chat/completions"
        self.status: int | None = None

    def meta(self) -> dict[str, str]:
        meta = {"provider": self.provider, "model": self.model}
        if self.status is not None:
            meta["http_status"] = str(self.status)
        return meta

    def error(self, cls: type[QuorumError], what: str, reason: str) -> QuorumError:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return cls(
            f"provider {self.provider!r} model {self.model!r}{status}: {what}",
            reason=reason,
            metadata=self.meta(),
        )

    def bad_response(self, what: str) -> QuorumError:
        return self.error(Unavailable, f"unusable response: {what}", "PROVIDER_BAD_RESPONSE")

    def interrupted(self, what: str) -> QuorumError:
        return self.error(Unavailable, f"stream interrupted ({what})", "STREAM_INTERRUPTED")

    def transport_error(self, exc: TransportError, timeout_s: float) -> QuorumError:
        name = type(exc).__name__
        if isinstance(exc, Timeout):
            return self.error(
                DeadlineExceeded, f"timed out ({name}, budget {timeout_s:g}s)", "PROVIDER_TIMEOUT"
            )
        if isinstance(exc, ConnectError):
            return self.error(Unavailable, f"cannot connect ({name})", "PROVIDER_UNREACHABLE")
        if isinstance(exc, BadURL):
            return self.error(
                FailedPrecondition, "the provider base_url is invalid", "PROVIDER_MISCONFIGURED"
            )
        if isinstance(exc, Undecodable):
            return self.bad_response(f"undecodable body ({name})")
        return self.error(Unavailable, f"connection failed ({name})", "PROVIDER_CONNECTION_ERROR")

    def status_error(self, response: ProviderResponse) -> QuorumError:
        """Map a non-200 status; the body is deliberately never read."""
        code = response.status_code
        if code == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is None:
                ms = response.headers.get("retry-after-ms", "")
                if _DELTA_SECONDS.fullmatch(ms.strip()):
                    retry_after = float(ms.strip()) / 1000
            return ResourceExhausted(
                f"provider {self.provider!r} model {self.model!r} (HTTP 429): rate limited",
                reason="PROVIDER_RATE_LIMITED",
                metadata=self.meta(),
                retry_after=retry_after,
            )
        table: dict[int, tuple[type[QuorumError], str, str]] = {
            400: (InvalidArgument, "request rejected", "PROVIDER_REJECTED_REQUEST"),
            413: (InvalidArgument, "request too large", "PROVIDER_REJECTED_REQUEST"),
            422: (InvalidArgument, "request rejected", "PROVIDER_REJECTED_REQUEST"),
            401: (Unauthenticated, "credentials refused", "PROVIDER_UNAUTHENTICATED"),
            403: (PermissionDenied, "permission denied", "PROVIDER_PERMISSION_DENIED"),
            404: (NotFound, "model or endpoint not found", "PROVIDER_MODEL_NOT_FOUND"),
            408: (DeadlineExceeded, "request timed out at the provider", "PROVIDER_TIMEOUT"),
            409: (Unavailable, "conflict, try again", "PROVIDER_ERROR"),
        }
        if code in table:
            cls, what, reason = table[code]
            return self.error(cls, what, reason)
        if code >= 500:
            return self.error(Unavailable, "provider error", "PROVIDER_ERROR")
        if code >= 400:
            return self.error(Internal, "unexpected status", "PROVIDER_UNEXPECTED_STATUS")
        return self.bad_response("unexpected status")


#: provider error codes (OpenAI's ``error.code``, llama.cpp's ``error.type``, ...) that mean
#: the prompt and max_tokens do not fit the model's context
CONTEXT_CODES = frozenset(
    {"context_length_exceeded", "exceed_context_size_error", "string_above_max_length"}
)
#: how much of a refused request's body is read for its error code (never for its message)
MAX_ERROR_BODY_BYTES = 16 * 1024


async def _status_error(call: _Call, response: ProviderResponse, deadline: float) -> QuorumError:
    """:meth:`_Call.status_error`, except that a refused request (400, 413, 422) whose body
    names a context-overflow code is CONTEXT_LENGTH_EXCEEDED. Only the code is read from
    the body (cut to safe characters); its message, which may echo anything, never is."""
    if response.status_code in (400, 413, 422):
        code = await _error_code(response, deadline)
        if code in CONTEXT_CODES:
            return call.error(
                InvalidArgument,
                "the prompt and max_tokens do not fit the model's context window",
                "CONTEXT_LENGTH_EXCEEDED",
            )
    return call.status_error(response)


async def _error_code(response: ProviderResponse, deadline: float) -> str:
    body = bytearray()
    try:
        async with asyncio.timeout_at(deadline):
            async for data in response.aiter_bytes():
                body += data
                if len(body) > MAX_ERROR_BODY_BYTES:
                    return ""
        err = json.loads(bytes(body)).get("error")
    except (TimeoutError, TransportError, ValueError, AttributeError):
        return ""
    if not isinstance(err, dict):
        return ""
    return label(err.get("code")) or label(err.get("type"))


class _SSEDecoder:
    """Incremental ``text/event-stream`` decoder: yields each event's joined ``data``."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._data: list[str] = []

    def feed(self, chunk: bytes, call: _Call) -> Iterator[str]:
        self._buf += chunk
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_SSE_LINE_BYTES:
                    raise call.bad_response(f"an SSE line over {MAX_SSE_LINE_BYTES} bytes")
                return
            raw = bytes(self._buf[:nl]).rstrip(b"\r")
            del self._buf[: nl + 1]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise call.bad_response("an SSE line that is not UTF-8") from None
            if not line:
                if self._data:
                    event, self._data = "\n".join(self._data), []
                    yield event
                continue
            if line.startswith(":"):
                continue  # comment / keep-alive
            field, _, value = line.partition(":")
            if field == "data":
                self._data.append(value.removeprefix(" "))


def _payload(backend: OpenAIBackend, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": backend.provider_model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": stream,
    }
    if stream:
        payload["stream_options"] = {"include_usage": True}
    if request.max_tokens is not None:
        payload["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    if request.response_format is not None:
        payload["response_format"] = dict(request.response_format)
    return payload


def _json_object(call: _Call, raw: bytes | str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise call.bad_response("not JSON") from None
    if not isinstance(obj, dict):
        raise call.bad_response("JSON that is not an object")
    return obj


def _count(call: _Call, usage: Mapping[str, Any], key: str, where: str = "usage") -> int:
    value = usage.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise call.bad_response(f"{where}.{key} is not a count")
    return value


def _cached(call: _Call, usage: Mapping[str, Any]) -> int:
    """Input tokens served from the provider's prompt cache (0 when it says nothing)."""
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        return _count(call, details, "cached_tokens", "usage.prompt_tokens_details")
    if details is not None and not isinstance(details, dict):
        raise call.bad_response("usage.prompt_tokens_details is not an object")
    return _count(call, usage, "prompt_cache_hit_tokens")  # DeepSeek's name for it


def _usage(call: _Call, raw: object) -> TokenUsage:
    if not isinstance(raw, dict):
        raise call.bad_response("usage is not an object")
    prompt = _count(call, raw, "prompt_tokens")
    return TokenUsage(
        input_tokens=prompt,
        output_tokens=_count(call, raw, "completion_tokens"),
        # a cache cannot serve more than the prompt; a provider saying so is believed up to it
        cached_input_tokens=min(_cached(call, raw), prompt),
    )


def _parse_completion(call: _Call, body: bytes) -> ChatResult:
    obj = _json_object(call, body)
    if "error" in obj and "choices" not in obj:
        raise call.error(Unavailable, "the response reported an error", "PROVIDER_ERROR")
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise call.bad_response("no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise call.bad_response("no message in the first choice")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise call.bad_response("message content is not text")
    raw_usage = obj.get("usage")
    return ChatResult(
        text=content or "",
        usage=_usage(call, raw_usage) if raw_usage is not None else TokenUsage(),
        finish_reason=label(choices[0].get("finish_reason")),
        provider_model=label(obj.get("model")) or call.model,
        usage_reported=raw_usage is not None,
    )


def _stream_choice(call: _Call, obj: Mapping[str, Any]) -> tuple[str, str | None]:
    """The content delta and finish_reason of a chunk (usage-only chunks give ``""``)."""
    choices = obj.get("choices")
    if not isinstance(choices, list):
        raise call.bad_response("a chunk without choices")
    if not choices:
        return "", None
    choice = choices[0]
    if not isinstance(choice, dict):
        raise call.bad_response("a chunk choice that is not an object")
    delta = choice.get("delta") or {}
    if not isinstance(delta, dict):
        raise call.bad_response("a chunk delta that is not an object")
    content = delta.get("content")
    if content is not None and not isinstance(content, str):
        raise call.bad_response("a chunk delta content that is not text")
    return content or "", label(choice.get("finish_reason")) or None


_LABEL = re.compile(r"[^A-Za-z0-9._:/@+-]")
_DRIVE = re.compile(r"[A-Za-z]:[\\/]")  # C:\models\x.gguf
#: the longest provider-supplied label (model name, finish reason) we pass on
MAX_LABEL_CHARS = 64


def label(value: object) -> str:
    """A name the provider sent (its model, a finish reason), made safe to put on a span or
    in an answer: text only, the characters model names use, at most MAX_LABEL_CHARS; "" for
    anything else. A hostile provider cannot write into our traces or our clients' fields.
    A file path (llama.cpp's server names its model by the GGUF file it loaded) keeps only the
    file's name: the host's folders stay out of spans and answers."""
    if not isinstance(value, str):
        return ""
    if value.startswith(("/", "~", "./", "../")) or _DRIVE.match(value):
        value = value.replace("\\", "/").rsplit("/", 1)[-1]
    return _LABEL.sub("", value)[:MAX_LABEL_CHARS]


def _finish_span(
    span: Span, model: str, usage: TokenUsage, reported: bool, finish_reason: str
) -> None:
    span.set_attribute("gen_ai.response.model", model)
    if reported:
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if usage.cached_input_tokens:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cached_input_tokens)
    else:
        span.set_attribute("quorum.usage_reported", False)
    if finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])


#: the most characters of content (each of the messages and the answer) a span holds
MAX_CONTENT_CHARS = 16_000


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CONTENT_CHARS else text[:MAX_CONTENT_CHARS] + "…[clipped]"


def _answer_on(span: Span, text: str, finish_reason: str) -> None:
    """The answer as content attributes (the operator opted in)."""
    output = [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": text}],
            "finish_reason": finish_reason or "stop",
        }
    ]
    span.set_attribute("gen_ai.output.messages", _clip(json.dumps(output, ensure_ascii=False)))
    span.set_attribute("output.value", _clip(text))
    span.set_attribute("output.mime_type", "text/plain")


def _fail_span(span: Span, err: QuorumError) -> None:
    span.set_attribute("error.type", err.reason)
    if "http_status" in err.metadata:
        span.set_attribute("http.response.status_code", int(err.metadata["http_status"]))
    span.set_status(Status(StatusCode.ERROR, err.message))
    span.end()
