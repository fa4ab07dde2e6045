"""The usage sender (quorum.usage.Meter) against a real cost server in process on a real SQLite
ledger: records go in RecordUsageBatch calls, each record's own answer counts (taken, refused
for good, or sent again later), a gone reservation is billed without it, a simulated call is
recorded as one and never reserved, and an older cost service without RecordUsageBatch gets
the records one by one."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from quorum import config
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.errors import DeadlineExceeded, ResourceExhausted
from quorum.server import create_server
from quorum.usage import Budgeted, Charge, Meter, MeterSettings, replay
from services.cost.config import from_config
from services.cost.ledger import SqliteLedger
from services.cost.server import SERVICE_NAME, create
from services.cost.servicer import CostServicer

MODEL = "gpt-4.1"


def cost_settings(tmp_path: Path):
    return from_config(config.defaults(), {"QUORUM_DATA_DIR": str(tmp_path)}, address="127.0.0.1:0")


@asynccontextmanager
async def cost_service(tmp_path: Path) -> AsyncIterator[cost_pb2_grpc.CostServiceStub]:
    """A cost service in process on a free port (SQLite in ``tmp_path``): a stub to it."""
    server, port, monitor, close = await create(cost_settings(tmp_path))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield cost_pb2_grpc.CostServiceStub(ch)
    finally:
        await server.stop(None)
        await monitor.stop()
        await close()


async def acme_status(stub: cost_pb2_grpc.CostServiceStub) -> cost_pb2.BudgetStatus:
    """The status of acme's one budget."""
    req = cost_pb2.GetBudgetStatusRequest(tenant="acme")
    (status,) = (await stub.GetBudgetStatus(req, timeout=5)).budgets
    return status


async def settle(meter: Meter, keys: list[str], model: str = MODEL) -> list[Charge]:
    """Calls noted (all at once), then settled one after the other without yielding: the
    sender finds every record pending when it next runs."""
    charges = await asyncio.gather(
        *(meter.begin(k, model, input_tokens=10, max_output_tokens=100) for k in keys)
    )
    for c in charges:
        c.settle(10, 20)
    return list(charges)


async def summary(stub: cost_pb2_grpc.CostServiceStub) -> cost_pb2.GetUsageSummaryResponse:
    return await stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)


@pytest.fixture
async def spans() -> AsyncIterator[InMemorySpanExporter]:
    """Server spans of the cost servers created while the fixture is set up."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = GrpcAioInstrumentorServer()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def calls(exporter: InMemorySpanExporter, method: str) -> int:
    return sum(s.name.endswith(f"/{method}") for s in exporter.get_finished_spans())


async def test_settled_records_go_in_one_batch_call(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    async with cost_service(tmp_path) as stub:
        meter = Meter(stub, tmp_path / "j", source="router")
        await meter.start()
        try:
            charges = await settle(meter, [f"k{i}" for i in range(300)])
            assert all(await asyncio.gather(*(c.recorded(5) for c in charges)))
            assert meter.backlog == 0
        finally:
            await meter.stop()
        assert (await summary(stub)).requests == 300
    assert calls(spans, "RecordUsageBatch") == 1
    assert calls(spans, "RecordUsage") == 0
    assert replay(tmp_path / "j") == ({}, {})


async def test_each_record_of_a_batch_is_taken_refused_or_sent_again_on_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ledger whose queue holds 3 records, and another process holding SQLite's write lock
    for a while: of each call's records 3 are queued and the rest answered LEDGER_BUSY at
    once; one record names a model the cost service does not know. The busy ones are sent
    again once the cost service is back; the unknown one is kept aside, never re-sent."""
    ledger_path = tmp_path / "ledger.sqlite3"
    ledger = await SqliteLedger.open(ledger_path, max_batch=2, max_queued=3)
    server, port, monitor, close = await create(cost_settings(tmp_path), ledger=ledger)
    await server.start()
    caplog.set_level(logging.INFO, logger="quorum.usage")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = cost_pb2_grpc.CostServiceStub(ch)
            settings = MeterSettings(retry_interval_s=0.1, send_timeout_s=5.0)
            meter = Meter(stub, tmp_path / "j", source="router", settings=settings)
            await meter.start()
            holder = sqlite3.connect(ledger_path, isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")
                keys = [f"k{i}" for i in range(10)]
                charges = await settle(meter, keys[:5])
                charges += await settle(meter, ["unknown"], model="no-such-model")
                charges += await settle(meter, keys[5:])
                await asyncio.sleep(0.5)  # the first call waits for the write lock
                holder.execute("ROLLBACK")
                for _ in range(100):
                    if meter.backlog == 0:
                        break
                    await asyncio.sleep(0.05)
                assert meter.backlog == 0
                taken = await asyncio.gather(*(c.recorded(0) for c in charges))
            finally:
                holder.close()
                await meter.stop()
            assert taken == [True] * 5 + [False] + [True] * 5
            s = await summary(stub)
            assert s.requests == 10
    finally:
        await server.stop(None)
        await monitor.stop()
        await close()
    kept = meter.rejected_path.read_text().splitlines()
    assert len(kept) == 1 and '"no-such-model"' in kept[0]
    assert "cost service unavailable" in caplog.text  # the busy records waited
    assert "cost service back" in caplog.text
    assert replay(tmp_path / "j") == ({}, {})


async def test_a_record_whose_reservation_is_gone_is_billed_without_it(tmp_path: Path) -> None:
    async with cost_service(tmp_path) as stub:
        limit = common_pb2.Money(micros=10**9, currency="USD")
        await stub.SetBudget(
            cost_pb2.SetBudgetRequest(budget=cost_pb2.Budget(tenant="acme", limit=limit)),
            timeout=5,
        )
        meter = Meter(stub, tmp_path / "j", source="router")
        await meter.start()
        try:
            hold = Budgeted(input_tokens=10, max_output_tokens=100, hold_s=5)
            charge = await meter.begin(
                "k1", MODEL, input_tokens=10, max_output_tokens=100, tenant="acme",
                budget=hold,
            )  # fmt: skip
            assert charge.intent.reservation_id.startswith("rsv_")
            # released by mistake before the record arrives
            await stub.Release(
                cost_pb2.ReleaseRequest(reservation_id=charge.intent.reservation_id), timeout=5
            )
            other = await meter.begin("k2", MODEL, input_tokens=1, max_output_tokens=1)
            charge.settle(10, 20)
            other.settle(1, 1)
            assert await charge.recorded(5) and await other.recorded(5)
        finally:
            await meter.stop()
        status = await acme_status(stub)
        assert status.spent.micros == 10 * 2 + 20 * 8  # billed, although not reserved
        assert (await summary(stub)).requests == 2


async def test_a_simulated_call_is_recorded_simulated_and_never_reserved(tmp_path: Path) -> None:
    async with cost_service(tmp_path) as stub:
        tiny = common_pb2.Money(micros=1, currency="USD")  # holds no real call at all
        await stub.SetBudget(
            cost_pb2.SetBudgetRequest(budget=cost_pb2.Budget(tenant="acme", limit=tiny)),
            timeout=5,
        )
        hold = Budgeted(input_tokens=10, max_output_tokens=100, hold_s=5)
        meter = Meter(stub, tmp_path / "j", source="router")
        await meter.start()
        try:
            charge = await meter.begin(
                "k1", MODEL, input_tokens=10, max_output_tokens=100, tenant="acme",
                budget=hold, simulated=True,
            )  # fmt: skip
            assert charge.intent.reservation_id == "" and charge.intent.simulated
            charge.settle(10, 20)
            assert await charge.recorded(5)
            # a call the process stopped during: its intent is billed at the next start,
            # still simulated
            await meter.begin(
                "k2", MODEL, input_tokens=10, max_output_tokens=100, tenant="acme",
                budget=hold, simulated=True,
            )  # fmt: skip
            with pytest.raises(ResourceExhausted):  # a real call is held to the budget
                await meter.begin(
                    "k3", MODEL, input_tokens=10, max_output_tokens=100, tenant="acme",
                    budget=hold,
                )  # fmt: skip
        finally:
            await meter.stop()
        meter = Meter(stub, tmp_path / "j", source="router")
        await meter.start()
        await meter.stop(drain_s=5)
        assert meter.backlog == 0
        s = await summary(stub)
        assert (s.requests, list(s.totals)) == (0, [])
        assert s.simulated_requests == 2
        (model,) = s.simulated_models
        assert model.model == MODEL and model.estimated_requests == 1
        status = await acme_status(stub)
        assert (status.spent.micros, status.reserved.micros) == (0, 0)


@asynccontextmanager
async def servicer_of(
    kind: type[CostServicer], tmp_path: Path
) -> AsyncIterator[cost_pb2_grpc.CostServiceStub]:
    """A cost server in process whose servicer is ``kind`` (the real one, or one changed for a
    test) on a real SQLite ledger, and a stub to it."""
    ledger = await SqliteLedger.open(tmp_path / "ledger.sqlite3")
    servicer = kind(cost_settings(tmp_path).registry, ledger)
    server, port, _ = create_server(
        "127.0.0.1:0",
        lambda s: cost_pb2_grpc.add_CostServiceServicer_to_server(servicer, s),  # type: ignore[no-untyped-call]
        [SERVICE_NAME],
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield cost_pb2_grpc.CostServiceStub(ch)
    finally:
        await server.stop(None)
        await ledger.close()


class OlderCostServicer(CostServicer):
    """The cost service as it was before RecordUsageBatch: the generated base answers
    UNIMPLEMENTED for it."""

    RecordUsageBatch = cost_pb2_grpc.CostServiceServicer.RecordUsageBatch


async def test_an_older_cost_service_gets_the_records_one_by_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with servicer_of(OlderCostServicer, tmp_path) as stub:
        meter = Meter(stub, tmp_path / "j", source="router")
        await meter.start()
        try:
            charges = await settle(meter, [f"k{i}" for i in range(20)])
            assert all(await asyncio.gather(*(c.recorded(5) for c in charges)))
            more = await settle(meter, ["k20"])
            assert await more[0].recorded(5)
        finally:
            await meter.stop()
        assert (await summary(stub)).requests == 21
    assert not meter.rejected_path.exists()
    warned = [r for r in caplog.records if "no RecordUsageBatch" in r.getMessage()]
    assert len(warned) == 1  # asked once, then remembered


class SlowReserveCostServicer(CostServicer):
    """The real cost service, whose Reserve answers only after ``delay_s``."""

    delay_s = 0.5

    async def Reserve(self, request, context):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.delay_s)
        return await super().Reserve(request, context)


@pytest.mark.parametrize(
    ("hold_s", "outcome"),
    [
        (0.2, "out of time"),  # the call's own deadline ends before the answer
        (5.0, "allowed"),  # the cost service's allowance (0.3 s) ends first: it is unavailable
    ],
)
async def test_a_reservation_waits_no_longer_than_the_call_has(
    tmp_path: Path, hold_s: float, outcome: str
) -> None:
    async with servicer_of(SlowReserveCostServicer, tmp_path) as stub:
        await stub.SetBudget(
            cost_pb2.SetBudgetRequest(
                budget=cost_pb2.Budget(
                    tenant="acme", limit=common_pb2.Money(micros=10**9, currency="USD")
                )
            ),
            timeout=5,
        )
        meter = Meter(
            stub, tmp_path / "j", source="router", settings=MeterSettings(reserve_timeout_s=0.3)
        )
        await meter.start()
        try:
            begin = meter.begin(
                "k1", MODEL, input_tokens=10, max_output_tokens=100, tenant="acme",
                budget=Budgeted(10, 100, hold_s),
            )  # fmt: skip
            t0 = asyncio.get_running_loop().time()
            if outcome == "out of time":
                with pytest.raises(DeadlineExceeded) as e:
                    await begin
                assert e.value.reason == "DEADLINE_EXCEEDED"
            else:  # on_budget_unavailable = "allow": made, unreserved
                charge = await begin
                assert charge.intent.reservation_id == ""
                charge.settle(10, 20)
            elapsed = asyncio.get_running_loop().time() - t0
            assert elapsed < min(hold_s, 0.3) + 0.25
        finally:
            await meter.stop()


async def test_budget_leases_take_shares_without_a_round_trip(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    """With leases (4 calls' most at once), 10 budgeted calls ask the cost service three
    times; a call too large for the live lease retires it and gets a lease of its own size;
    the calls are billed on their own, and each lease is given back once it is retired and
    its calls have settled (the last one when the meter stops). A tenant with no budget asks
    once (then the unbudgeted cache answers)."""
    async with cost_service(tmp_path) as stub:
        limit = common_pb2.Money(micros=10**9, currency="USD")
        await stub.SetBudget(
            cost_pb2.SetBudgetRequest(budget=cost_pb2.Budget(tenant="acme", limit=limit)),
            timeout=5,
        )
        settings = MeterSettings(lease_calls=4, lease_s=30.0)
        meter = Meter(stub, tmp_path / "j", source="router", settings=settings)
        await meter.start()
        hold = Budgeted(input_tokens=10, max_output_tokens=100, hold_s=5)
        try:
            charges = []
            for i in range(10):
                charge = await meter.begin(
                    f"k{i}", MODEL, input_tokens=10, max_output_tokens=100, tenant="acme",
                    budget=hold,
                )  # fmt: skip
                charges.append(charge)
            assert all(c.intent.reservation_id == "" for c in charges)  # shares
            big = await meter.begin(
                "big", MODEL, input_tokens=10, max_output_tokens=100, tenant="acme",
                budget=Budgeted(input_tokens=10, max_output_tokens=1000, hold_s=5),
            )  # fmt: skip
            assert big.intent.reservation_id == ""  # a share of a lease of its size
            status = await acme_status(stub)
            small, large = 4 * (10 * 2 + 100 * 8), 4 * (10 * 2 + 1000 * 8)  # 2/8 per MTok
            assert status.reserved.micros == 3 * small + large
            for c in [*charges, big]:
                c.settle(10, 20)
            for _ in range(3):
                await meter.begin(
                    "free", MODEL, input_tokens=1, max_output_tokens=1, budget=hold
                )  # the default tenant: no budget
            assert all(await asyncio.gather(*(c.recorded(5) for c in [*charges, big])))
            await asyncio.sleep(0.2)  # the releases, in the background
            status = await acme_status(stub)
            # the retired leases are given back; the live one (3 shares left) still holds
            assert status.spent.micros == 11 * (10 * 2 + 20 * 8)
            assert status.reserved.micros == large
        finally:
            await meter.stop()
        await asyncio.sleep(0.2)
        status = await acme_status(stub)
        assert status.reserved.micros == 0  # stopping gives the last lease back
    assert calls(spans, "Reserve") == 4 + 1  # four leases, and the tenant with no budget


async def test_with_leases_a_tenant_with_no_budget_is_asked_once_a_call(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    """No unbudgeted cache: each call asks for a lease, hears that no budget covers it, and
    goes ahead without asking again for itself."""
    async with cost_service(tmp_path) as stub:
        settings = MeterSettings(lease_calls=4, unbudgeted_cache_s=0)
        meter = Meter(stub, tmp_path / "j", source="router", settings=settings)
        await meter.start()
        hold = Budgeted(input_tokens=10, max_output_tokens=100, hold_s=5)
        try:
            for i in range(3):
                charge = await meter.begin(
                    f"k{i}", MODEL, input_tokens=10, max_output_tokens=100, budget=hold
                )
                assert charge.intent.reservation_id == ""
                charge.settle(10, 20)
        finally:
            await meter.stop()
    assert calls(spans, "Reserve") == 3
