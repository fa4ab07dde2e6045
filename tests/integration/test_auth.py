"""API keys on a running mesh: real cost and router servers (in process) with [auth] on, the
real simulator, a real keys file. Who may call what, per role and tenant; and a service
without keys refuses to listen beyond loopback."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quorum import auth
from quorum.auth import KeyStore, Role
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2
from quorum.registry import ConfigError
from quorum.router.v1 import router_pb2
from services.cost import server as cost_server
from services.cost.config import from_config as cost_settings
from services.router import server as router_server
from services.router.config import RouterSettings
from tests.integration.inproc import error_info, free_port, mesh_config, reason, router_and_cost


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def secured(sim, tmp_path):
    """Cost and router with keys on; yields (router, cost, tokens by name, key store)."""
    store = KeyStore(tmp_path / "keys.json")
    tokens = {
        name: store.create(tenant, role)[1]
        for name, tenant, role in (
            ("acme", "acme", Role.CLIENT),
            ("globex", "globex", Role.CLIENT),
            ("admin", "ops", Role.ADMIN),
            ("service", "quorum", Role.SERVICE),
        )
    }
    env = {"QUORUM_DATA_DIR": str(tmp_path), "QUORUM_SERVICE_KEY": tokens["service"]}
    data = mesh_config(sim.url, cost_port=free_port(), voter_port=free_port(), moderation="none")
    data["auth"] |= {"enabled": True}
    async with router_and_cost(data, env) as s:
        yield s.router, s.cost, tokens, store, (s.router_channel, s.cost_channel)


async def fails(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value


def hello() -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(prompt="hello", max_tokens=50)


async def test_a_call_without_a_valid_key_is_unauthenticated(secured, sim):
    router, cost, _, _, _ = secured
    for metadata, why in (
        ((), "NO_CREDENTIALS"),
        (bearer("qk_000000000000_" + "A" * 43), "INVALID_KEY"),
        ((("authorization", "Basic eA=="),), "BAD_CREDENTIALS"),
    ):
        err = await fails(router.Complete(hello(), metadata=metadata, timeout=10))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and reason(err) == why
        err = await fails(cost.ListPrices(cost_pb2.ListPricesRequest(), metadata=metadata))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert sim.stats["completions"] == 0


async def test_health_and_reflection_need_no_key(secured):
    _, _, _, _, (rch, cch) = secured
    for ch in (rch, cch):
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_client_key_completes_and_is_billed_to_its_tenant(secured, sim):
    router, cost, tokens, _, _ = secured
    resp = await router.Complete(hello(), metadata=bearer(tokens["acme"]), timeout=10)
    assert resp.text and resp.usage_recorded  # the router's service key wrote the record
    report = await cost.GetUsageReport(
        cost_pb2.GetUsageReportRequest(group_by=cost_pb2.REPORT_GROUPING_TENANT),
        metadata=bearer(tokens["admin"]),
    )
    assert [(r.key, r.requests) for r in report.rows] == [("acme", 1)]
    # a client reads its own tenant only; asking for nothing means its own
    own = await cost.GetUsageSummary(
        cost_pb2.GetUsageSummaryRequest(), metadata=bearer(tokens["acme"])
    )
    other = await cost.GetUsageSummary(
        cost_pb2.GetUsageSummaryRequest(), metadata=bearer(tokens["globex"])
    )
    assert (own.requests, other.requests) == (1, 0)
    err = await fails(
        cost.GetUsageReport(cost_pb2.GetUsageReportRequest(tenant="acme"), metadata=bearer(tokens["globex"]))
    )  # fmt: skip
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and reason(err) == "OTHER_TENANT"


async def test_a_client_cannot_write_usage_or_budgets_or_act_for_another_tenant(secured, sim):
    router, cost, tokens, _, _ = secured
    acme = bearer(tokens["acme"])
    forged = cost_pb2.RecordUsageRequest(
        request_id="forged", model="sim-chat", source="router", tenant="globex",
        usage=common_pb2.Usage(input_tokens=10**7, output_tokens=10**7),
    )  # fmt: skip
    for call in (
        cost.RecordUsage(forged, metadata=acme),
        cost.Commit(forged, metadata=acme),
        cost.RecordUsageBatch(cost_pb2.RecordUsageBatchRequest(records=[forged]), metadata=acme),
        cost.Reserve(cost_pb2.ReserveRequest(request_id="r", model="sim-chat"), metadata=acme),
        cost.SetBudget(
            cost_pb2.SetBudgetRequest(
                budget=cost_pb2.Budget(
                    tenant="acme", limit=common_pb2.Money(micros=1, currency="USD")
                )
            ),
            metadata=acme,
        ),
        cost.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(tenant="globex"), metadata=acme),
        router.Complete(hello(), metadata=(*acme, ("quorum-tenant", "globex")), timeout=10),
    ):
        err = await fails(call)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
    admin = bearer(tokens["admin"])
    summary = await cost.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), metadata=admin)
    assert summary.requests == 0 and sim.stats["completions"] == 0


async def test_with_keys_a_tenant_no_key_belongs_to_is_not_found(secured):
    _, cost, tokens, store, _ = secured
    admin = bearer(tokens["admin"])

    def budget(tenant: str) -> cost_pb2.SetBudgetRequest:
        limit = common_pb2.Money(micros=10**6, currency="USD")
        return cost_pb2.SetBudgetRequest(budget=cost_pb2.Budget(tenant=tenant, limit=limit))

    async def watch_first(tenant: str) -> cost_pb2.WatchBudgetResponse:
        call = cost.WatchBudget(cost_pb2.WatchBudgetRequest(tenant=tenant), metadata=admin)
        try:
            return await call.read()
        finally:
            call.cancel()

    for call, field in (
        (cost.SetBudget(budget("nosuch"), metadata=admin), "budget.tenant"),
        (cost.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(tenant="nosuch"), metadata=admin),
         "tenant"),
        (cost.GetUsageReport(cost_pb2.GetUsageReportRequest(tenant="nosuch"), metadata=admin),
         "tenant"),
        (cost.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(tenant="nosuch"), metadata=admin),
         "tenant"),
        (watch_first("nosuch"), "tenant"),
    ):  # fmt: skip
        err = await fails(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
        info = error_info(err)
        assert info.reason == "TENANT_NOT_FOUND"
        assert dict(info.metadata) == {"field": field, "tenant": "nosuch"}
        assert (err.details() or "").startswith(f"{field}: no tenant 'nosuch'")
    # nothing was written
    found = await cost.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(), metadata=admin)
    assert found.budgets == []
    # deleting needs only the budget: none there
    err = await fails(
        cost.DeleteBudget(cost_pb2.DeleteBudgetRequest(tenant="nosuch"), metadata=admin)
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND and reason(err) == "BUDGET_NOT_FOUND"
    # a key made now makes its tenant at once; a revoked one keeps it
    key, _ = store.create("newco", Role.CLIENT)
    await cost.SetBudget(budget("newco"), metadata=admin)
    store.revoke(key.id)
    await asyncio.sleep(auth.RELOAD_EVERY_S + 0.05)
    (status,) = (
        await cost.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(tenant="newco"), metadata=admin)
    ).budgets
    assert status.budget.tenant == "newco"
    assert (await watch_first("newco")).status.budget.tenant == "newco"


async def test_without_keys_any_tenant_name_is_one(sim, tmp_path):
    data = mesh_config(sim.url, cost_port=free_port(), voter_port=free_port(), moderation="none")
    async with router_and_cost(data, {"QUORUM_DATA_DIR": str(tmp_path)}) as s:
        limit = common_pb2.Money(micros=10**6, currency="USD")
        await s.cost.SetBudget(
            cost_pb2.SetBudgetRequest(budget=cost_pb2.Budget(tenant="nosuch", limit=limit))
        )
        (status,) = (
            await s.cost.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(tenant="nosuch"))
        ).budgets
        assert status.budget.tenant == "nosuch"
        report = await s.cost.GetUsageReport(cost_pb2.GetUsageReportRequest(tenant="other"))
        assert report.rows == []


async def test_an_admin_sets_budgets_that_hold_the_tenants_calls(secured, sim):
    router, cost, tokens, _, _ = secured
    await cost.SetBudget(
        cost_pb2.SetBudgetRequest(
            budget=cost_pb2.Budget(tenant="acme", limit=common_pb2.Money(micros=10, currency="USD"))
        ),
        metadata=bearer(tokens["admin"]),
    )
    err = await fails(router.Complete(hello(), metadata=bearer(tokens["acme"]), timeout=10))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await router.Complete(hello(), metadata=bearer(tokens["globex"]), timeout=10)).text
    status = await cost.GetBudgetStatus(
        cost_pb2.GetBudgetStatusRequest(), metadata=bearer(tokens["acme"])
    )
    assert [b.budget.tenant for b in status.budgets] == ["acme"]


async def test_a_revoked_key_stops_working_within_a_second(secured, sim):
    router, _, tokens, store, _ = secured
    await router.Complete(hello(), metadata=bearer(tokens["globex"]), timeout=10)
    (key,) = [k for k in store.all() if k.tenant == "globex"]
    store.revoke(key.id)
    await asyncio.sleep(auth.RELOAD_EVERY_S + 0.1)
    err = await fails(router.Complete(hello(), metadata=bearer(tokens["globex"]), timeout=10))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_without_keys_a_service_refuses_to_listen_beyond_loopback(sim, tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    data = mesh_config(sim.url, cost_port=free_port(), voter_port=free_port(), moderation="none")
    data["router"]["address"] = "0.0.0.0:0"
    with pytest.raises(ConfigError, match=r"\[auth\] enabled"):
        await router_server.create(RouterSettings.from_config(data, env))
    data["cost"]["address"] = "0.0.0.0:0"
    with pytest.raises(ConfigError, match=r"\[auth\] enabled"):
        await cost_server.create(cost_settings(data, env))
