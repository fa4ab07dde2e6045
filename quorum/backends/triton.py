"""Adapter for classifier models served by Triton (KServe v2 over gRPC).

The caller owns one long-lived ``tritonclient.grpc.aio.InferenceServerClient`` per process
and passes it in. Models take ``TEXT`` (BYTES, ``[n, 1]``, UTF-8) and return FP32 ``[n, 1]``
scores: either one ``SCORE`` (:meth:`TritonScorer.score`, e.g. ``triton/profanity_check``) or
one ``SCORE_<CATEGORY>`` per category they judge (:meth:`TritonScorer.score_categories`, e.g.
``triton/text_heads``); a caller asks only for the outputs it needs.

Errors are :mod:`quorum.errors`, with messages written here (Triton's own text is never
passed on):

    DeadlineExceeded   the call ran past ``timeout_s``                reason TRITON_DEADLINE
    Unavailable        Triton is down or unreachable                  reason TRITON_UNAVAILABLE
    Unavailable        the model is unknown, loading or failed        reason MODEL_NOT_READY
    Internal           anything else (a bad answer, a bad request)    reason TRITON_ERROR

Each call is one OpenTelemetry client span, and its W3C context travels in the gRPC metadata,
so Triton's own spans (``--trace-config mode=opentelemetry``) continue the caller's trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from quorum.errors import DeadlineExceeded, Internal, InvalidArgument, QuorumError, Unavailable

__all__ = ["TritonScorer", "category_output", "map_infer_error"]

INPUT_NAME = "TEXT"
OUTPUT_NAME = "SCORE"


def category_output(category: str) -> str:
    """The name of a per-category output: ``self_harm`` -> ``SCORE_SELF_HARM``."""
    return f"{OUTPUT_NAME}_{category.upper()}"


# Phrases in Triton's messages that mean "this model cannot serve now" rather than "the
# server is down"; used only to choose the reason, never shown.
_MODEL_STATE_HINTS = ("unknown model", "not found", "not ready", "is not available")


def map_infer_error(exc: BaseException, model: str, timeout_s: float) -> QuorumError:
    """The error of a failed unary call of Triton ``model`` (see the module docstring)."""
    meta = {"model": model[:100]}
    if isinstance(exc, QuorumError):
        return exc
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        text = str(exc.message() or "").lower()
        if status.endswith("DEADLINE_EXCEEDED"):
            return DeadlineExceeded(
                f"Triton model {model!r} did not answer within {timeout_s:g}s",
                reason="TRITON_DEADLINE",
                metadata=meta,
            )
        if status.endswith("NOT_FOUND") or (
            status.endswith("UNAVAILABLE") and any(h in text for h in _MODEL_STATE_HINTS)
        ):
            return Unavailable(
                f"Triton model {model!r} is not ready", reason="MODEL_NOT_READY", metadata=meta
            )
        if status.endswith("UNAVAILABLE"):
            return Unavailable("Triton is unavailable", reason="TRITON_UNAVAILABLE", metadata=meta)
        return Internal(
            f"Triton model {model!r} failed ({status.removeprefix('StatusCode.') or 'error'})",
            reason="TRITON_ERROR",
            metadata=meta,
        )
    return Internal(f"Triton model {model!r} call failed", reason="TRITON_ERROR", metadata=meta)


class TritonScorer:
    """Scores texts with a Triton ``TEXT -> SCORE`` model.

    Batches larger than ``max_batch_size`` (the model's ``max_batch_size``) are split into
    concurrent requests; Triton's dynamic batcher merges them again on the server.
    """

    def __init__(
        self,
        client: InferenceServerClient,
        *,
        max_batch_size: int = 64,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._client = client
        self._max_batch_size = max_batch_size
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    async def score(
        self,
        model: str,
        texts: Sequence[str],
        *,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> list[float]:
        """One score (output ``SCORE``) per text, in order. Raises quorum.errors (see the
        module docstring).

        ``headers`` go to Triton as gRPC metadata. The span's parent is the current
        OpenTelemetry context or, when ``headers`` carry a ``traceparent``, that one.
        """
        columns = await self._score(model, texts, (OUTPUT_NAME,), timeout_s, headers)
        return columns[0]

    async def score_categories(
        self,
        model: str,
        texts: Sequence[str],
        categories: Sequence[str],
        *,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> list[dict[str, float]]:
        """Per text, in order, its score in each of ``categories`` (outputs
        ``SCORE_<CATEGORY>``, all from one inference). Errors and tracing as :meth:`score`; a
        model without one of those outputs is Internal (reason TRITON_ERROR)."""
        if isinstance(categories, str) or not categories:
            raise InvalidArgument("categories must be a non-empty sequence of names")
        outputs = tuple(category_output(c) for c in categories)
        columns = await self._score(model, texts, outputs, timeout_s, headers)
        return [dict(zip(categories, row, strict=True)) for row in zip(*columns, strict=True)]

    async def _score(
        self,
        model: str,
        texts: Sequence[str],
        outputs: tuple[str, ...],
        timeout_s: float,
        headers: Mapping[str, str] | None,
    ) -> list[list[float]]:
        """One list of scores per output, each in text order."""
        if isinstance(texts, str) or any(not isinstance(t, str) for t in texts):
            raise InvalidArgument("texts must be a sequence of strings")
        if not timeout_s > 0:
            raise DeadlineExceeded("no time left to call Triton", reason="TRITON_DEADLINE")
        attributes = {
            "gen_ai.operation.name": "classify",
            "gen_ai.provider.name": "triton",
            "gen_ai.request.model": model,
        }
        parent = propagate.extract(headers) if headers and "traceparent" in headers else None
        with self._tracer.start_as_current_span(
            f"triton infer {model}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            if not texts:
                return [[] for _ in outputs]
            metadata = dict(headers or {})
            propagate.inject(metadata)  # after the caller's: Triton continues *this* span
            chunks = [
                texts[i : i + self._max_batch_size]
                for i in range(0, len(texts), self._max_batch_size)
            ]
            try:
                if len(chunks) == 1:
                    return await self._infer(model, chunks[0], outputs, timeout_s, metadata)
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(self._infer(model, c, outputs, timeout_s, metadata))
                        for c in chunks
                    ]
                return [[s for t in tasks for s in t.result()[i]] for i in range(len(outputs))]
            except Exception as exc:
                err = map_infer_error(_first(exc), model, timeout_s)
                span.set_attribute("error.type", err.reason)
                span.set_status(Status(StatusCode.ERROR, err.message))
                raise err from None

    async def _infer(
        self,
        model: str,
        texts: Sequence[str],
        outputs: tuple[str, ...],
        timeout_s: float,
        metadata: Mapping[str, str],
    ) -> list[list[float]]:
        data = np.empty((len(texts), 1), dtype=object)
        data[:, 0] = [t.encode("utf-8") for t in texts]
        tensor = InferInput(INPUT_NAME, list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        result = await self._client.infer(
            model_name=model,
            inputs=[tensor],
            outputs=[InferRequestedOutput(name) for name in outputs],
            client_timeout=timeout_s,
            headers=dict(metadata),
        )
        columns = []
        for name in outputs:
            scores: Any = result.as_numpy(name)
            if scores is None or scores.size != len(texts):
                raise Internal(
                    f"Triton model {model!r} returned a malformed {name}",
                    reason="TRITON_BAD_RESPONSE",
                    metadata={"model": model[:100]},
                )
            columns.append([float(s) for s in np.asarray(scores, dtype=np.float32).reshape(-1)])
        return columns

    async def is_ready(self, model: str, *, timeout_s: float) -> bool:
        """Whether ``model`` is loaded and ready; False on any error (never raises)."""
        if not timeout_s > 0:
            return False
        try:
            return bool(await self._client.is_model_ready(model, client_timeout=timeout_s))
        except Exception:
            return False


def _first(exc: Exception) -> Exception:
    """``exc`` itself, or the first leaf of a (possibly nested) exception group."""
    while isinstance(exc, ExceptionGroup):
        exc = exc.exceptions[0]
    return exc
