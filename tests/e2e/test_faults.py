"""Faults under load: a real Triton (the binary), voter, cost and router (in process) on the
simulator, eight clients sending moderated completions without pause, while Triton is
SIGKILLed and started again on the same port, then the voter is stopped and started again.

What must hold: every call ends OK or UNAVAILABLE / DEADLINE_EXCEEDED (nothing else, never
UNKNOWN or INTERNAL); every OK answer was moderated by a quorum of real judges (moderation
fails closed: no answer ever passes unmoderated while a judge is down); calls succeed again
once the parts are back; and the ledger holds exactly the provider's calls."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import grpc
import pytest

from quorum import config
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.ids import free_ports
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.simulator import ProviderSimulator
from quorum.tritonserver import TritonOptions, TritonServer, default_model_repository
from services.cost import server as cost_server
from services.cost.config import from_config as cost_settings
from services.router import server as router_server
from services.router.config import RouterSettings
from services.voter import server as voter_server
from services.voter.config import VoterSettings
from tests.integration.inproc import mesh_config, start, stop

pytestmark = [pytest.mark.e2e, pytest.mark.triton]

ALLOWED = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}


async def wait_until(check, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "the mesh did not recover in time"
        await asyncio.sleep(0.2)


@pytest.fixture
def sim():
    with ProviderSimulator() as s:
        yield s


async def test_kill_and_restart_triton_then_the_voter_under_load(sim, tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port, voter_port, t_http, t_grpc, t_metrics = free_ports(5)
    data = mesh_config(sim.url, cost_port=cost_port, voter_port=voter_port, moderation="input")
    data["voter"] |= {"address": f"127.0.0.1:{voter_port}", "triton_address": f"127.0.0.1:{t_grpc}"}
    defaults = config.load(env={})  # the embedded local judges, all four
    for name in ("profanity-check", "nsfw-check", "text-heads", "ngram-heads"):
        data["models"][name] = defaults["models"][name]
    options = TritonOptions(
        model_repository=default_model_repository(),
        http_port=t_http, grpc_port=t_grpc, metrics_port=t_metrics,
    )  # fmt: skip
    triton = TritonServer(options)
    triton.start()
    cost = await start(cost_server.create, cost_settings(data, env))
    voter = await start(voter_server.create, VoterSettings.from_config(data, env))
    router = await start(router_server.create, RouterSettings.from_config(data, env))
    outcomes: Counter[str] = Counter()
    unmoderated: list[str] = []
    running = True
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router[1]}") as ch:
            stub = router_pb2_grpc.RouterServiceStub(ch)

            async def one() -> str:
                try:
                    resp = await stub.Complete(
                        router_pb2.CompleteRequest(prompt="What is a quorum?", max_tokens=30),
                        timeout=5,
                    )
                except grpc.aio.AioRpcError as e:
                    return e.code().name
                mod = resp.input_moderation
                judges = {v.model for v in mod.votes if v.status == 1}  # VOTE_STATUS_OK
                if not (mod.quorum and mod.is_safe and judges):
                    unmoderated.append(str(mod))
                return "OK"

            async def client() -> None:
                while running:
                    outcomes[await one()] += 1

            async def healthy() -> bool:
                return await one() == "OK"

            clients = [asyncio.create_task(client()) for _ in range(8)]
            await wait_until(healthy)
            await asyncio.sleep(1.0)

            os.kill(triton.pid, signal.SIGKILL)  # type: ignore[arg-type]
            await asyncio.sleep(2.0)
            down = Counter(outcomes)
            triton.stop()
            triton = TritonServer(options)
            await asyncio.to_thread(triton.start)
            await wait_until(healthy)
            await asyncio.sleep(1.0)

            await stop(voter)  # the voter goes away while calls are in flight
            await asyncio.sleep(2.0)
            voter = await start(voter_server.create, VoterSettings.from_config(data, env))
            await wait_until(healthy)
            await asyncio.sleep(1.0)
            running = False
            await asyncio.gather(*clients)
        ledger = await ledger_rows(cost_port, sim.stats["completions"])
    finally:
        running = False
        await stop(router)
        await stop(voter)
        await stop(cost)
        triton.stop()

    assert set(outcomes) <= ALLOWED, outcomes
    assert outcomes["OK"] > 0 and outcomes["UNAVAILABLE"] > 0, outcomes
    assert down["UNAVAILABLE"] > 0  # the Triton outage was seen, and answered as one
    assert not unmoderated, unmoderated[:2]
    # every provider call is in the ledger, once
    assert ledger == sim.stats["completions"]


async def ledger_rows(cost_port: int, expected: int, timeout_s: float = 15.0) -> int:
    """The ledger's rows for the simulated model once they reach ``expected`` (or the time is
    up: the router hands its records over in the background)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cost_port}") as ch:
        stub = cost_pb2_grpc.CostServiceStub(ch)
        deadline = time.monotonic() + timeout_s
        while True:
            summary = await stub.GetUsageSummary(
                cost_pb2.GetUsageSummaryRequest(model="sim-chat"), timeout=5
            )
            if summary.requests >= expected or time.monotonic() > deadline:
                return int(summary.requests)
            await asyncio.sleep(0.2)
