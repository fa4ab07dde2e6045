"""The CostService servicer: proto in, validation, one domain call, proto out.
``RecordUsageBatch`` does the same per record: a record that fails validation, pricing or
recording gets its own ``google.rpc.Status`` in the answer, and the others are recorded.

The domain is :class:`~services.cost.spending.Spending` (recording, budgets, reports) with
pricing and the price table in :mod:`services.cost.prices`; storage is the
:class:`~services.cost.ledger.Ledger` under it.
Every failure is a :mod:`quorum.errors` exception that ``map_errors`` turns into a status
with a ``google.rpc.ErrorInfo``; bad fields use reason ``INVALID_FIELD`` with the field's
name in the message and in ``metadata["field"]``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from opentelemetry import trace

from quorum import auth, money
from quorum.auth import Role
from quorum.backends.types import TokenUsage
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.deadline import Deadline
from quorum.errors import DeadlineExceeded, InvalidArgument, QuorumError
from quorum.grpcerrors import map_errors, map_stream_errors, rpc_status_of
from quorum.ids import tenant as _tenant
from quorum.pricing import Billing, Cost, Price, micros_per_mtok
from quorum.registry import Registry
from quorum.usage import MAX_BATCH_RECORDS
from services.cost import prices, reports
from services.cost.budgets import Budget, Status
from services.cost.ledger import Ledger, ModelTotals, Recorded, Summary, now_us
from services.cost.spending import DEFAULT_TTL_US, MAX_TTL_US, Call, Spending, Tenants

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


_GROUPINGS = {
    cost_pb2.REPORT_GROUPING_UNSPECIFIED: "model",
    cost_pb2.REPORT_GROUPING_MODEL: "model",
    cost_pb2.REPORT_GROUPING_TENANT: "tenant",
    cost_pb2.REPORT_GROUPING_DAY: "day",
    cost_pb2.REPORT_GROUPING_MONTH: "month",
}


class TimeRange(Protocol):
    """A request with an optional ``[start_time, end_time)``."""

    start_time: Any
    end_time: Any

    def HasField(self, field_name: str) -> bool: ...  # protobuf's name


def _usage(request: cost_pb2.RecordUsageRequest | cost_pb2.EstimateCostRequest) -> TokenUsage:
    if not request.HasField("usage"):
        raise invalid("usage", "is required")
    u = request.usage
    usage = TokenUsage(
        input_tokens=_tokens(u.input_tokens, "usage.input_tokens"),
        output_tokens=_tokens(u.output_tokens, "usage.output_tokens"),
        cached_input_tokens=_tokens(u.cached_input_tokens, "usage.cached_input_tokens"),
    )
    if usage.cached_input_tokens > usage.input_tokens:
        raise invalid(
            "usage.cached_input_tokens",
            f"must not exceed usage.input_tokens ({usage.input_tokens}), "
            f"got {usage.cached_input_tokens}",
        )
    return usage


def _currency(value: str, field: str) -> str:
    if not money.is_currency(value):
        raise invalid(field, f"must be an ISO 4217 code such as USD, got {value[:10]!r}")
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


def _cost(cost: Cost) -> common_pb2.Money:
    return _money(cost.micros, cost.currency)


def _ts(at_us: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=at_us // 1_000_000, nanos=at_us % 1_000_000 * 1000)


def _price(model: str, price: Price, billing: Billing | None, at_us: int) -> cost_pb2.Price:
    """``price`` as the API shows it; a provider's own billing rate is the one in effect at
    ``at_us`` (the registry makes sure one is whenever a price is)."""
    out = cost_pb2.Price(
        model=model,
        input_micros_per_mtok=micros_per_mtok(price.input_per_mtok),
        output_micros_per_mtok=micros_per_mtok(price.output_per_mtok),
        currency=price.currency,
        cached_input_micros_per_mtok=micros_per_mtok(price.cached_input),
    )
    if price.effective_from_us is not None:
        out.effective_from.CopyFrom(_ts(price.effective_from_us))
    if billing is not None and billing.currency != price.currency:
        out.billing_currency = billing.currency
        if billing.rates is not None:
            rate = billing.rates.rate(price.currency, billing.currency, at_us)
            out.billing_rate = _decimal(rate)
    return out


def _decimal(d: Decimal) -> str:
    """A rate as a plain decimal string ("7.3", "0.136986301369863..."), never in exponent
    form."""
    return format(d.normalize(), "f")


def _estimate_response(e: prices.Estimate) -> cost_pb2.EstimateCostResponse:
    b = e.bill
    out = cost_pb2.EstimateCostResponse(
        model=e.model,
        price=_price(e.model, b.price, e.billing, e.at_us),
        cost=_cost(b.cost),
        list_cost=_cost(b.list_cost),
        billing_rate="" if b.rate is None else _decimal(b.rate),
        priced_at=_ts(e.at_us),
    )
    if e.official is not None and e.saving is not None and e.official_rate is not None:
        out.official_cost.CopyFrom(_cost(e.official))
        out.saving.CopyFrom(_cost(e.saving))
        out.official_rate = _decimal(e.official_rate)
    if e.converted is not None and e.conversion_rate is not None:
        out.converted.CopyFrom(_cost(e.converted))
        out.conversion_rate = _decimal(e.conversion_rate)
    return out


def _model_usage(g: ModelTotals) -> cost_pb2.ModelUsage:
    return cost_pb2.ModelUsage(
        model=g.model,
        requests=g.requests,
        usage=common_pb2.Usage(
            input_tokens=g.input_tokens,
            output_tokens=g.output_tokens,
            cached_input_tokens=g.cached_input_tokens,
        ),
        cost=_money(g.cost_micros, g.currency),
        estimated_requests=g.estimated_requests,
    )


def _summary_response(summary: Summary) -> cost_pb2.GetUsageSummaryResponse:
    return cost_pb2.GetUsageSummaryResponse(
        models=[_model_usage(g) for g in summary.models],
        requests=summary.requests,
        usage=common_pb2.Usage(
            input_tokens=summary.input_tokens,
            output_tokens=summary.output_tokens,
            cached_input_tokens=summary.cached_input_tokens,
        ),
        totals=[_money(t.micros, t.currency) for t in summary.totals],
        estimated_requests=summary.estimated_requests,
        simulated_models=[_model_usage(g) for g in summary.simulated_models],
        simulated_requests=summary.simulated_requests,
        simulated_totals=[_money(t.micros, t.currency) for t in summary.simulated_totals],
    )


def _report_row(r: reports.ReportRow) -> cost_pb2.ReportRow:
    out = cost_pb2.ReportRow(
        key=r.key,
        requests=r.requests,
        usage=common_pb2.Usage(input_tokens=r.input_tokens, output_tokens=r.output_tokens),
        cost=_money(r.cost_micros, r.currency),
        estimated_requests=r.estimated_requests,
        requests_without_official_cost=r.requests_without_official,
    )
    if r.official_micros is not None and r.saving_micros is not None:
        out.official_cost.CopyFrom(_money(r.official_micros, r.currency))
        out.saving.CopyFrom(_money(r.saving_micros, r.currency))
    return out


def budget_proto(b: Budget) -> cost_pb2.Budget:
    return cost_pb2.Budget(
        tenant=b.tenant,
        model=b.model,
        limit=_money(b.limit_micros, b.currency),
        time_zone=b.time_zone,
        alert_thresholds=list(b.alerts),
        alert_only=b.alert_only,
    )


def status_proto(s: Status) -> cost_pb2.BudgetStatus:
    c = s.budget.currency
    out = cost_pb2.BudgetStatus(
        budget=budget_proto(s.budget),
        period_start=_ts(s.period_start_us),
        period_end=_ts(s.period_end_us),
        spent=_money(s.spent_micros, c),
        reserved=_money(s.reserved_micros, c),
        remaining=_money(s.remaining_micros, c),
        daily_rate=_money(s.daily_rate_micros, c),
        projected=_money(s.projected_micros, c),
        daily_budget=_money(s.daily_budget_micros, c),
        alerts=[cost_pb2.BudgetAlert(threshold=a.threshold, reached=a.reached) for a in s.alerts],
        exceeded=s.exceeded,
        used=s.used,
    )
    if s.days_left is not None:
        out.days_left = s.days_left
    return out


def _result(outcome: Recorded | QuorumError) -> cost_pb2.RecordUsageResult:
    if isinstance(outcome, QuorumError):
        return cost_pb2.RecordUsageResult(error=rpc_status_of(outcome))
    stored = outcome.record
    return cost_pb2.RecordUsageResult(
        recorded=cost_pb2.RecordUsageResponse(
            cost=_money(stored.cost_micros, stored.currency), duplicate=outcome.duplicate
        )
    )


async def _within_deadline(context: grpc.aio.ServicerContext[Any, Any], call: Awaitable[T]) -> T:
    """``call`` bounded by the client's deadline (clamped), or by the default without one."""
    deadline = Deadline.from_grpc(
        context.time_remaining(), default_s=DEFAULT_TIMEOUT_S, max_s=MAX_TIMEOUT_S
    )
    try:
        timeout_s = deadline.timeout()  # DeadlineExceeded when the client's time is up
    except DeadlineExceeded:
        if inspect.iscoroutine(call):
            call.close()  # never started: closed, not left for the garbage collector to warn
        raise
    try:
        return await asyncio.wait_for(call, timeout=timeout_s)
    except TimeoutError:
        raise DeadlineExceeded(
            "the usage ledger did not answer in time", reason="DEADLINE_EXCEEDED"
        ) from None


class CostServicer(cost_pb2_grpc.CostServiceServicer):
    def __init__(
        self,
        registry: Registry,
        ledger: Ledger,
        *,
        clock: Callable[[], int] = now_us,
        spending: Spending | None = None,
        tenants: Tenants | None = None,
    ) -> None:
        """``tenants`` says which tenants exist (with API keys on; None: keys are off and any
        tenant name is taken), for a ``spending`` made here."""
        self._registry = registry
        self._clock = clock
        self._spending = spending or Spending(registry, ledger, clock=clock, tenants=tenants)

    @map_errors
    async def RecordUsage(
        self, request: cost_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.RecordUsageResponse:
        return await self._record(request, context)

    @map_errors
    async def Commit(
        self, request: cost_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.RecordUsageResponse:
        auth.require(Role.SERVICE, Role.ADMIN)
        if not request.reservation_id:
            raise invalid("reservation_id", "is required")
        return await self._record(request, context)

    def _call(self, request: cost_pb2.RecordUsageRequest) -> tuple[Call, str]:
        """The call a record describes and the reservation it commits ("" for none);
        InvalidArgument naming the first bad field."""
        request_id = _text(request.request_id, "request_id", MAX_REQUEST_ID_CHARS, required=True)
        name = _text(request.model, "model", MAX_MODEL_CHARS, required=True)
        source = _text(request.source, "source", MAX_SOURCE_CHARS, required=False)
        tenant = _tenant(request.tenant)
        reservation_id = _text(
            request.reservation_id, "reservation_id", MAX_REQUEST_ID_CHARS, required=False
        )
        usage = _usage(request)
        occurred_at = (
            timestamp_us(request.occurred_at, "occurred_at")
            if request.HasField("occurred_at")
            else self._clock()
        )
        call = Call(
            request_id, tenant, name, source, usage, occurred_at, request.estimated,
            request.simulated,
        )  # fmt: skip
        return call, reservation_id

    async def _record(
        self, request: cost_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.RecordUsageResponse:
        auth.require(Role.SERVICE, Role.ADMIN)  # a client cannot write its own bill
        call, reservation_id = self._call(request)
        recorded = await _within_deadline(context, self._spending.record(call, reservation_id))
        request_id = call.request_id
        stored = recorded.record
        span = trace.get_current_span()
        span.set_attributes(
            {
                # our own names: gen_ai.usage.* belongs on the model call's span alone (a
                # dashboard sums it over every span of a trace)
                "quorum.model": stored.model,
                "quorum.usage.input_tokens": stored.input_tokens,
                "quorum.usage.output_tokens": stored.output_tokens,
                "quorum.usage.cached_input_tokens": stored.cached_input_tokens,
                "quorum.cost.micros": stored.cost_micros,
                "quorum.cost.currency": stored.currency,
                "quorum.usage.duplicate": recorded.duplicate,
                "quorum.usage.estimated": stored.estimated,
                "quorum.usage.simulated": stored.simulated,
            }
        )
        if recorded.duplicate:
            log.info("duplicate usage record for request id %r ignored", request_id)
        return cost_pb2.RecordUsageResponse(
            cost=_money(stored.cost_micros, stored.currency), duplicate=recorded.duplicate
        )

    @map_errors
    async def RecordUsageBatch(
        self,
        request: cost_pb2.RecordUsageBatchRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> cost_pb2.RecordUsageBatchResponse:
        auth.require(Role.SERVICE, Role.ADMIN)  # a client cannot write its own bill
        n = len(request.records)
        if n > MAX_BATCH_RECORDS:
            raise invalid("records", f"must be at most {MAX_BATCH_RECORDS} records, got {n}")
        parsed: list[tuple[Call, str] | QuorumError] = []
        for record in request.records:
            try:
                parsed.append(self._call(record))
            except QuorumError as e:
                parsed.append(e)
        calls = [p for p in parsed if not isinstance(p, QuorumError)]
        stored = iter(await _within_deadline(context, self._spending.record_many(calls)))
        outcomes = [p if isinstance(p, QuorumError) else next(stored) for p in parsed]
        new = sum(isinstance(o, Recorded) and not o.duplicate for o in outcomes)
        failed = sum(isinstance(o, QuorumError) for o in outcomes)
        trace.get_current_span().set_attributes(
            {
                "quorum.usage.records": n,
                "quorum.usage.new": new,
                "quorum.usage.duplicates": n - new - failed,
                "quorum.usage.failed": failed,
            }
        )
        if n - new - failed:
            log.info("%d duplicate usage records of %d ignored", n - new - failed, n)
        return cost_pb2.RecordUsageBatchResponse(results=[_result(o) for o in outcomes])

    @map_errors
    async def Reserve(
        self, request: cost_pb2.ReserveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.ReserveResponse:
        auth.require(Role.SERVICE, Role.ADMIN)
        request_id = _text(request.request_id, "request_id", MAX_REQUEST_ID_CHARS, required=True)
        tenant = _tenant(request.tenant)
        model = _text(request.model, "model", MAX_MODEL_CHARS, required=True)
        most = TokenUsage(
            input_tokens=_tokens(request.input_tokens, "input_tokens"),
            output_tokens=_tokens(request.max_output_tokens, "max_output_tokens"),
        )
        ttl_us = DEFAULT_TTL_US
        if request.HasField("ttl"):
            ttl_us = request.ttl.seconds * 1_000_000 + request.ttl.nanos // 1000
            if not 0 < ttl_us <= MAX_TTL_US:
                raise invalid("ttl", f"must be more than 0 and at most {MAX_TTL_US // 10**6} s")
        r = await _within_deadline(
            context, self._spending.reserve(request_id, tenant, model, most, ttl_us)
        )
        trace.get_current_span().set_attributes(
            {"gen_ai.request.model": r.model, "quorum.cost.reserved_micros": r.amount_micros}
        )
        return cost_pb2.ReserveResponse(
            reservation_id=r.id,
            amount=_money(r.amount_micros, r.currency),
            expires_at=_ts(r.expires_at_us),
        )

    @map_errors
    async def Release(
        self, request: cost_pb2.ReleaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.ReleaseResponse:
        auth.require(Role.SERVICE, Role.ADMIN)
        rid = _text(request.reservation_id, "reservation_id", MAX_REQUEST_ID_CHARS, required=True)
        await _within_deadline(context, self._spending.release(rid))
        return cost_pb2.ReleaseResponse()

    @map_errors
    async def SetBudget(
        self, request: cost_pb2.SetBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.SetBudgetResponse:
        auth.require(Role.ADMIN)
        if not request.HasField("budget"):
            raise invalid("budget", "is required")
        b = request.budget
        if b.model:
            self._registry.get(_text(b.model, "budget.model", MAX_MODEL_CHARS, required=True))
        budget = Budget(
            tenant=_tenant(b.tenant, field="budget.tenant", required=True),
            model=b.model,
            limit_micros=b.limit.micros,
            currency=b.limit.currency,
            time_zone=b.time_zone or "UTC",
            alerts=tuple(b.alert_thresholds),
            alert_only=b.alert_only,
        )
        s = await _within_deadline(context, self._spending.set_budget(budget))
        return cost_pb2.SetBudgetResponse(status=status_proto(s))

    @map_errors
    async def DeleteBudget(
        self, request: cost_pb2.DeleteBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.DeleteBudgetResponse:
        auth.require(Role.ADMIN)
        tenant = _tenant(request.tenant, required=True)
        model = _text(request.model, "model", MAX_MODEL_CHARS, required=False)
        await _within_deadline(context, self._spending.delete_budget(tenant, model))
        return cost_pb2.DeleteBudgetResponse()

    @map_errors
    async def GetBudgetStatus(
        self, request: cost_pb2.GetBudgetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.GetBudgetStatusResponse:
        tenant = auth.tenant_scope(_tenant(request.tenant) if request.tenant else None)
        found = await _within_deadline(context, self._spending.statuses(tenant))
        return cost_pb2.GetBudgetStatusResponse(budgets=[status_proto(s) for s in found])

    @map_stream_errors
    async def WatchBudget(
        self, request: cost_pb2.WatchBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cost_pb2.WatchBudgetResponse]:
        tenant = auth.tenant_scope(_tenant(request.tenant, required=True))
        assert tenant is not None
        async for s, reached in self._spending.watch(tenant):
            yield cost_pb2.WatchBudgetResponse(status=status_proto(s), new_alerts=list(reached))

    def _range(self, request: TimeRange) -> tuple[int | None, int]:
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
        return start, end

    @map_errors
    async def GetUsageReport(
        self, request: cost_pb2.GetUsageReportRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.GetUsageReportResponse:
        start, end = self._range(request)
        by = _GROUPINGS.get(request.group_by)
        if by is None:
            raise invalid("group_by", f"unknown grouping {request.group_by}")
        time_zone = request.time_zone or "UTC"
        found = await _within_deadline(
            context,
            self._spending.report(
                start_us=start,
                end_us=end,
                tenant=auth.tenant_scope(_tenant(request.tenant) if request.tenant else None),
                model=_text(request.model, "model", MAX_MODEL_CHARS, required=False) or None,
                by=by,
                time_zone=time_zone,
            ),
        )
        rows = found.rows
        per_currency = reports.totals(rows)
        return cost_pb2.GetUsageReportResponse(
            group_by=request.group_by or cost_pb2.REPORT_GROUPING_MODEL,
            time_zone=time_zone,
            rows=[_report_row(r) for r in rows],
            totals=[_money(t.cost_micros, t.currency) for t in per_currency],
            currency_totals=[_report_row(t) for t in per_currency],
            requests=sum(r.requests for r in rows),
            usage=common_pb2.Usage(
                input_tokens=sum(r.input_tokens for r in rows),
                output_tokens=sum(r.output_tokens for r in rows),
            ),
            estimated_requests=sum(r.estimated_requests for r in rows),
            simulated_rows=[_report_row(r) for r in found.simulated_rows],
            simulated_currency_totals=[
                _report_row(t) for t in reports.totals(found.simulated_rows)
            ],
            simulated_requests=sum(r.requests for r in found.simulated_rows),
        )

    @map_errors
    async def GetUsageSummary(
        self, request: cost_pb2.GetUsageSummaryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.GetUsageSummaryResponse:
        start, end = self._range(request)
        # a model the registry does not know (any more) is a filter like any other: the
        # ledger answers with its records, which for a name never used is nothing
        model = _text(request.model, "model", MAX_MODEL_CHARS, required=False) or None
        if model is not None:
            trace.get_current_span().set_attribute("gen_ai.request.model", model)
        tenant = auth.tenant_scope(_tenant(request.tenant) if request.tenant else None)
        summary = await _within_deadline(
            context, self._spending.summary(start_us=start, end_us=end, model=model, tenant=tenant)
        )
        return _summary_response(summary)

    @map_errors
    async def ListPrices(
        self, request: cost_pb2.ListPricesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.ListPricesResponse:
        model = _text(request.model, "model", MAX_MODEL_CHARS, required=False) or None
        now = self._clock()
        rows = prices.list_prices(
            self._registry, now, model=model, include_history=request.include_history
        )  # an unknown model is NOT_FOUND (MODEL_NOT_FOUND)
        return cost_pb2.ListPricesResponse(
            prices=[_price(r.model, r.price, r.billing, r.seen_at_us) for r in rows]
        )

    @map_errors
    async def EstimateCost(
        self, request: cost_pb2.EstimateCostRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cost_pb2.EstimateCostResponse:
        name = _text(request.model, "model", MAX_MODEL_CHARS, required=True)
        usage = _usage(request)
        currency = _currency(request.currency, "currency") if request.currency else None
        trace.get_current_span().set_attribute("gen_ai.request.model", name)
        estimate = prices.estimate(self._registry, name, usage, self._clock(), currency)
        return _estimate_response(estimate)
