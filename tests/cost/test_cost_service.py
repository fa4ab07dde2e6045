"""The cost service over gRPC: a real grpc.aio server on 127.0.0.1:0 over each ledger backend
(a SQLite file in tmp_path, a real PostgreSQL), the generated stubs; two services sharing one
PostgreSQL ledger; and (last) the real ``python -m services.cost`` process probed with the
real grpcurl binary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from quorum import telemetry
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from services.cost.config import CostSettings
from services.cost.server import SERVICE_NAME, create
from tests.cost.conftest import fresh_schema_url, make_settings

if TYPE_CHECKING:
    from quorum.pgserver import TempPostgres
    from tests.conftest import ServiceProcess
    from tests.cost.conftest import CostHarness

T0 = 1_700_000_000  # seconds since the epoch; a fixed point in the past


def usage_request(
    request_id: str = "req-1",
    model: str = "gpt-4.1",
    input_tokens: int = 1000,
    output_tokens: int = 500,
    *,
    at: int | None = None,
    source: str = "router",
    simulated: bool = False,
) -> cost_pb2.RecordUsageRequest:
    req = cost_pb2.RecordUsageRequest(
        request_id=request_id,
        model=model,
        usage=common_pb2.Usage(input_tokens=input_tokens, output_tokens=output_tokens),
        source=source,
        simulated=simulated,
    )
    if at is not None:
        req.occurred_at.seconds = at
    return req


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == err.code().value[0]
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, status
    assert infos[0].domain == "quorum"
    return infos[0]


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


# --- RecordUsage ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "micros"),
    [
        ("gpt-4.1", 6000),  # 1000 × 2.00 + 500 × 8.00 micro-USD
        ("claude-sonnet-4.5", 10500),  # 3000 + 7500
        ("gemini-2.5-flash", 1750),  # 500 + 1250
        ("deepseek-v3.2", 350),  # 140 + 210
        ("profanity-check", 0),  # local model: no price
    ],
)
async def test_record_usage_prices_the_call(cost: CostHarness, model: str, micros: int) -> None:
    resp = await cost.stub.RecordUsage(usage_request(model=model), timeout=5)
    assert resp.cost == common_pb2.Money(micros=micros, currency="USD")
    assert not resp.duplicate


async def test_price_rounds_half_up_once_per_call(cost: CostHarness) -> None:
    # 1 input token of deepseek-v3.2 is 0.14 micro-USD, 3 output tokens 1.26: 1.40 → 1
    resp = await cost.stub.RecordUsage(usage_request(model="deepseek-v3.2", input_tokens=1,
                                                     output_tokens=3), timeout=5)  # fmt: skip
    assert resp.cost.micros == 1
    # 25 output tokens = 10.5 micro-USD → 11
    resp = await cost.stub.RecordUsage(
        usage_request("req-2", model="deepseek-v3.2", input_tokens=0, output_tokens=25), timeout=5
    )
    assert resp.cost.micros == 11


async def test_duplicate_returns_the_first_cost_and_counts_once(cost: CostHarness) -> None:
    first = await cost.stub.RecordUsage(usage_request(at=T0), timeout=5)
    again = await cost.stub.RecordUsage(usage_request(at=T0 + 60, source="voter"), timeout=5)
    assert again.duplicate
    assert again.cost == first.cost == common_pb2.Money(micros=6000, currency="USD")
    summary = await cost.stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
    assert summary.requests == 1
    assert summary.usage == common_pb2.Usage(input_tokens=1000, output_tokens=500)
    assert list(summary.totals) == [common_pb2.Money(micros=6000, currency="USD")]


async def test_reusing_a_request_id_for_another_call_fails(cost: CostHarness) -> None:
    await cost.stub.RecordUsage(usage_request(), timeout=5)
    err = await rpc_error(cost.stub.RecordUsage(usage_request(output_tokens=501), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "req-1" in (err.details() or "")
    info = error_info(err)
    assert info.reason == "REQUEST_ID_REUSED"
    assert info.metadata["request_id"] == "req-1"


def _mutate(**changes: Any) -> Callable[[cost_pb2.RecordUsageRequest], None]:
    def apply(req: cost_pb2.RecordUsageRequest) -> None:
        for path, value in changes.items():
            target: Any = req
            *parents, leaf = path.split("__")
            for p in parents:
                target = getattr(target, p)
            if value is None:
                target.ClearField(leaf)
            else:
                setattr(target, leaf, value)

    return apply


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_mutate(request_id=""), "request_id"),
        (_mutate(request_id="x" * 129), "request_id"),
        (_mutate(request_id="line\nbreak"), "request_id"),
        (_mutate(model=""), "model"),
        (_mutate(usage=None), "usage"),
        (_mutate(usage__input_tokens=-1), "usage.input_tokens"),
        (_mutate(usage__input_tokens=10_000_001), "usage.input_tokens"),
        (_mutate(usage__output_tokens=-5), "usage.output_tokens"),
        (_mutate(usage__output_tokens=2**62), "usage.output_tokens"),
        (_mutate(source="s" * 65), "source"),
        (_mutate(occurred_at__nanos=-1), "occurred_at"),
        (_mutate(occurred_at__seconds=300_000_000_000), "occurred_at"),
    ],
)
async def test_invalid_record_requests_name_the_field(
    cost: CostHarness, change: Callable[[cost_pb2.RecordUsageRequest], None], field: str
) -> None:
    req = usage_request()
    change(req)
    err = await rpc_error(cost.stub.RecordUsage(req, timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith(f"{field}: ")
    info = error_info(err)
    assert info.reason == "INVALID_FIELD"
    assert info.metadata["field"] == field
    # nothing was stored
    summary = await cost.stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
    assert summary.requests == 0


async def test_limits_are_inclusive(cost: CostHarness) -> None:
    req = usage_request("x" * 128, input_tokens=10_000_000, output_tokens=10_000_000)
    resp = await cost.stub.RecordUsage(req, timeout=5)
    assert resp.cost.micros == 10_000_000 * 2 + 10_000_000 * 8


async def test_unknown_model_is_not_found(cost: CostHarness) -> None:
    err = await rpc_error(cost.stub.RecordUsage(usage_request(model="gpt-5-ultra"), timeout=5))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "gpt-5-ultra" in (err.details() or "")
    info = error_info(err)
    assert info.reason == "MODEL_NOT_FOUND"
    assert info.metadata["model"] == "gpt-5-ultra"


# --- RecordUsageBatch ----------------------------------------------------------------------------


def result_error(result: cost_pb2.RecordUsageResult) -> tuple[int, str, dict[str, str], str]:
    """A failed record's code, ErrorInfo reason and metadata, and message."""
    assert result.WhichOneof("result") == "error", result
    status = result.error
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1 and infos[0].domain == "quorum", status
    return status.code, infos[0].reason, dict(infos[0].metadata), status.message


def batch(*records: cost_pb2.RecordUsageRequest) -> cost_pb2.RecordUsageBatchRequest:
    return cost_pb2.RecordUsageBatchRequest(records=records)


async def test_a_batch_answers_each_record_as_record_usage_would(cost: CostHarness) -> None:
    no_usage = usage_request("no-usage")
    no_usage.ClearField("usage")
    resp = await cost.stub.RecordUsageBatch(
        batch(
            usage_request("a", at=T0),
            usage_request("", at=T0),  # no request id
            usage_request("b", model="gpt-5-ultra"),  # a model the registry does not know
            usage_request("a", at=T0 + 60, source="voter"),  # a retry of the first
            usage_request("a", output_tokens=501),  # another call under the first's id
            no_usage,
            usage_request("c", model="deepseek-v3.2", at=T0),
        ),
        timeout=5,
    )
    r = resp.results
    assert len(r) == 7
    assert r[0].recorded == cost_pb2.RecordUsageResponse(
        cost=common_pb2.Money(micros=6000, currency="USD"), duplicate=False
    )
    assert result_error(r[1])[:3] == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0], "INVALID_FIELD", {"field": "request_id"}
    )  # fmt: skip
    assert result_error(r[1])[3].startswith("request_id: ")
    assert result_error(r[2])[:3] == (
        grpc.StatusCode.NOT_FOUND.value[0], "MODEL_NOT_FOUND", {"model": "gpt-5-ultra"}
    )  # fmt: skip
    assert r[3].recorded.duplicate and r[3].recorded.cost.micros == 6000
    assert result_error(r[4])[:3] == (
        grpc.StatusCode.FAILED_PRECONDITION.value[0], "REQUEST_ID_REUSED", {"request_id": "a"}
    )  # fmt: skip
    assert result_error(r[5])[2] == {"field": "usage"}
    assert r[6].recorded == cost_pb2.RecordUsageResponse(
        cost=common_pb2.Money(micros=350, currency="USD")
    )
    summary = await cost.stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
    assert summary.requests == 2
    assert list(summary.totals) == [common_pb2.Money(micros=6350, currency="USD")]
    # what the batch stored, RecordUsage finds: the same cost, a duplicate
    again = await cost.stub.RecordUsage(usage_request("c", model="deepseek-v3.2"), timeout=5)
    assert again.duplicate and again.cost.micros == 350


async def test_a_batch_commits_the_reservations_its_records_name(cost: CostHarness) -> None:
    limit = common_pb2.Money(micros=100_000, currency="USD")
    await cost.stub.SetBudget(
        cost_pb2.SetBudgetRequest(budget=cost_pb2.Budget(tenant="acme", limit=limit)), timeout=5
    )
    r = await cost.stub.Reserve(
        cost_pb2.ReserveRequest(
            request_id="a", tenant="acme", model="gpt-4.1", input_tokens=1000,
            max_output_tokens=1000,
        ),
        timeout=5,
    )  # fmt: skip
    committing = usage_request("a")
    committing.tenant, committing.reservation_id = "acme", r.reservation_id
    stray = usage_request("b")
    stray.tenant, stray.reservation_id = "acme", r.reservation_id  # the same reservation
    resp = await cost.stub.RecordUsageBatch(batch(committing, stray), timeout=5)
    assert not resp.results[0].recorded.duplicate
    assert result_error(resp.results[1])[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION.value[0], "RESERVATION_COMMITTED"
    )  # fmt: skip
    (status,) = (
        await cost.stub.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(tenant="acme"), timeout=5)
    ).budgets
    assert (status.spent.micros, status.reserved.micros) == (6000, 0)


async def test_a_batch_of_nothing_answers_nothing(cost: CostHarness) -> None:
    resp = await cost.stub.RecordUsageBatch(batch(), timeout=5)
    assert list(resp.results) == []


async def test_a_batch_of_too_many_records_is_refused_whole(cost: CostHarness) -> None:
    records = [usage_request(f"r{i}") for i in range(1001)]
    err = await rpc_error(cost.stub.RecordUsageBatch(batch(*records), timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).metadata["field"] == "records"
    assert (err.details() or "").startswith("records: must be at most 1000 records")
    summary = await cost.stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
    assert summary.requests == 0
    resp = await cost.stub.RecordUsageBatch(batch(*records[:1000]), timeout=10)
    assert all(not r.recorded.duplicate for r in resp.results)
    assert len(resp.results) == 1000


async def test_a_batch_on_a_ledger_that_is_gone_is_unavailable_per_record(
    cost: CostHarness,
) -> None:
    await cost.close_ledger()
    resp = await cost.stub.RecordUsageBatch(
        batch(usage_request("a"), usage_request("b", model="gpt-5-ultra")), timeout=5
    )
    assert result_error(resp.results[0])[:2] == (
        grpc.StatusCode.UNAVAILABLE.value[0], "LEDGER_UNAVAILABLE"
    )  # fmt: skip
    assert result_error(resp.results[1])[1] == "MODEL_NOT_FOUND"  # its own error first


async def test_a_simulated_call_is_priced_but_kept_apart_from_real_spend(cost: CostHarness) -> None:
    sim = await cost.stub.RecordUsage(usage_request("sim", at=T0, simulated=True), timeout=5)
    assert sim.cost == common_pb2.Money(micros=6000, currency="USD")  # what it would have cost
    await cost.stub.RecordUsage(usage_request("real", "deepseek-v3.2", at=T0), timeout=5)
    # the same id as a real call is another call; as a simulated one again, a retry
    err = await rpc_error(cost.stub.RecordUsage(usage_request("sim", at=T0), timeout=5))
    assert error_info(err).reason == "REQUEST_ID_REUSED"
    again = await cost.stub.RecordUsage(usage_request("sim", simulated=True), timeout=5)
    assert again.duplicate

    s = await cost.stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
    assert [(m.model, m.requests) for m in s.models] == [("deepseek-v3.2", 1)]
    assert (s.requests, list(s.totals)) == (1, [common_pb2.Money(micros=350, currency="USD")])
    assert [(m.model, m.requests, m.cost.micros) for m in s.simulated_models] == [
        ("gpt-4.1", 1, 6000)
    ]
    assert s.simulated_requests == 1
    assert list(s.simulated_totals) == [common_pb2.Money(micros=6000, currency="USD")]

    r = await cost.stub.GetUsageReport(cost_pb2.GetUsageReportRequest(), timeout=5)
    assert [(row.key, row.requests, row.cost.micros) for row in r.rows] == [
        ("deepseek-v3.2", 1, 350)
    ]
    assert (r.requests, [t.micros for t in r.totals]) == (1, [350])
    assert [t.cost.micros for t in r.currency_totals] == [350]
    assert [(row.key, row.requests, row.cost.micros) for row in r.simulated_rows] == [
        ("gpt-4.1", 1, 6000)
    ]
    assert [(t.key, t.requests, t.cost.micros) for t in r.simulated_currency_totals] == [
        ("USD", 1, 6000)
    ]
    assert r.simulated_requests == 1


# --- GetUsageSummary ---------------------------------------------------------------------------


def ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


async def test_summary_per_model_over_a_time_range(cost: CostHarness) -> None:
    for i, (model, at) in enumerate(
        [
            ("gpt-4.1", T0),
            ("gpt-4.1", T0 + 10),
            ("deepseek-v3.2", T0 + 20),
            ("gpt-4.1", T0 + 30),  # the end is exclusive: not counted below
        ]
    ):
        await cost.stub.RecordUsage(usage_request(f"r{i}", model, at=at), timeout=5)

    s = await cost.stub.GetUsageSummary(
        cost_pb2.GetUsageSummaryRequest(start_time=ts(T0), end_time=ts(T0 + 30)), timeout=5
    )
    assert [(m.model, m.requests, m.cost.micros) for m in s.models] == [
        ("deepseek-v3.2", 1, 350),
        ("gpt-4.1", 2, 12000),
    ]
    assert s.models[1].usage == common_pb2.Usage(input_tokens=2000, output_tokens=1000)
    assert s.requests == 3
    assert s.usage == common_pb2.Usage(input_tokens=3000, output_tokens=1500)
    assert list(s.totals) == [common_pb2.Money(micros=12350, currency="USD")]

    s = await cost.stub.GetUsageSummary(
        cost_pb2.GetUsageSummaryRequest(start_time=ts(T0 + 10), model="gpt-4.1"), timeout=5
    )
    assert [(m.model, m.requests) for m in s.models] == [("gpt-4.1", 2)]


async def test_summary_end_defaults_to_now(cost: CostHarness) -> None:
    future = int(time.time()) + 3600
    await cost.stub.RecordUsage(usage_request("past", at=T0), timeout=5)
    await cost.stub.RecordUsage(usage_request("now"), timeout=5)  # occurred_at defaults to now
    await cost.stub.RecordUsage(usage_request("future", at=future), timeout=5)
    s = await cost.stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
    assert s.requests == 2
    s = await cost.stub.GetUsageSummary(
        cost_pb2.GetUsageSummaryRequest(start_time=ts(T0 + 1), end_time=ts(future + 1)), timeout=5
    )
    assert s.requests == 2  # "now" and "future"


async def test_summary_end_before_start_is_invalid(cost: CostHarness) -> None:
    req = cost_pb2.GetUsageSummaryRequest(start_time=ts(T0), end_time=ts(T0 - 1))
    err = await rpc_error(cost.stub.GetUsageSummary(req, timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end_time" in (err.details() or "")
    info = error_info(err)
    assert info.reason == "INVALID_FIELD"
    assert info.metadata["field"] == "end_time"


async def test_summary_for_an_unknown_model_is_empty(cost: CostHarness) -> None:
    await cost.stub.RecordUsage(usage_request(at=T0), timeout=5)
    s = await cost.stub.GetUsageSummary(
        cost_pb2.GetUsageSummaryRequest(model="no-such-model"), timeout=5
    )
    assert s == cost_pb2.GetUsageSummaryResponse(usage=common_pb2.Usage())
    assert s.requests == 0


# --- ListPrices --------------------------------------------------------------------------------


async def test_list_prices_sorted_in_micros_per_million_tokens(cost: CostHarness) -> None:
    resp = await cost.stub.ListPrices(cost_pb2.ListPricesRequest(), timeout=5)
    got = [
        (p.model, p.input_micros_per_mtok, p.output_micros_per_mtok, p.currency)
        for p in resp.prices
    ]
    assert got == [
        ("claude-sonnet-4.5", 3_000_000, 15_000_000, "USD"),
        ("deepseek-v3.2", 140_000, 420_000, "USD"),
        ("gemini-2.5-flash", 500_000, 2_500_000, "USD"),
        ("gpt-4.1", 2_000_000, 8_000_000, "USD"),
        ("ngram-heads", 0, 0, "USD"),
        ("nsfw-check", 0, 0, "USD"),
        ("profanity-check", 0, 0, "USD"),
        # the routed_chat ensemble: the dearest model it may choose (reserved at, never billed
        # at: a call through it is billed as the model that answered)
        ("routed-chat", 3_000_000, 15_000_000, "USD"),
        ("smollm2-135m", 0, 0, "USD"),  # the local chat model: free, like the local judges
        ("text-heads", 0, 0, "USD"),
    ]


# --- health, reflection, tracing ---------------------------------------------------------------


async def health_status(channel: grpc.aio.Channel, service: str) -> int:
    """The service's health; SERVICE_UNKNOWN while the server has no status for it yet."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
        return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    return int(resp.status)


async def test_health_follows_the_ledger(cost: CostHarness) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    # nothing is claimed before the monitor has asked the ledger
    assert await health_status(cost.channel, SERVICE_NAME) != serving
    cost.monitor.start()
    deadline = time.monotonic() + 5
    while await health_status(cost.channel, SERVICE_NAME) != serving:
        assert time.monotonic() < deadline, "never SERVING"
        await asyncio.sleep(0.02)
    assert await health_status(cost.channel, "") == serving

    await cost.close_ledger()  # the database goes away: not serving any more
    assert not await cost.monitor.update()
    for name in (SERVICE_NAME, ""):
        assert await health_status(cost.channel, name) == health_pb2.HealthCheckResponse.NOT_SERVING
    err = await rpc_error(cost.stub.RecordUsage(usage_request(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(err).reason == "LEDGER_UNAVAILABLE"


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
async def test_reflection_lists_the_cost_service(cost: CostHarness, version: str) -> None:
    """Reflection answers under its current name (v1) and the older one (v1alpha): the
    messages are the same on the wire."""
    call = cost.channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = set()
    async for resp in call:
        names |= {s.name for s in resp.list_services_response.service}
    assert {SERVICE_NAME, "quorum.cost.v1.CostService", "grpc.health.v1.Health"} <= names


async def test_record_usage_annotates_the_server_span(settings: CostSettings) -> None:
    """With the OpenTelemetry gRPC instrumentation (as ``telemetry.setup`` installs it), the
    server span of RecordUsage carries the GenAI and cost attributes."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = GrpcAioInstrumentorServer(filter_=telemetry.traced())
    instrumentor.instrument(tracer_provider=provider)
    try:
        server, port, monitor, close = await create(settings)
    finally:
        instrumentor.uninstrument()  # only the server created above is instrumented
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = cost_pb2_grpc.CostServiceStub(channel)
            await stub.RecordUsage(usage_request(), timeout=5)
            await stub.RecordUsage(usage_request(), timeout=5)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.RecordUsage(usage_request("r2", model="gpt-9"), timeout=5)
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(None)
        await monitor.stop()
        await close()
        provider.shutdown()
    finished = exporter.get_finished_spans()
    assert not [s for s in finished if "Health" in s.name]  # health checks are not traced
    spans = [s for s in finished if s.name.endswith("/RecordUsage")]
    assert len(spans) == 3
    failed = spans.pop()  # a failed call is an error, with its status and reason
    assert failed.status.status_code.name == "ERROR"
    assert failed.status.description == "NOT_FOUND: MODEL_NOT_FOUND"
    assert (failed.attributes or {})["error.type"] == "MODEL_NOT_FOUND"
    # tokens belong on the model call's span only: none here under the GenAI names
    assert not any(k.startswith("gen_ai.usage") for s in spans for k in (s.attributes or {}))
    expected = {
        "quorum.model": "gpt-4.1",
        "quorum.usage.input_tokens": 1000,
        "quorum.usage.output_tokens": 500,
        "quorum.cost.micros": 6000,
        "quorum.cost.currency": "USD",
    }
    for span, duplicate in zip(spans, (False, True), strict=True):
        attrs = dict(span.attributes or {})
        assert {k: attrs.get(k) for k in expected} == expected
        assert attrs["quorum.usage.duplicate"] is duplicate


# --- replicas: two services on one PostgreSQL ledger --------------------------------------------


async def test_two_services_sharing_one_postgres_ledger_count_each_id_once(
    postgres_server: TempPostgres, tmp_path: Path
) -> None:
    """Two cost services (each with its own connection pool, as two replicas) over one
    PostgreSQL ledger; every request id is recorded four times at once, twice through each:
    each id is counted once, every answer carries the first record's cost, and both
    services report the same summary."""
    url = fresh_schema_url(postgres_server)
    async with contextlib.AsyncExitStack() as stack:
        stubs = []
        for _ in range(2):
            server, port, _monitor, close = await create(make_settings(tmp_path, url))
            stack.push_async_callback(close)
            stack.push_async_callback(server.stop, None)
            await server.start()
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            stack.push_async_callback(channel.close)
            stubs.append(cost_pb2_grpc.CostServiceStub(channel))
        n = 150
        models = ("gpt-4.1", "deepseek-v3.2")

        def call(i: int) -> cost_pb2.RecordUsageRequest:
            return usage_request(f"req-{i}", models[i % 2], 100 + i, 10 + i, at=T0 + i)

        order = [(k % 2, i) for k in range(4) for i in range(n)]
        results = await asyncio.gather(
            *(stubs[via].RecordUsage(call(i), timeout=20) for via, i in order)
        )
        assert sum(not r.duplicate for r in results) == n
        per_id: dict[int, set[int]] = {}
        for (_, i), r in zip(order, results, strict=True):
            per_id.setdefault(i, set()).add(r.cost.micros)
        assert all(len(costs) == 1 for costs in per_id.values())

        summaries = [
            await stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
            for stub in stubs
        ]
        assert summaries[0] == summaries[1]
        s = summaries[0]
        assert s.requests == n
        assert s.usage == common_pb2.Usage(
            input_tokens=sum(100 + i for i in range(n)), output_tokens=sum(10 + i for i in range(n))
        )
        assert [(m.model, m.requests) for m in s.models] == [
            ("deepseek-v3.2", n // 2),
            ("gpt-4.1", n // 2),
        ]
        total = sum(next(iter(costs)) for costs in per_id.values())
        assert list(s.totals) == [common_pb2.Money(micros=total, currency="USD")]


# --- the real process, probed with the real grpcurl ----------------------------------------------


def grpcurl(binary: Path, *args: str) -> str:
    done = subprocess.run(
        [str(binary), "-plaintext", *args], capture_output=True, text=True, timeout=20, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_subprocess_serves_grpcurl_and_drains_on_sigterm(
    service_process: Callable[..., ServiceProcess], grpcurl_path: Path, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.sqlite3"
    svc = service_process(
        "services.cost", "--address", "127.0.0.1:0", "--set", f"cost.database={db}",
        env={"QUORUM_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert svc.address.startswith("127.0.0.1:")
    assert svc.port > 0

    listed = grpcurl(grpcurl_path, svc.address, "list").split()
    assert "quorum.cost.v1.CostService" in listed
    assert "grpc.health.v1.Health" in listed

    described = grpcurl(grpcurl_path, svc.address, "describe", "quorum.cost.v1.CostService")
    assert "service CostService {" in described
    for rpc in ("RecordUsage", "GetUsageSummary", "ListPrices", "EstimateCost", "RecordUsageBatch"):
        assert f"rpc {rpc}" in described

    body = json.dumps(
        {
            "requestId": "cli-1",
            "model": "gpt-4.1",
            "usage": {"inputTokens": 1000, "outputTokens": 500},
        }
    )
    out = json.loads(
        grpcurl(grpcurl_path, "-d", body, svc.address, "quorum.cost.v1.CostService/RecordUsage")
    )
    assert out == {"cost": {"micros": "6000", "currency": "USD"}}

    started = time.monotonic()
    assert svc.stop() == 0, svc.logs()
    assert time.monotonic() - started < 5
    logs = [json.loads(line) for line in svc.logs().splitlines()]
    assert any(entry["msg"] == "stopped" for entry in logs)
    assert all(entry["service"] == "quorum-cost" for entry in logs)

    # the record is durable in the file the process was told to use
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT request_id, cost_micros FROM usage").fetchall() == [
            ("cli-1", 6000)
        ]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "no-port"], "address"),
        (["--config", "/nonexistent/quorum.toml"], "cannot read config file"),
    ],
)
def test_subprocess_exits_on_a_config_error_with_one_line(
    run_module: Callable[..., subprocess.CompletedProcess[str]], args: list[str], message: str
) -> None:
    done = run_module("services.cost", *args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("quorum-cost: configuration error:")
    assert message in lines[0]


def test_subprocess_on_postgres_logs_the_url_with_the_password_masked(
    service_process: Callable[..., ServiceProcess],
    grpcurl_path: Path,
    postgres_server: TempPostgres,
    tmp_path: Path,
) -> None:
    secret = "s3cret-Pa55"  # the test server trusts loopback: accepted and ignored
    url = fresh_schema_url(postgres_server).replace("quorum@", f"quorum:{secret}@")
    svc = service_process(
        "services.cost", "--address", "127.0.0.1:0", "--set", f"cost.database={url}",
        env={"QUORUM_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    body = json.dumps(
        {"requestId": "pg-1", "model": "gpt-4.1", "usage": {"inputTokens": 1, "outputTokens": 1}}
    )
    out = json.loads(
        grpcurl(grpcurl_path, "-d", body, svc.address, "quorum.cost.v1.CostService/RecordUsage")
    )
    assert out == {"cost": {"micros": "10", "currency": "USD"}}
    assert svc.stop() == 0, svc.logs()
    logs = svc.logs()
    assert secret not in logs
    opened = [json.loads(line) for line in logs.splitlines() if "ledger open" in line]
    assert len(opened) == 1
    assert "postgresql://quorum:***@127.0.0.1:" in opened[0]["msg"]
    assert not (tmp_path / "ledger.sqlite3").exists()
