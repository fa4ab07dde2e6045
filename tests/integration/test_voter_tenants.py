"""Moderation is the tenant's spend: real cost, voter and router servers (in process), the
provider simulator as the voter's paid LLM judges, a real SQLite ledger. Each judge call is
billed to the tenant the text is moderated for and reserved against its hard budgets; who
may name that tenant follows the keys (a client only its own)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from quorum.auth import KeyStore, Role
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.grpcerrors import from_rpc_status
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.simulator import ProviderSimulator
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc
from tests.integration.inproc import error_info, free_port, mesh_config, start_services

Metadata = tuple[tuple[str, str], ...]
CATEGORIES = ["violence", "adult", "hate", "spam", "harassment"]


@dataclass
class Mesh:
    router: router_pb2_grpc.RouterServiceStub
    voter: voter_pb2_grpc.VoterServiceStub
    cost: cost_pb2_grpc.CostServiceStub
    #: "authorization" metadata by key name (empty with keys off)
    keys: dict[str, Metadata]


def judge(provider_model: str) -> dict:
    return {
        "provider": "sim",
        "provider_model": provider_model,
        "input_per_mtok": "1.00",
        "output_per_mtok": "2.00",
        "moderation": {"weight": 1.0, "categories": CATEGORIES},
    }


@asynccontextmanager
async def quorum_mesh(
    sim: ProviderSimulator, tmp_path: Path, *, keys: bool, voter_limits: dict | None = None
) -> AsyncIterator[Mesh]:
    """Cost, voter (two simulated LLM judges, no local ones) and router with input
    moderation, with keys on or off (and the voter's ``[voter.limits]``)."""
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    tokens: dict[str, str] = {}
    if keys:
        store = KeyStore(tmp_path / "keys.json")
        for name, tenant, role in (
            ("acme", "acme", Role.CLIENT),
            ("admin", "ops", Role.ADMIN),
            ("service", "quorum", Role.SERVICE),
        ):
            tokens[name] = store.create(tenant, role)[1]
        env["QUORUM_SERVICE_KEY"] = tokens["service"]
    cost_port, voter_port = free_port(), free_port()
    data = mesh_config(sim.url, cost_port=cost_port, voter_port=voter_port, moderation="input")
    data["models"] = {
        "sim-chat": data["models"]["sim-chat"],
        "sim-judge": judge("sim-judge-1"),
        "sim-judge-b": judge("sim-judge-2"),
    }
    data["voter"]["address"] = f"127.0.0.1:{voter_port}"
    if voter_limits is not None:
        data["voter"]["limits"] = voter_limits
    data["auth"] |= {"enabled": keys}
    data["usage"]["unbudgeted_cache_s"] = 0  # a budget set mid-test holds at once
    async with AsyncExitStack() as stack:
        router_port = await start_services(stack, data, env)
        rch = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{router_port}"))
        vch = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{voter_port}"))
        cch = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{cost_port}"))
        yield Mesh(
            router_pb2_grpc.RouterServiceStub(rch),
            voter_pb2_grpc.VoterServiceStub(vch),
            cost_pb2_grpc.CostServiceStub(cch),
            {n: (("authorization", f"Bearer {t}"),) for n, t in tokens.items()},
        )


async def judge_usage(
    mesh: Mesh, want: dict[str, int], *, metadata: Metadata = (), timeout_s: float = 10.0
) -> dict[str, int]:
    """The judges' calls per tenant in the ledger, once they are ``want`` (the voter sends
    its records in the background) or the time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        got: dict[str, int] = {}
        for model in ("sim-judge", "sim-judge-b"):
            report = await mesh.cost.GetUsageReport(
                cost_pb2.GetUsageReportRequest(
                    model=model, group_by=cost_pb2.REPORT_GROUPING_TENANT
                ),
                metadata=metadata,
                timeout=5,
            )
            for row in report.rows:
                got[row.key] = got.get(row.key, 0) + row.requests
        if got == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


def moderate(text: str = "have a nice day", **kw) -> voter_pb2.ModerateRequest:
    return voter_pb2.ModerateRequest(text=text, **kw)


async def fails(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value


async def test_a_tenants_completion_bills_its_input_moderation_to_it(sim, tmp_path):
    async with quorum_mesh(sim, tmp_path, keys=True) as mesh:
        resp = await mesh.router.Complete(
            router_pb2.CompleteRequest(prompt="hello", max_tokens=50),
            metadata=mesh.keys["acme"],
            timeout=10,
        )
        assert [v.status for v in resp.input_moderation.votes] == [voter_pb2.VOTE_STATUS_OK] * 2
        # both judges' calls are acme's: not the router's service key's tenant, nor "default"
        admin = mesh.keys["admin"]
        assert await judge_usage(mesh, {"acme": 2}, metadata=admin) == {"acme": 2}
        # and acme sees them as its own usage
        own = await mesh.cost.GetUsageSummary(
            cost_pb2.GetUsageSummaryRequest(model="sim-judge"), metadata=mesh.keys["acme"]
        )
        assert own.requests == 1


async def test_who_may_name_the_tenant_of_a_moderation(sim, tmp_path):
    async with quorum_mesh(sim, tmp_path, keys=True) as mesh:
        acme, service = mesh.keys["acme"], mesh.keys["service"]
        err = await fails(mesh.voter.Moderate(moderate(tenant="globex"), metadata=acme))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(err).reason == "OTHER_TENANT"
        err = await fails(mesh.voter.Moderate(moderate(tenant="a b"), metadata=service))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(error_info(err).metadata) == {"field": "tenant"}
        assert not sim.requests  # nothing was judged, nothing billed
        # a client may name its own tenant (or none); a service key any tenant
        assert (await mesh.voter.Moderate(moderate(tenant="acme"), metadata=acme)).is_safe
        assert (await mesh.voter.Moderate(moderate(), metadata=acme)).is_safe
        assert (await mesh.voter.Moderate(moderate(tenant="globex"), metadata=service)).is_safe
        admin = mesh.keys["admin"]
        assert await judge_usage(mesh, {"acme": 4, "globex": 2}, metadata=admin) == {
            "acme": 4,
            "globex": 2,
        }


async def test_with_keys_off_the_metadata_or_the_field_names_the_tenant(sim, tmp_path):
    async with quorum_mesh(sim, tmp_path, keys=False) as mesh:
        acme = (("quorum-tenant", "acme"),)
        await mesh.voter.Moderate(moderate(), metadata=acme)
        await mesh.voter.Moderate(moderate(tenant="globex"), metadata=acme)  # the field wins
        await mesh.voter.Moderate(moderate())
        # the router passes the request's tenant on, for its output moderation too
        await mesh.router.Complete(
            router_pb2.CompleteRequest(
                prompt="hello", max_tokens=50, moderation=router_pb2.MODERATION_MODE_BOTH
            ),
            metadata=(("quorum-tenant", "initech"),),
            timeout=10,
        )
        want = {"acme": 2, "globex": 2, "default": 2, "initech": 4}
        assert await judge_usage(mesh, want) == want


async def test_a_judge_its_tenants_budget_cannot_hold_abstains_uncalled(sim, tmp_path):
    async with quorum_mesh(sim, tmp_path, keys=False) as mesh:
        acme = (("quorum-tenant", "acme"),)
        tight = cost_pb2.Budget(
            tenant="acme",
            model="sim-judge-b",
            limit=common_pb2.Money(micros=100, currency="USD"),  # less than one judge call
        )
        await mesh.cost.SetBudget(cost_pb2.SetBudgetRequest(budget=tight), timeout=5)
        # the other judge keeps the quorum: the verdict stands on its vote alone
        resp = await mesh.voter.Moderate(moderate(), metadata=acme, timeout=10)
        assert resp.is_safe and resp.quorum
        votes = {v.model: v for v in resp.votes}
        assert votes["sim-judge"].status == voter_pb2.VOTE_STATUS_OK
        refused = votes["sim-judge-b"]
        assert refused.status == voter_pb2.VOTE_STATUS_ERROR
        assert refused.error.startswith("BUDGET_EXCEEDED") and "acme" in refused.error
        assert "sim-judge-b abstained (error)" in resp.reasons
        # the refused judge alone: no quorum, for want of budget (not an outage to retry)
        err = await fails(mesh.voter.Moderate(moderate(models=["sim-judge-b"]), metadata=acme))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(err)
        assert info.reason == "BUDGET_EXCEEDED" and info.metadata["model"] == "sim-judge-b"
        # through the router, with both judges out of budget: the client learns why, and the
        # completion is not made
        tight.model = "sim-judge"
        await mesh.cost.SetBudget(cost_pb2.SetBudgetRequest(budget=tight), timeout=5)
        err = await fails(
            mesh.router.Complete(
                router_pb2.CompleteRequest(prompt="hello", max_tokens=50),
                metadata=acme,
                timeout=10,
            )
        )
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(err).reason == "BUDGET_EXCEEDED" and "moderation" in err.details()
        assert not [r for r in sim.requests if r.model == "sim-chat-1"]
        # another tenant is not held by acme's budget
        other = await mesh.voter.Moderate(moderate(), metadata=(("quorum-tenant", "globex"),))
        assert all(v.status == voter_pb2.VOTE_STATUS_OK for v in other.votes)
        assert [r.model for r in sim.requests if r.model == "sim-judge-2"] == ["sim-judge-2"]
        assert await judge_usage(mesh, {"acme": 1, "globex": 2}) == {"acme": 1, "globex": 2}


async def test_the_voter_limits_its_clients_not_the_router(
    sim: ProviderSimulator, tmp_path: Path
) -> None:
    limits = {"requests_per_minute": 2, "tenants": {"ops": {"requests_per_minute": 0}}}
    async with quorum_mesh(sim, tmp_path, keys=True, voter_limits=limits) as mesh:
        acme = mesh.keys["acme"]
        req = voter_pb2.ModerateRequest(text="have a nice day")
        for _ in range(2):
            await mesh.voter.Moderate(req, metadata=acme, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await mesh.voter.Moderate(req, metadata=acme, timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(e.value)
        assert info.reason == "RATE_LIMITED" and info.metadata["tenant"] == "acme"
        # the router moderates acme's prompts with its service key: not the voter's to limit
        for _ in range(3):
            resp = await mesh.router.Complete(
                router_pb2.CompleteRequest(prompt="hello there", model="sim-chat"),
                metadata=acme,
                timeout=20,
            )
            assert resp.input_moderation.is_safe
        # a tenant's own limit (0: none) overrides the default
        for _ in range(4):
            await mesh.voter.Moderate(req, metadata=mesh.keys["admin"], timeout=10)


def batch(texts: list[str], **kw) -> voter_pb2.ModerateBatchRequest:
    return voter_pb2.ModerateBatchRequest(texts=texts, **kw)


async def test_a_batch_follows_the_tenant_rules_and_bills_each_text(sim, tmp_path):
    async with quorum_mesh(sim, tmp_path, keys=True) as mesh:
        acme, service = mesh.keys["acme"], mesh.keys["service"]
        err = await fails(mesh.voter.ModerateBatch(batch(["hi"], tenant="globex"), metadata=acme))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(err).reason == "OTHER_TENANT"
        assert not sim.requests
        resp = await mesh.voter.ModerateBatch(
            batch(["have a nice day", "see you at lunch", "thanks!"], request_id="b7"),
            metadata=acme,
            timeout=10,
        )
        assert [r.moderated.request_id for r in resp.results] == ["b7:0", "b7:1", "b7:2"]
        assert all(r.moderated.is_safe for r in resp.results)
        await mesh.voter.ModerateBatch(batch(["hello"], tenant="globex"), metadata=service)
        # each text's judge calls are billed to the batch's tenant, one record a call
        admin = mesh.keys["admin"]
        assert await judge_usage(mesh, {"acme": 6, "globex": 2}, metadata=admin) == {
            "acme": 6,
            "globex": 2,
        }


def judge_keys(tmp_path: Path) -> list[str]:
    """The request ids the judges' calls are recorded under (each key's part before
    ":judge:"), sorted."""
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        keys = [k for (k,) in conn.execute("SELECT request_id FROM usage")]
    return sorted(k.split(":judge:")[0] for k in keys if ":judge:" in k)


async def test_a_batch_moderates_each_text_under_the_request_id_it_is_given(sim, tmp_path):
    async with quorum_mesh(sim, tmp_path, keys=False) as mesh:
        acme = (("quorum-tenant", "acme"),)
        resp = await mesh.voter.ModerateBatch(
            batch(["have a nice day", "thanks!"], request_ids=["r1:input", "r2:input"]),
            metadata=acme,
            timeout=10,
        )
        assert [r.moderated.request_id for r in resp.results] == ["r1:input", "r2:input"]
        assert await judge_usage(mesh, {"acme": 4}) == {"acme": 4}
        assert judge_keys(tmp_path) == ["r1:input"] * 2 + ["r2:input"] * 2
        for ids, field, reason in (
            (["a"], "request_ids", "BAD_REQUEST_ID"),
            (["a", ""], "request_ids[1]", "BAD_REQUEST_ID"),
            (["a", "x" * 129], "request_ids[1]", "BAD_REQUEST_ID"),
            (["a", "a"], "request_ids[1]", "DUPLICATE_REQUEST_ID"),
        ):
            err = await fails(
                mesh.voter.ModerateBatch(batch(["hi", "hello"], request_ids=ids), metadata=acme)
            )
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (error_info(err).reason, error_info(err).metadata["field"]) == (reason, field)
        assert len(sim.requests) == 4  # nothing judged for a refused batch


async def test_concurrent_completions_bill_each_input_moderation_to_its_own_request(sim, tmp_path):
    """The router sends concurrent moderations to the voter together (ModerateBatch); each is
    still its request's, its tenant's and under its own id."""
    async with quorum_mesh(sim, tmp_path, keys=False) as mesh:
        tenants = ["acme" if i % 3 else "globex" for i in range(12)]
        resps = await asyncio.gather(
            *(
                mesh.router.Complete(
                    router_pb2.CompleteRequest(prompt=f"hello {i}", request_id=f"c{i}"),
                    metadata=(("quorum-tenant", tenant),),
                    timeout=10,
                )
                for i, tenant in enumerate(tenants)
            )
        )
        assert [r.input_moderation.request_id for r in resps] == [f"c{i}:input" for i in range(12)]
        assert all(len(r.input_moderation.votes) == 2 for r in resps)
        want = {"acme": 2 * tenants.count("acme"), "globex": 2 * tenants.count("globex")}
        assert await judge_usage(mesh, want) == want
        assert judge_keys(tmp_path) == sorted(f"c{i}:input" for i in range(12) for _ in "ab")


async def test_a_text_whose_judges_its_budget_refuses_fails_alone_in_its_batch(sim, tmp_path):
    async with quorum_mesh(sim, tmp_path, keys=False) as mesh:
        tight = cost_pb2.Budget(
            tenant="acme", model="sim-judge-b", limit=common_pb2.Money(micros=100, currency="USD")
        )
        await mesh.cost.SetBudget(cost_pb2.SetBudgetRequest(budget=tight), timeout=5)
        resp = await mesh.voter.ModerateBatch(
            batch(["have a nice day", "hello"], models=["sim-judge-b"]),
            metadata=(("quorum-tenant", "acme"),),
            timeout=10,
        )
        for result in resp.results:
            assert result.WhichOneof("result") == "error"
            assert result.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            err = from_rpc_status(result.error, service="voter")
            assert err.reason == "BUDGET_EXCEEDED" and err.metadata["model"] == "sim-judge-b"


async def test_a_batch_counts_one_request_a_text_against_the_voters_limits(
    sim: ProviderSimulator, tmp_path: Path
) -> None:
    limits = {"requests_per_minute": 3}
    async with quorum_mesh(sim, tmp_path, keys=True, voter_limits=limits) as mesh:
        acme = mesh.keys["acme"]
        await mesh.voter.ModerateBatch(batch(["a", "b"]), metadata=acme, timeout=10)
        err = await fails(mesh.voter.ModerateBatch(batch(["c", "d"]), metadata=acme, timeout=10))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(err)
        assert info.reason == "RATE_LIMITED" and info.metadata["requests"] == "2"
        # the refused batch took nothing: one text is still allowed
        await mesh.voter.Moderate(moderate(), metadata=acme, timeout=10)
        err = await fails(mesh.voter.ModerateBatch(batch(["x"] * 4), metadata=acme, timeout=10))
        assert "send fewer texts" in err.details()
        # the service key (the router) is not the voter's to limit
        await mesh.voter.ModerateBatch(batch(["x"] * 5), metadata=mesh.keys["service"])
