"""Adapter for the ``routed_chat`` ensemble as a router backend (``triton_outputs = "routed"``,
``triton/routed_chat``): one unary KServe v2 call (``ModelInfer``) per completion.

The caller owns one long-lived ``tritonclient.grpc.aio.InferenceServerClient`` per process and
passes it in (the router shares its one with the Triton chat models and the prompt classifier).

The request: ``TEXT``, the request's one user message (the ensemble takes one text: a request
with a system or assistant message, or with several user messages, is refused before any call,
InvalidArgument ``ROUTED_ONE_MESSAGE``); ``MODEL_SELECT`` -1, so the ensemble routes from the
prompt with its own ``[routing]`` rules; request parameters ``timeout_ms`` (the caller's time
less a margin: the ensemble gives up, and says why, before the caller stops waiting),
``max_tokens`` and ``temperature``. The contract is :mod:`quorum.localmodels.routedchat`'s.

The answer is a :class:`ChatResult`: ``ANSWER``; usage ``PROMPT_TOKENS`` and
``COMPLETION_TOKENS``, the counts of the provider that generated (both 0: the provider
reported none, and the router estimates them); ``routed``, a
:class:`Routed` of ``MODEL`` (the registry model that wrote the answer: the caller bills the
call as that model's), ``ROUTE_REASON`` and ``SIMULATED`` (the provider simulator answered).
The ensemble is not decoupled: :meth:`TritonRoutedChat.stream` yields the whole answer as one
delta, then a last chunk with the usage.

Errors are :mod:`quorum.errors`, with messages written here (Triton's text is never passed on):

    what happened                                 error
    the ensemble failed the request: its message  the class and reason the tag names, e.g.
    ends with ``[<class>:<REASON>]``              Unavailable PROVIDER_ERROR, DeadlineExceeded
                                                  PROVIDER_TIMEOUT, FailedPrecondition
                                                  MODEL_NOT_CONFIGURED (its model has no key)
    the caller's time ran out first               DeadlineExceeded PROVIDER_TIMEOUT: a provider
                                                  may have been called, so the call is billed
                                                  as an estimate, as a provider's timeout is
    Triton is down or unreachable                 Unavailable TRITON_UNAVAILABLE
    routed_chat is not loaded                     Unavailable MODEL_NOT_READY
    an answer without the outputs above           Internal TRITON_BAD_RESPONSE
    anything else                                 Internal TRITON_ERROR

Each call is one OpenTelemetry CLIENT span ``chat <registry name>`` with the GenAI attributes
(``gen_ai.provider.name`` ``triton``, ``gen_ai.response.model`` the model that generated); its
W3C context travels in the gRPC metadata, so Triton's own spans continue the trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

import numpy as np
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from quorum.backends.triton import map_infer_error
from quorum.backends.types import ChatChunk, ChatRequest, ChatResult, Routed, TokenUsage
from quorum.errors import DeadlineExceeded, Internal, InvalidArgument, QuorumError
from quorum.localmodels.routedchat import (
    OUTPUTS,
    PARAM_MAX_TOKENS,
    PARAM_TEMPERATURE,
    PARAM_TIMEOUT_MS,
    SELECT_AUTO,
    parse_error_tag,
)
from quorum.registry import TritonBackend

__all__ = ["TritonRoutedChat", "parse_answer", "prompt_text", "routed_error", "timeout_ms"]

#: the share of the caller's time kept back from the ensemble (at most MAX_MARGIN_S), so its
#: own deadline passes first and its answer (an error saying why) still reaches the caller
MARGIN_SHARE = 0.1
MAX_MARGIN_S = 0.25


class TritonRoutedChat:
    """Completions by the ``routed_chat`` ensemble. ``tracer_provider`` is optional (default:
    the global one), so tests can trace without touching global state."""

    def __init__(
        self, client: InferenceServerClient, *, tracer_provider: TracerProvider | None = None
    ) -> None:
        self._client = client
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    async def complete(
        self, backend: TritonBackend, request: ChatRequest, *, timeout_s: float
    ) -> ChatResult:
        """The ensemble's answer, within ``timeout_s``; raises :mod:`quorum.errors` (see the
        module docstring)."""
        model = backend.triton_model
        text = prompt_text(request, model)  # before any call
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "triton",
            "gen_ai.request.model": model,
            "quorum.model": backend.model or model,
        }
        if request.max_tokens is not None:
            attrs["gen_ai.request.max_tokens"] = request.max_tokens
        with self._tracer.start_as_current_span(
            f"chat {backend.model or model}",
            kind=SpanKind.CLIENT,
            attributes=attrs,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await self._infer(model, text, request, timeout_s)
            except QuorumError as err:
                span.set_attribute("error.type", err.reason)
                span.set_status(Status(StatusCode.ERROR, err.message))
                raise
            assert result.routed is not None
            span.set_attribute("gen_ai.response.model", result.routed.model)
            span.set_attribute("gen_ai.usage.input_tokens", result.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", result.usage.output_tokens)
            span.set_attribute("quorum.simulated", result.routed.simulated)
            return result

    def stream(
        self, backend: TritonBackend, request: ChatRequest, *, timeout_s: float
    ) -> AsyncGenerator[ChatChunk, None]:
        """The whole answer as one chunk (the ensemble is not decoupled), then a last chunk
        (``delta == ""``) with the usage and the chosen model."""
        return self._stream(backend, request, timeout_s)

    async def _stream(
        self, backend: TritonBackend, request: ChatRequest, timeout_s: float
    ) -> AsyncGenerator[ChatChunk, None]:
        result = await self.complete(backend, request, timeout_s=timeout_s)
        if result.text:
            yield ChatChunk(delta=result.text)
        yield ChatChunk(usage=result.usage, finish_reason="", routed=result.routed)

    async def _infer(
        self, model: str, text: str, request: ChatRequest, timeout_s: float
    ) -> ChatResult:
        if not timeout_s > 0:
            raise _out_of_time(model, timeout_s)
        inputs = [
            _tensor("TEXT", np.array([[text.encode("utf-8")]], dtype=np.object_), "BYTES"),
            _tensor("MODEL_SELECT", np.array([[SELECT_AUTO]], dtype=np.int32), "INT32"),
        ]
        parameters: dict[str, int | float] = {PARAM_TIMEOUT_MS: timeout_ms(timeout_s)}
        if request.max_tokens:
            parameters[PARAM_MAX_TOKENS] = request.max_tokens
        if request.temperature is not None:
            parameters[PARAM_TEMPERATURE] = request.temperature
        metadata: dict[str, str] = {}
        propagate.inject(metadata)
        try:
            # the gRPC deadline, and an asyncio one around it (a hung channel)
            async with asyncio.timeout(timeout_s):
                result = await self._client.infer(
                    model_name=model,
                    inputs=inputs,
                    outputs=[InferRequestedOutput(name) for name in OUTPUTS],
                    client_timeout=timeout_s,
                    headers=metadata,
                    parameters=parameters,
                )
        except TimeoutError:
            raise _out_of_time(model, timeout_s) from None
        except InferenceServerException as exc:
            raise routed_error(exc, model, timeout_s) from None
        return parse_answer(result.as_numpy, model)


def prompt_text(request: ChatRequest, model: str) -> str:
    """The one user message the ensemble takes; InvalidArgument (ROUTED_ONE_MESSAGE) for a
    request of any other shape."""
    messages = request.messages
    if len(messages) != 1 or messages[0].role != "user":
        raise InvalidArgument(
            f"Triton model {model!r} takes one user message (no system or assistant messages); "
            f"this request has {len(messages)} messages",
            reason="ROUTED_ONE_MESSAGE",
            metadata={"model": model[:100], "field": "messages"},
        )
    return messages[0].content


def timeout_ms(timeout_s: float) -> int:
    """The ``timeout_ms`` parameter for a caller with ``timeout_s`` left: that time less a
    margin (:data:`MARGIN_SHARE`, at most :data:`MAX_MARGIN_S`), at least 1 ms."""
    margin = min(MAX_MARGIN_S, timeout_s * MARGIN_SHARE)
    return max(int((timeout_s - margin) * 1000), 1)


def routed_error(exc: BaseException, model: str, timeout_s: float) -> QuorumError:
    """The error of a failed call of the ensemble ``model`` (see the module docstring)."""
    meta = {"model": model[:100]}
    if isinstance(exc, InferenceServerException):
        tag = parse_error_tag(str(exc.message() or ""))
        if tag is not None:
            cls, reason = tag
            return cls(f"Triton model {model!r} failed ({reason})", reason=reason, metadata=meta)
        if str(exc.status() or "").endswith("DEADLINE_EXCEEDED"):
            return _out_of_time(model, timeout_s)
    return map_infer_error(exc, model, timeout_s)


def _out_of_time(model: str, timeout_s: float) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"Triton model {model!r} did not answer within {timeout_s:g}s",
        reason="PROVIDER_TIMEOUT",
        metadata={"model": model[:100]},
    )


def parse_answer(output: Callable[[str], Any], model: str) -> ChatResult:
    """The ensemble's answer from ``output`` (an output's name -> its array, or None; e.g.
    ``InferResult.as_numpy``); Internal (TRITON_BAD_RESPONSE) when one is missing or
    malformed."""

    def one(name: str) -> Any:
        value = output(name)
        if value is None or np.size(value) != 1:
            raise _bad_response(model, name)
        return np.asarray(value).reshape(-1)[0]

    def text(name: str) -> str:
        raw = one(name)
        if not isinstance(raw, bytes):
            raise _bad_response(model, name)
        return raw.decode("utf-8", errors="replace")

    def count(name: str) -> int:
        raw = one(name)
        if not isinstance(raw, np.integer) or raw < 0:
            raise _bad_response(model, name)
        return int(raw)

    chosen = text("MODEL")
    simulated = one("SIMULATED")
    if not chosen or not isinstance(simulated, np.bool_ | bool):
        raise _bad_response(model, "MODEL" if not chosen else "SIMULATED")
    usage = TokenUsage(count("PROMPT_TOKENS"), count("COMPLETION_TOKENS"))
    return ChatResult(
        text=text("ANSWER"),
        usage=usage,
        provider_model=chosen,
        # no counts at all: the provider sent no usage (a real call always has input), so the
        # router counts the tokens itself and marks the record estimated
        usage_reported=usage.input_tokens + usage.output_tokens > 0,
        routed=Routed(chosen, text("ROUTE_REASON"), bool(simulated)),
    )


def _bad_response(model: str, output: str) -> Internal:
    return Internal(
        f"Triton model {model!r} sent a malformed or missing {output}",
        reason="TRITON_BAD_RESPONSE",
        metadata={"model": model[:100], "output": output},
    )


def _tensor(name: str, value: np.ndarray[Any, Any], dtype: str) -> InferInput:
    tensor = InferInput(name, list(value.shape), dtype)
    tensor.set_data_from_numpy(value)
    return tensor
