"""The CostService servicer: proto in, validation, one ledger call, proto out.

Pricing is :func:`quorum.pricing.cost_of`; storage is the :class:`~services.cost.ledger.Ledger`.
Every failure is a :mod:`quorum.errors` exception that ``map_errors`` turns into a status
with a ``google.rpc.ErrorInfo``; bad fields use reason ``INVALID_FIELD`` with the field's
name in the message and in ``metadata["field"]``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from opentelemetry import trace

from quorum.backends.types import TokenUsage
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.deadline import Deadline
from quorum.errors import DeadlineExceeded, InvalidArgument
from quorum.grpcerrors import map_errors
from quorum.pricing import cost_of, micros_per_mtok
from quorum.registry import Registry
from services.cost.ledger import Ledger, Summary, UsageRecord, now_us

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_REQUEST_ID_CHARS = 128
MAX_MODEL_CHARS = 128
MAX_SOURCE_CHARS = 64
MAX_TOKENS = 10_000_000
#: time given to one ledger call when the client set no deadline, and the most it gets
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 30.0

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def invalid(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {problem}", reason="INVALID_FIELD", metadata={"field": field})


def _text(value: str, field: str, limit: int, *, required: bool) -> str:
    if not value:
        if required:
            raise invalid(field, "is required")
        return value
    if len(value) > limit:
        raise invalid(field, f"must be at most {limit} characters, got {len(value)}")
    if not value.isprintable():
        raise invalid(field, "must contain printable characters only")
    return value


def _tokens(value: int, field: str) -> int:
    if not 0 <= value <= MAX_TOKENS:
        raise invalid(field, f"must be between 0 and {MAX_TOKENS}, got {value}")
    return value


class Timestamp(Protocol):
    """What we read of a ``google.protobuf.Timestamp``."""

    seconds: int
    nanos: int


def timestamp_us(ts: Timestamp, field: str) -> int:
    """A Timestamp as microseconds since the epoch (sub-microsecond nanos are dropped)."""
    if not _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        raise invalid(field, "is not a valid timestamp")
    return int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1000


def _money(micros: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(micros=micros, currency=currency)


def _summary_response(summary: Summary) -> cost_pb2.GetUsageSummaryResponse:
    return cost_pb2.GetUsageSummaryResponse(
        models=[
            cost_pb2.ModelUsage(
                model=g.model,
                requests=g.requests,
                usage=common_pb2.Usage(input_tokens=g.input_tokens, output_tokens=g.output_tokens),
                cost=_money(g.cost_micros, g.currency),
            )
            for g in summary.models
        ],
        requests=summary.requests,
        usage=common_pb2.Usage(
            input_tokens=summary.input_tokens, output_tokens=summary.output_tokens
        ),
        totals=[_money(t.micros, t.currency) for t in summary.totals],
    )


async def _within_deadline(context: grpc.aio.ServicerContext[Any, Any], call: Awaitable[T]) -> T:
    """``call`` bounded by the client's deadline (clamped), or by the default without one."""
    deadline = Deadline.from_grpc(
        context.time_remaining(), default_s=DEFAULT_TIMEOUT_S, max_s=MAX_TIMEOUT_S
    )
    try:
        return await asyncio.wait_for(call, timeout=deadline.timeout())
    except TimeoutError:
        raise DeadlineExceeded(
            "the usage ledger did not answer in time", reason="DEADLINE_EXCEEDED"
        ) from None


class CostServicer(cost_pb2_grpc.CostServiceServicer):
    def __init__(
        self, registry: Registry, ledger: Ledger, *, clock: Callable[[], int] = now_us
    ) -> None:
        self._registry = registry
        self._ledger = ledger
        self._clock = clock

    @map_errors
    async def RecordUsage(
        self, request: cost_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.RecordUsageResponse:
        request_id = _text(request.request_id, "request_id", MAX_REQUEST_ID_CHARS, required=True)
        name = _text(request.model, "model", MAX_MODEL_CHARS, required=True)
        source = _text(request.source, "source", MAX_SOURCE_CHARS, required=False)
        if not request.HasField("usage"):
            raise invalid("usage", "is required")
        usage = TokenUsage(
            input_tokens=_tokens(request.usage.input_tokens, "usage.input_tokens"),
            output_tokens=_tokens(request.usage.output_tokens, "usage.output_tokens"),
        )
        occurred_at = (
            timestamp_us(request.occurred_at, "occurred_at")
            if request.HasField("occurred_at")
            else self._clock()
        )
        spec = self._registry.get(name)  # NotFound (MODEL_NOT_FOUND)
        cost = cost_of(spec.price, usage)
        recorded = await _within_deadline(
            context,
            self._ledger.record(
                UsageRecord(
                    request_id=request_id,
                    model=spec.name,
                    source=source,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cost_micros=cost.micros,
                    currency=cost.currency,
                    occurred_at_us=occurred_at,
                )
            ),
        )
        stored = recorded.record
        span = trace.get_current_span()
        span.set_attributes(
            {
                "gen_ai.request.model": stored.model,
                "gen_ai.usage.input_tokens": stored.input_tokens,
                "gen_ai.usage.output_tokens": stored.output_tokens,
                "quorum.cost.micros": stored.cost_micros,
                "quorum.cost.currency": stored.currency,
                "quorum.usage.duplicate": recorded.duplicate,
            }
        )
        if recorded.duplicate:
            log.info("duplicate usage record for request id %r ignored", request_id)
        return cost_pb2.RecordUsageResponse(
            cost=_money(stored.cost_micros, stored.currency), duplicate=recorded.duplicate
        )

    @map_errors
    async def GetUsageSummary(
        self, request: cost_pb2.GetUsageSummaryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.GetUsageSummaryResponse:
        start = (
            timestamp_us(request.start_time, "start_time")
            if request.HasField("start_time")
            else None
        )
        if request.HasField("end_time"):
            end = timestamp_us(request.end_time, "end_time")
            if start is not None and end < start:
                raise invalid("end_time", "must not be before start_time")
        else:
            end = self._clock()
        # a model the registry does not know (any more) is a filter like any other: the
        # ledger answers with its records, which for a name never used is nothing
        model = _text(request.model, "model", MAX_MODEL_CHARS, required=False) or None
        if model is not None:
            trace.get_current_span().set_attribute("gen_ai.request.model", model)
        summary = await _within_deadline(
            context, self._ledger.summary(start_us=start, end_us=end, model=model)
        )
        return _summary_response(summary)

    @map_errors
    async def ListPrices(
        self, request: cost_pb2.ListPricesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.ListPricesResponse:
        return cost_pb2.ListPricesResponse(
            prices=[
                cost_pb2.Price(
                    model=name,
                    input_micros_per_mtok=micros_per_mtok(spec.price.input_per_mtok),
                    output_micros_per_mtok=micros_per_mtok(spec.price.output_per_mtok),
                    currency=spec.price.currency,
                )
                for name, spec in sorted(self._registry.models.items())
            ]
        )
