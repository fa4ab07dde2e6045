"""Adapter for chat models served by Triton as decoupled (streaming) models (KServe v2 gRPC
streaming, ``ModelStreamInfer``), e.g. ``triton/smollm2``.

The caller owns one long-lived ``tritonclient.grpc.aio.InferenceServerClient`` per process and
passes it in. The model takes ``MESSAGES`` (the chat as JSON), ``MAX_TOKENS`` and, when the
request sets one, ``TEMPERATURE``; it answers with one response per ``TEXT`` delta and a last
one holding ``PROMPT_TOKENS``, ``COMPLETION_TOKENS`` and ``FINISH_REASON``
(:mod:`quorum.localmodels.chatserving`). Usage is those counts: the model's own, exact.

:meth:`TritonChat.stream` yields the deltas as they come and a last chunk with the usage;
:meth:`TritonChat.complete` collects the same stream. Both are bounded by ``timeout_s``
overall (the gRPC stream's deadline, and an asyncio timeout around it); a stream closed
early cancels the call, and Triton stops generating at the next token.

Errors are :mod:`quorum.errors`, with messages written here (Triton's text is never passed on):

    DeadlineExceeded   not finished within ``timeout_s``               reason TRITON_DEADLINE
    Unavailable        Triton is down or unreachable                   reason TRITON_UNAVAILABLE
    Unavailable        the model is unknown, loading or failed         reason MODEL_NOT_READY
    InvalidArgument    the model refused the request (e.g. a prompt    the model's reason, e.g.
                       longer than its context window)                 PROMPT_TOO_LONG
    Unavailable        the stream ended without its final response     reason STREAM_INTERRUPTED
    Internal           anything else                                   reason TRITON_ERROR

Each call is one OpenTelemetry CLIENT span ``chat <triton_model>`` with the GenAI attributes
(``gen_ai.provider.name`` ``triton``); its W3C context travels in the gRPC metadata, so
Triton's own spans continue the trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import numpy as np
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from quorum.backends.types import ChatChunk, ChatRequest, ChatResult, TokenUsage
from quorum.errors import DeadlineExceeded, Internal, InvalidArgument, QuorumError, Unavailable
from quorum.registry import TritonBackend

__all__ = ["TritonChat"]

OUTPUTS = ("TEXT", "PROMPT_TOKENS", "COMPLETION_TOKENS", "FINISH_REASON")
#: the reasons a chat model gives (as "REASON: text") for a request it refuses
_REFUSALS = frozenset(
    {"BAD_MESSAGES", "MESSAGES_TOO_LONG", "PROMPT_TOO_LONG", "BAD_MAX_TOKENS",
     "BAD_TEMPERATURE", "MISSING_INPUT", "BAD_INPUT"}
)  # fmt: skip
_REASON = re.compile(r"^([A-Z][A-Z_]{2,40}):")
# Phrases in Triton's messages that mean "this model cannot serve now" (used only to choose
# the reason, never shown)
_MODEL_STATE_HINTS = ("unknown model", "not found", "not ready", "is not available")
_FINISH_REASONS = frozenset({"stop", "length", "cancelled"})


class TritonChat:
    """Chat completions against decoupled Triton chat models (``triton_outputs = "chat"``).

    ``tracer_provider`` is optional (default: the global one), so tests can trace without
    touching global state."""

    def __init__(
        self, client: InferenceServerClient, *, tracer_provider: TracerProvider | None = None
    ) -> None:
        self._client = client
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    async def complete(
        self, backend: TritonBackend, request: ChatRequest, *, timeout_s: float
    ) -> ChatResult:
        """The whole answer (the stream collected), bounded by ``timeout_s`` overall."""
        parts: list[str] = []
        last = ChatChunk()
        async with contextlib.aclosing(self.stream(backend, request, timeout_s=timeout_s)) as s:
            async for chunk in s:
                if chunk.delta:
                    parts.append(chunk.delta)
                if chunk.usage is not None:
                    last = chunk
        return ChatResult(
            text="".join(parts),
            usage=last.usage or TokenUsage(),
            finish_reason=last.finish_reason or "",
            provider_model=backend.triton_model,
        )

    def stream(
        self, backend: TritonBackend, request: ChatRequest, *, timeout_s: float
    ) -> AsyncGenerator[ChatChunk, None]:
        """A chunk per text delta, then a last chunk (``delta == ""``) with the model's usage
        and finish_reason. Close it (``aclose()``) when stopping early: the call is cancelled."""
        return self._stream(backend, request, timeout_s)

    async def _stream(
        self, backend: TritonBackend, request: ChatRequest, timeout_s: float
    ) -> AsyncGenerator[ChatChunk, None]:
        model = backend.triton_model
        span = self._start_span(model, backend.model or model, request)
        responses: Any = None
        try:
            if not timeout_s > 0:
                raise DeadlineExceeded(
                    "no time left to call Triton", reason="TRITON_DEADLINE", metadata=_meta(model)
                )
            metadata: dict[str, str] = {}
            propagate.inject(metadata, context=trace.set_span_in_context(span))
            deadline = asyncio.get_running_loop().time() + timeout_s
            responses = self._client.stream_infer(
                _one(_infer_request(model, request)), stream_timeout=timeout_s, headers=metadata
            )
            while True:
                try:
                    # bounded per wait, never across a yield (the consumer's time is its own)
                    async with asyncio.timeout_at(deadline):
                        result, error = await anext(responses)
                except StopAsyncIteration:
                    break
                except (InferenceServerException, grpc.aio.AioRpcError) as exc:
                    raise _map_error(exc, model, timeout_s) from None
                if error is not None:
                    raise _stream_error(error, model)
                chunk = _chunk(result, model)
                if chunk.usage is not None:
                    _finish_span(span, model, chunk)
                    span.end()
                    yield chunk
                    return
                if chunk.delta:
                    yield chunk
            raise Unavailable(
                f"Triton model {model!r} ended its stream without its final response",
                reason="STREAM_INTERRUPTED",
                metadata=_meta(model),
            )
        except TimeoutError:
            err = DeadlineExceeded(
                f"Triton model {model!r} did not finish within {timeout_s:g}s",
                reason="TRITON_DEADLINE",
                metadata=_meta(model),
            )
            _fail_span(span, err)
            raise err from None
        except QuorumError as err:
            _fail_span(span, err)
            raise
        finally:
            if responses is not None:
                responses.cancel()  # a no-op once the call is over
            if span.is_recording():
                span.end()

    def _start_span(self, model: str, name: str, request: ChatRequest) -> Span:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "triton",
            "gen_ai.request.model": model,
        }
        if request.max_tokens is not None:
            attrs["gen_ai.request.max_tokens"] = request.max_tokens
        if request.temperature is not None:
            attrs["gen_ai.request.temperature"] = request.temperature
        attrs["quorum.model"] = name  # the registry's name; gen_ai.request.model is Triton's
        return self._tracer.start_span(f"chat {name}", kind=SpanKind.CLIENT, attributes=attrs)


async def _one(item: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield item


def _tensor(name: str, value: np.ndarray[Any, Any], dtype: str) -> InferInput:
    tensor = InferInput(name, list(value.shape), dtype)
    tensor.set_data_from_numpy(value)
    return tensor


def _infer_request(model: str, request: ChatRequest) -> dict[str, Any]:
    messages = json.dumps(
        [{"role": m.role, "content": m.content} for m in request.messages], ensure_ascii=False
    )
    inputs = [
        _tensor("MESSAGES", np.array([messages.encode("utf-8")], dtype=np.object_), "BYTES"),
        _tensor("MAX_TOKENS", np.array([request.max_tokens or 0], dtype=np.int32), "INT32"),
    ]
    if request.temperature is not None:
        inputs.append(
            _tensor("TEMPERATURE", np.array([request.temperature], dtype=np.float32), "FP32")
        )
    return {
        "model_name": model,
        "inputs": inputs,
        "outputs": [InferRequestedOutput(name) for name in OUTPUTS],
    }


def _chunk(result: Any, model: str) -> ChatChunk:
    """One response as a chunk: a delta, or (with the token counts) the last chunk."""
    text = result.as_numpy("TEXT")
    delta = ""
    if text is not None and text.size:
        raw = text.reshape(-1)[0]
        delta = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    prompt = result.as_numpy("PROMPT_TOKENS")
    completion = result.as_numpy("COMPLETION_TOKENS")
    if prompt is None and completion is None:
        return ChatChunk(delta=delta)
    if prompt is None or completion is None or prompt.size != 1 or completion.size != 1:
        raise Internal(
            f"Triton model {model!r} sent malformed token counts",
            reason="TRITON_BAD_RESPONSE",
            metadata=_meta(model),
        )
    finish = result.as_numpy("FINISH_REASON")
    reason = ""
    if finish is not None and finish.size:
        raw = finish.reshape(-1)[0]
        reason = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    return ChatChunk(
        delta=delta,
        usage=TokenUsage(int(prompt.reshape(-1)[0]), int(completion.reshape(-1)[0])),
        finish_reason=reason if reason in _FINISH_REASONS else "",
        extra={"provider_model": model},
    )


def _meta(model: str) -> dict[str, str]:
    return {"model": model[:100]}


def _stream_error(error: InferenceServerException, model: str) -> QuorumError:
    """An error response in the stream (its status is not sent; the text says what)."""
    text = str(error.message() or "")
    m = _REASON.match(text)
    if m and m.group(1) in _REFUSALS:
        return InvalidArgument(
            f"Triton model {model!r} refused the request ({m.group(1)})",
            reason=m.group(1),
            metadata=_meta(model),
        )
    if any(h in text.lower() for h in _MODEL_STATE_HINTS):
        return Unavailable(
            f"Triton model {model!r} is not ready", reason="MODEL_NOT_READY", metadata=_meta(model)
        )
    return Internal(f"Triton model {model!r} failed", reason="TRITON_ERROR", metadata=_meta(model))


def _map_error(exc: BaseException, model: str, timeout_s: float) -> QuorumError:
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(
                f"Triton model {model!r} did not finish within {timeout_s:g}s",
                reason="TRITON_DEADLINE",
                metadata=_meta(model),
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(
                "Triton is unavailable", reason="TRITON_UNAVAILABLE", metadata=_meta(model)
            )
        return Internal(
            f"Triton model {model!r} failed ({code.name})",
            reason="TRITON_ERROR",
            metadata=_meta(model),
        )
    if isinstance(exc, InferenceServerException):
        return _stream_error(exc, model)
    return Internal(f"Triton model {model!r} call failed", reason="TRITON_ERROR")


def _finish_span(span: Span, model: str, last: ChatChunk) -> None:
    span.set_attribute("gen_ai.response.model", model)
    if last.usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", last.usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", last.usage.output_tokens)
    if last.finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [last.finish_reason])


def _fail_span(span: Span, err: QuorumError) -> None:
    span.set_attribute("error.type", err.reason)
    span.set_status(Status(StatusCode.ERROR, err.message))
    span.end()
