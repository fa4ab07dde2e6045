"""Simulated calls are marked in the ledger and kept out of real spend: real cost, voter and
router servers (in process), the real provider simulator behind two providers (one marked
``simulated``, one standing in for a real, billed provider), a simulated LLM judge, a real
SQLite ledger. A simulated answer, unary or streamed, and the simulated judge's vote are
recorded ``simulated``: never reserved, never counted by a budget, and reported apart from the
real spend."""

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

from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.simulator import ProviderSimulator
from tests.integration.inproc import free_port, mesh_config, reason, start_services

ACME = (("quorum-tenant", "acme"),)


@dataclass
class Mesh:
    router: router_pb2_grpc.RouterServiceStub
    cost: cost_pb2_grpc.CostServiceStub
    ledger_path: Path


@asynccontextmanager
async def quorum_mesh(sim: ProviderSimulator, tmp_path: Path) -> AsyncIterator[Mesh]:
    """Cost, voter (one simulated LLM judge) and router with input moderation; ``sim-chat``
    is simulated, ``real-chat`` is served by the same simulator as a real provider."""
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port, voter_port = free_port(), free_port()
    data = mesh_config(
        sim.url, cost_port=cost_port, voter_port=voter_port, moderation="input", simulated=True
    )
    data["providers"]["real"] = {"base_url": sim.url}
    data["models"] = {
        "sim-chat": data["models"]["sim-chat"],
        "real-chat": {"provider": "real", "input_per_mtok": "1.00", "output_per_mtok": "2.00"},
        "sim-judge": {
            "provider": "sim",
            "input_per_mtok": "1.00",
            "output_per_mtok": "2.00",
            "moderation": {"weight": 1.0, "categories": ["violence", "hate"]},
        },
    }
    data["voter"]["address"] = f"127.0.0.1:{voter_port}"
    data["usage"]["unbudgeted_cache_s"] = 0  # a budget set mid-test holds at once
    async with AsyncExitStack() as stack:
        router_port = await start_services(stack, data, env)
        rch = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{router_port}"))
        cch = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{cost_port}"))
        yield Mesh(
            router_pb2_grpc.RouterServiceStub(rch),
            cost_pb2_grpc.CostServiceStub(cch),
            tmp_path / "ledger.sqlite3",
        )


def complete(model: str) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(prompt="Tell me about tea.", model=model, max_tokens=50)


async def set_budget(cost: cost_pb2_grpc.CostServiceStub, limit_micros: int) -> None:
    limit = common_pb2.Money(micros=limit_micros, currency="USD")
    await cost.SetBudget(
        cost_pb2.SetBudgetRequest(budget=cost_pb2.Budget(tenant="acme", limit=limit)), timeout=5
    )


async def summary_with(
    cost: cost_pb2_grpc.CostServiceStub, real: int, simulated: int, timeout_s: float = 10.0
) -> cost_pb2.GetUsageSummaryResponse:
    """The summary once it holds ``real`` and ``simulated`` calls (or the time is up: the
    router and the voter send their records in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = await cost.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
        done = (s.requests, s.simulated_requests) == (real, simulated)
        if done or time.monotonic() > deadline:
            return s
        await asyncio.sleep(0.05)


async def test_simulated_calls_are_marked_and_kept_out_of_spend_and_budgets(
    sim: ProviderSimulator, tmp_path: Path
) -> None:
    async with quorum_mesh(sim, tmp_path) as mesh:
        router, cost = mesh.router, mesh.cost
        await set_budget(cost, 100)  # far less than any real call's most
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await router.Complete(complete("real-chat"), metadata=ACME, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(refused.value) == "BUDGET_EXCEEDED"
        # the same budget does not stop a simulated call: nothing is reserved for it
        unary = await router.Complete(complete("sim-chat"), metadata=ACME, timeout=10)
        assert unary.simulated and unary.text.startswith("[simulated")
        assert unary.input_moderation.is_safe  # the simulated judge voted (not reserved either)
        events = [
            e
            async for e in router.CompleteStream(
                router_pb2.CompleteStreamRequest(request=complete("sim-chat")),
                metadata=ACME,
                timeout=10,
            )
        ]
        streamed = events[-1].summary
        assert streamed.simulated and streamed.model == "sim-chat"
        await set_budget(cost, 10**9)
        real = await router.Complete(complete("real-chat"), metadata=ACME, timeout=10)
        assert not real.simulated

        # one real call; two simulated answers and four simulated judge calls (every
        # request's prompt was moderated, the refused one's too)
        s = await summary_with(cost, real=1, simulated=6)
        assert [(m.model, m.requests) for m in s.models] == [("real-chat", 1)]
        assert (s.requests, list(s.totals)) == (1, [real.cost])
        assert [(m.model, m.requests) for m in s.simulated_models] == [
            ("sim-chat", 2),
            ("sim-judge", 4),
        ]
        assert s.simulated_requests == 6
        sim_chat = s.simulated_models[0].cost.micros
        assert sim_chat == unary.cost.micros + streamed.cost.micros > 0  # priced all the same
        (simulated_total,) = s.simulated_totals
        assert simulated_total.micros == sim_chat + s.simulated_models[1].cost.micros

        # the budget counts the real call only, and holds nothing for simulated ones
        (status,) = (
            await cost.GetBudgetStatus(cost_pb2.GetBudgetStatusRequest(tenant="acme"), timeout=5)
        ).budgets
        assert (status.spent.micros, status.reserved.micros) == (real.cost.micros, 0)

        # the report's real total is the real call; the simulated calls have rows of their own
        report = await cost.GetUsageReport(
            cost_pb2.GetUsageReportRequest(group_by=cost_pb2.REPORT_GROUPING_TENANT), timeout=5
        )
        assert [(r.key, r.requests) for r in report.rows] == [("acme", 1)]
        assert list(report.totals) == [real.cost] and report.requests == 1
        assert [(r.key, r.requests) for r in report.simulated_rows] == [("acme", 6)]
        (sim_total,) = report.simulated_currency_totals
        assert sim_total.cost == simulated_total and report.simulated_requests == 6

    # and the ledger's rows say which calls were simulated
    with sqlite3.connect(mesh.ledger_path) as conn:
        rows = conn.execute(
            "SELECT model, source, simulated, COUNT(*) FROM usage GROUP BY model, source, simulated"
        ).fetchall()
    conn.close()
    assert sorted(rows) == [
        ("real-chat", "router", 0, 1),
        ("sim-chat", "router", 1, 2),
        ("sim-judge", "voter", 1, 4),
    ]
