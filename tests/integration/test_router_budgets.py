"""Budgets hold at the router: real router and cost servers (in process), the real simulator,
a real SQLite ledger. Each paid call is reserved before the provider is asked, committed by
its usage record, released when the provider billed nothing; a hard budget that cannot hold
a call refuses it with RESOURCE_EXHAUSTED and no provider call."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2
from quorum.simulator import Fault
from tests.integration.inproc import free_port, mesh_config, reason, router_and_cost
from tests.integration.test_billing import complete, ledger_rows, mesh

__all__ = ["mesh"]  # the fixture

ACME = (("quorum-tenant", "acme"),)


def budget(limit: int, tenant: str = "acme") -> cost_pb2.SetBudgetRequest:
    return cost_pb2.SetBudgetRequest(
        budget=cost_pb2.Budget(tenant=tenant, limit=common_pb2.Money(micros=limit, currency="USD"))
    )


async def status(cost, tenant: str = "acme") -> cost_pb2.BudgetStatus:
    (s,) = (await cost.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(tenant=tenant))).budgets
    return s


async def settled(cost, tenant: str = "acme", timeout_s: float = 10.0) -> cost_pb2.BudgetStatus:
    """The status once nothing is reserved any more (records committed, releases done)."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = await status(cost, tenant)
        if s.reserved.micros == 0 or time.monotonic() > deadline:
            return s
        await asyncio.sleep(0.05)


async def test_a_budget_that_cannot_hold_the_call_refuses_it_before_the_provider(mesh, sim):
    router, cost, _ = mesh
    await cost.SetBudget(budget(100), timeout=5)  # far less than one call's most
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await router.Complete(complete("hello", max_tokens=100), metadata=ACME, timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(e.value) == "BUDGET_EXCEEDED"
    st = rpc_status.from_call(e.value)
    info = error_details_pb2.ErrorInfo()
    assert st is not None and st.details[0].Unpack(info)
    assert info.metadata["tenant"] == "acme" and info.metadata["limit_micros"] == "100"
    assert int(info.metadata["requested_micros"]) > 100
    assert sim.stats["completions"] == 0
    # the default tenant has no budget: its call goes through
    ok = await router.Complete(complete("hello", max_tokens=100), timeout=10)
    assert ok.text


async def test_a_call_commits_its_reservation_with_what_it_cost(mesh, sim):
    router, cost, _ = mesh
    await cost.SetBudget(budget(1_000_000), timeout=5)
    resp = await router.Complete(complete("hello", max_tokens=100), metadata=ACME, timeout=10)
    assert resp.usage_recorded
    s = await settled(cost)
    assert (s.spent.micros, s.reserved.micros) == (resp.cost.micros, 0)
    summary = await ledger_rows(cost, 1)
    assert summary.requests == 1 and summary.totals[0].micros == resp.cost.micros


async def test_a_call_the_provider_refused_releases_its_reservation(mesh, sim):
    router, cost, _ = mesh
    await cost.SetBudget(budget(1_000_000), timeout=5)
    sim.add_fault(Fault(kind="status", status=400))
    with pytest.raises(grpc.aio.AioRpcError):
        await router.Complete(complete("hello", max_tokens=100), metadata=ACME, timeout=10)
    s = await settled(cost)
    assert (s.spent.micros, s.reserved.micros) == (0, 0)


async def test_a_bad_tenant_is_invalid(mesh, sim):
    router, _, _ = mesh
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await router.Complete(
            complete("hello"), metadata=(("quorum-tenant", "a tenant"),), timeout=10
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sim.stats["completions"] == 0


async def test_one_request_id_belongs_to_its_tenant(mesh, sim):
    router, _, _ = mesh
    mine = await router.Complete(complete("same words", "rid-t"), metadata=ACME, timeout=10)
    theirs = await router.Complete(complete("same words", "rid-t"), timeout=10)
    assert not mine.replayed and not theirs.replayed
    assert sim.stats["completions"] == 2


@pytest.mark.parametrize(
    "mesh", [{}, {"lease_calls": 8, "lease_s": 0.5}], indirect=True, ids=["per-call", "leases"]
)
async def test_64_clients_through_the_router_never_spend_past_the_budget(mesh, sim):
    """64 clients, 4 calls each, on one budget that holds about 30 calls' maxima: calls past
    it are refused before the provider; what was spent stays within the limit, and every
    provider call is in the ledger once. The same with budget leases (8 calls' most reserved
    at once, shares taken in the router; a lease gives out shares for 0.5 s)."""
    router, cost, _ = mesh
    sim.latency_s = 0.02
    limit = 7_000
    await cost.SetBudget(budget(limit), timeout=5)
    outcomes: list[str] = []

    async def client(i: int) -> None:
        for j in range(4):
            try:
                await router.Complete(
                    complete(f"client {i} call {j}", max_tokens=100), metadata=ACME, timeout=20
                )
                outcomes.append("ok")
            except grpc.aio.AioRpcError as e:
                assert reason(e) == "BUDGET_EXCEEDED", e
                outcomes.append("refused")

    await asyncio.gather(*(client(i) for i in range(64)))
    s = await settled(cost)
    assert s.reserved.micros == 0
    assert s.spent.micros <= limit
    assert outcomes.count("ok") > 0 and outcomes.count("refused") > 0
    summary = await ledger_rows(cost, outcomes.count("ok"))
    assert summary.requests == sim.stats["completions"] == outcomes.count("ok")
    assert summary.totals[0].micros == s.spent.micros


@pytest.mark.parametrize("mesh", [{"unbudgeted_cache_s": 0.5}], indirect=True)
async def test_a_new_budget_takes_hold_within_the_unbudgeted_cache_time(mesh, sim):
    """A tenant no budget covered is not asked about again for [usage] unbudgeted_cache_s:
    a budget set meanwhile holds from the first call after that."""
    router, cost, _ = mesh
    await router.Complete(complete("hello", max_tokens=100), metadata=ACME, timeout=10)
    await cost.SetBudget(budget(100), timeout=5)
    await asyncio.sleep(0.6)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await router.Complete(complete("hello", max_tokens=100), metadata=ACME, timeout=10)
    assert reason(e.value) == "BUDGET_EXCEEDED"
    assert sim.stats["completions"] == 1


async def test_near_its_budget_a_tenant_steps_down_to_a_cheaper_model(sim, tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    data = mesh_config(sim.url, cost_port=free_port(), voter_port=free_port(), moderation="none")
    data["models"]["sim-chat"]["tasks"] = ["chat"]
    data["routing"]["budget_cache_s"] = 0.5
    data["models"]["sim-cheap"] = {
        "provider": "sim", "input_per_mtok": "0.10", "output_per_mtok": "0.20", "tasks": ["chat"],
    }  # fmt: skip
    async with router_and_cost(data, env) as s:
        r, c = s.router, s.cost
        await c.SetBudget(budget(10_000), timeout=5)
        ask = complete("hello", max_tokens=100)
        before = await r.Complete(ask, metadata=ACME, timeout=10)
        assert before.model == "sim-chat"  # the default model, 1.00/2.00
        spent = cost_pb2.RecordUsageRequest(
            request_id="earlier", model="sim-chat", tenant="acme",
            usage=common_pb2.Usage(input_tokens=2500, output_tokens=3000),
        )  # fmt: skip
        await c.RecordUsage(spent, timeout=5)  # 8,500 more micro-USD: past 80%
        await asyncio.sleep(0.6)  # the router's view of the budget is at most 0.5 s old
        after = await r.Complete(ask, metadata=ACME, timeout=10)
        assert after.model == "sim-cheap"
        assert "stepped down" in after.route_reason and "8" in after.route_reason
        named = await r.Complete(
            complete("hello", model="sim-chat", max_tokens=100), metadata=ACME, timeout=10
        )
        assert named.model == "sim-chat"  # a named model is kept
        other = await r.Complete(ask, timeout=10)
        assert other.model == "sim-chat"  # the default tenant has no budget
