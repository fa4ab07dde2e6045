"""Budgets through the real cost server (SQLite and PostgreSQL): SetBudget, GetBudgetStatus,
WatchBudget, Reserve / Commit / Release, their errors, and 64 clients on one budget."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import duration_pb2

from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2
from tests.cost.test_cost_service import error_info, rpc_error, usage_request

if TYPE_CHECKING:
    from tests.cost.conftest import CostHarness

# gpt-4.1: 2.00 / 8.00 USD per million tokens, so one input token is 2 micro-USD and one
# output token 8


def budget(limit: int, tenant: str = "acme", **kw: object) -> cost_pb2.SetBudgetRequest:
    return cost_pb2.SetBudgetRequest(
        budget=cost_pb2.Budget(
            tenant=tenant, limit=common_pb2.Money(micros=limit, currency="USD"), **kw
        )
    )


def in_currency(currency: str) -> cost_pb2.SetBudgetRequest:
    req = budget(100_000)
    req.budget.limit.currency = currency
    return req


def reserve(
    rid: str, tenant: str = "acme", out: int = 1000, **kw: object
) -> cost_pb2.ReserveRequest:
    return cost_pb2.ReserveRequest(
        request_id=rid, tenant=tenant, model="gpt-4.1", input_tokens=500, max_output_tokens=out,
        **kw,
    )  # fmt: skip


def spent(req: cost_pb2.RecordUsageRequest, tenant: str = "acme", reservation: str = ""):
    req.tenant = tenant
    req.reservation_id = reservation
    return req


async def test_a_budget_reports_what_its_tenant_spent(cost: CostHarness) -> None:
    set_resp = await cost.stub.SetBudget(budget(100_000, time_zone="Europe/Paris"), timeout=5)
    assert set_resp.status.spent.micros == 0
    assert set_resp.status.budget.alert_thresholds == [0.8, 1.0]
    assert not set_resp.status.HasField("days_left")
    await cost.stub.RecordUsage(spent(usage_request("a")), timeout=5)  # 6,000 micro-USD
    await cost.stub.RecordUsage(spent(usage_request("b"), tenant="globex"), timeout=5)
    await cost.stub.RecordUsage(usage_request("c"), timeout=5)  # the default tenant
    (s,) = (await cost.stub.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(tenant="acme"))).budgets
    assert s.budget.tenant == "acme" and s.budget.time_zone == "Europe/Paris"
    assert (s.spent.micros, s.spent.currency) == (6_000, "USD")
    assert s.remaining.micros == 94_000 and s.reserved.micros == 0
    assert s.HasField("days_left") and s.days_left > 0
    assert s.projected.micros >= 6_000 and s.daily_rate.micros > 0
    assert [(a.threshold, a.reached) for a in s.alerts] == [(0.8, False), (1.0, False)]
    assert s.period_start.ToSeconds() < s.period_end.ToSeconds()
    assert s.used == pytest.approx(0.06)
    every = await cost.stub.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest())
    assert [b.budget.tenant for b in every.budgets] == ["acme"]


async def test_reserve_commit_release(cost: CostHarness) -> None:
    await cost.stub.SetBudget(budget(20_000), timeout=5)
    r = await cost.stub.Reserve(reserve("r1"), timeout=5)
    assert r.amount.micros == 500 * 2 + 1000 * 8 and r.amount.currency == "USD"
    assert r.reservation_id.startswith("rsv_") and r.expires_at.seconds > 0
    again = await cost.stub.Reserve(reserve("r1"), timeout=5)
    assert again.reservation_id == r.reservation_id  # idempotent
    # 9,000 held; a second call's 9,000 fits, a third does not
    r2 = await cost.stub.Reserve(reserve("r2"), timeout=5)
    err = await rpc_error(cost.stub.Reserve(reserve("r3"), timeout=5))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(err)
    assert info.reason == "BUDGET_EXCEEDED"
    assert info.metadata["limit_micros"] == "20000"
    assert info.metadata["reserved_micros"] == "18000"
    assert info.metadata["requested_micros"] == "9000"
    # the call cost less than its maximum: commit the actual, the rest is free again
    done = await cost.stub.Commit(
        spent(usage_request("call-1", input_tokens=500, output_tokens=100), reservation=r.reservation_id),
        timeout=5,
    )  # fmt: skip
    assert done.cost.micros == 1_800 and not done.duplicate
    again_done = await cost.stub.Commit(
        spent(usage_request("call-1", input_tokens=500, output_tokens=100), reservation=r.reservation_id),
        timeout=5,
    )  # fmt: skip
    assert again_done.duplicate
    await cost.stub.Release(cost_pb2.ReleaseRequest(reservation_id=r2.reservation_id), timeout=5)
    (s,) = (await cost.stub.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(tenant="acme"))).budgets
    assert (s.spent.micros, s.reserved.micros) == (1_800, 0)
    await cost.stub.Reserve(reserve("r3"), timeout=5)


async def test_wrong_commits_and_releases(cost: CostHarness) -> None:
    await cost.stub.SetBudget(budget(10**12), timeout=5)
    r = await cost.stub.Reserve(reserve("r1"), timeout=5)
    err = await rpc_error(cost.stub.Commit(spent(usage_request("c")), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).metadata["field"] == "reservation_id"
    err = await rpc_error(
        cost.stub.Commit(spent(usage_request("c"), reservation="rsv_x"), timeout=5)
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err).reason == "RESERVATION_NOT_FOUND"
    err = await rpc_error(
        cost.stub.Commit(spent(usage_request("c"), tenant="globex", reservation=r.reservation_id), timeout=5)
    )  # fmt: skip
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).metadata["field"] == "tenant"
    await cost.stub.Release(cost_pb2.ReleaseRequest(reservation_id=r.reservation_id), timeout=5)
    err = await rpc_error(
        cost.stub.Commit(spent(usage_request("c"), reservation=r.reservation_id), timeout=5)
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "RESERVATION_RELEASED"
    summary = await cost.stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
    assert summary.requests == 0  # nothing half-written


@pytest.mark.parametrize(
    ("call", "code", "field"),
    [
        (lambda s: s.SetBudget(budget(0)), "INVALID_ARGUMENT", "budget.limit.micros"),
        (lambda s: s.SetBudget(budget(1, tenant="")), "INVALID_ARGUMENT", "budget.tenant"),
        (lambda s: s.SetBudget(budget(1, tenant="a b")), "INVALID_ARGUMENT", "budget.tenant"),
        (lambda s: s.SetBudget(budget(1, time_zone="Mars/Base")), "INVALID_ARGUMENT", "time_zone"),
        (lambda s: s.SetBudget(budget(1, model="gpt-9")), "NOT_FOUND", None),
        (lambda s: s.SetBudget(cost_pb2.SetBudgetRequest()), "INVALID_ARGUMENT", "budget"),
        (lambda s: s.SetBudget(in_currency("usd")), "INVALID_ARGUMENT", "budget.limit.currency"),
        # well formed, but no exchange rate converts the models' USD into it (the defaults
        # have none): every Reserve would fail NO_EXCHANGE_RATE
        (lambda s: s.SetBudget(in_currency("XYZ")), "INVALID_ARGUMENT", "budget.limit.currency"),
        (lambda s: s.SetBudget(in_currency("CNY")), "INVALID_ARGUMENT", "budget.limit.currency"),
        (
            lambda s: s.SetBudget(budget(1, alert_thresholds=[-0.5])),
            "INVALID_ARGUMENT",
            "budget.alert_thresholds",
        ),
        (lambda s: s.Reserve(reserve("")), "INVALID_ARGUMENT", "request_id"),
        (lambda s: s.Reserve(reserve("r", out=-1)), "INVALID_ARGUMENT", "max_output_tokens"),
        (lambda s: s.Reserve(reserve("r", tenant="x" * 65)), "INVALID_ARGUMENT", "tenant"),
        (
            lambda s: s.Reserve(reserve("r", ttl=duration_pb2.Duration(seconds=-1))),
            "INVALID_ARGUMENT",
            "ttl",
        ),
        (
            lambda s: s.Reserve(reserve("r", ttl=duration_pb2.Duration(seconds=86_401))),
            "INVALID_ARGUMENT",
            "ttl",
        ),
        (lambda s: s.Release(cost_pb2.ReleaseRequest(reservation_id="rsv_x")), "NOT_FOUND", None),
        (
            lambda s: s.DeleteBudget(cost_pb2.DeleteBudgetRequest(tenant="acme")),
            "NOT_FOUND",
            None,
        ),
        (
            lambda s: s.WatchBudget(cost_pb2.WatchBudgetRequest()).read(),
            "INVALID_ARGUMENT",
            "tenant",
        ),
    ],
)
async def test_bad_budget_calls_name_the_field(cost: CostHarness, call, code: str, field) -> None:
    err = await rpc_error(call(cost.stub))
    assert err.code() == getattr(grpc.StatusCode, code)
    if field is not None:
        assert error_info(err).metadata["field"] == field
    status = await cost.stub.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(), timeout=5)
    assert list(status.budgets) == []  # nothing half-written


async def test_a_call_no_budget_covers_gets_no_reservation(cost: CostHarness) -> None:
    r = await cost.stub.Reserve(reserve("r1"), timeout=5)
    assert r.reservation_id == "" and r.amount.micros == 9_000


async def test_watch_sends_the_status_then_each_change_with_new_alerts(cost: CostHarness) -> None:
    await cost.stub.SetBudget(budget(10_000), timeout=5)
    stream = cost.stub.WatchBudget(cost_pb2.WatchBudgetRequest(tenant="acme"), timeout=20)
    first = await stream.read()
    assert first.status.spent.micros == 0 and list(first.new_alerts) == []
    await cost.stub.RecordUsage(spent(usage_request("a", input_tokens=500, output_tokens=900)))
    second = await stream.read()  # 8,200 of 10,000: past 80%
    assert second.status.spent.micros == 8_200
    assert list(second.new_alerts) == [0.8]
    await cost.stub.RecordUsage(spent(usage_request("b", input_tokens=500, output_tokens=900)))
    third = await stream.read()
    assert third.status.exceeded and list(third.new_alerts) == [1.0]
    stream.cancel()


async def test_64_clients_never_spend_past_the_budget(cost: CostHarness) -> None:
    """Each client reserves the most its call may cost (500 input tokens, max 1,000 output),
    then commits what the call used: spent never passes the limit, the ledger agrees, and
    once every call is done the room left is exactly what Reserve admits."""
    limit, most = 300_000, 9_000
    await cost.stub.SetBudget(budget(limit), timeout=5)
    refused = 0

    async def client(i: int) -> None:
        nonlocal refused
        for j in range(6):
            try:
                r = await cost.stub.Reserve(reserve(f"r-{i}-{j}"), timeout=10)
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                refused += 1
                continue
            used = usage_request(f"c-{i}-{j}", input_tokens=500, output_tokens=(i * j) % 1000)
            await cost.stub.Commit(spent(used, reservation=r.reservation_id), timeout=10)

    await asyncio.gather(*(client(i) for i in range(64)))
    (s,) = (await cost.stub.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(tenant="acme"))).budgets
    assert s.reserved.micros == 0
    assert 0 < s.spent.micros <= limit
    assert refused > 0
    fits = limit - s.spent.micros >= most
    last = cost.stub.Reserve(reserve("last"), timeout=10)
    if fits:
        await last
    else:
        assert (await rpc_error(last)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    summary = await cost.stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
    assert summary.totals[0].micros == s.spent.micros


async def test_usage_report_by_local_day_and_by_tenant(cost: CostHarness) -> None:
    late = 1_793_461_500  # 2026-10-31T15:45:00Z: already 1 November in Tokyo
    await cost.stub.RecordUsage(spent(usage_request("a", at=late)), timeout=5)
    await cost.stub.RecordUsage(spent(usage_request("b", at=late - 86_400), tenant="globex"))
    await cost.stub.RecordUsage(spent(usage_request("c", at=late + 86_400, model="deepseek-v3.2")))
    by_day = await cost.stub.GetUsageReport(
        cost_pb2.GetUsageReportRequest(
            group_by=cost_pb2.REPORT_GROUPING_DAY, time_zone="Asia/Tokyo"
        ),
        timeout=5,
    )
    assert [(r.key, r.requests, r.cost.micros) for r in by_day.rows] == [
        ("2026-10-31", 1, 6_000), ("2026-11-01", 1, 6_000), ("2026-11-02", 1, 350),
    ]  # fmt: skip
    assert by_day.time_zone == "Asia/Tokyo" and by_day.requests == 3
    assert [(t.micros, t.currency) for t in by_day.totals] == [(12_350, "USD")]
    by_tenant = await cost.stub.GetUsageReport(
        cost_pb2.GetUsageReportRequest(group_by=cost_pb2.REPORT_GROUPING_TENANT), timeout=5
    )
    assert [(r.key, r.requests) for r in by_tenant.rows] == [("acme", 2), ("globex", 1)]
    only = await cost.stub.GetUsageReport(
        cost_pb2.GetUsageReportRequest(tenant="acme", model="deepseek-v3.2"), timeout=5
    )
    assert [(r.key, r.cost.micros) for r in only.rows] == [("deepseek-v3.2", 350)]
    err = await rpc_error(
        cost.stub.GetUsageReport(cost_pb2.GetUsageReportRequest(time_zone="Nowhere/At_All"))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).metadata["field"] == "time_zone"


async def test_the_briefs_comparison_table(cost: CostHarness) -> None:
    """`quorum cost report --compare`: 10M output tokens a month cost $80 on gpt-4.1 alone
    (the brief's figure), and a mix is the weighted sum at the cost service's prices."""
    import json
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quorum.cli", "cost", "report", "--compare", "--json",
        "--output-share", "1", "--mix", "deepseek-v3.2=0.7,gemini-2.5-flash=0.2,gpt-4.1=0.1",
        "--cost", cost.address, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    rows = {r["what"]: int(r["micros"]) for r in json.loads(out)["rows"]}
    assert rows["gpt-4.1"] == 80_000_000 and rows["deepseek-v3.2"] == 4_200_000
    mix = next(v for k, v in rows.items() if k.startswith("mix "))
    assert mix == round(0.7 * 4_200_000 + 0.2 * 25_000_000 + 0.1 * 80_000_000)
    panel = next(v for k, v in rows.items() if k.startswith("voting panel"))
    assert panel == 4_200_000 + 25_000_000 + 80_000_000
