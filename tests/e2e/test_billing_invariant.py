"""Billing under hostile use, as separate processes: the cost service and the router are
killed with SIGKILL mid-load and started again, while clients reuse request ids, retry, and
cancel streams. Afterwards every call the provider answered (the simulator's own count) has
exactly one ledger row; the only surplus allowed is the calls the killed router had noted
but not settled (billed as estimates, since nobody can know whether the provider got them).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import grpc
import pytest

from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.ids import free_ports
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.simulator import ProviderSimulator
from quorum.usage import replay
from tests.integration.inproc import BILLED_SIM_CHAT

pytestmark = [pytest.mark.e2e]

CALLS = 2000
CONCURRENCY = 16
COST_KILLS_AT = (400, 900, 1500)
ROUTER_KILL_AT = 1200

CONFIG = (
    """
[registry]
default_model = "sim-chat"

[router]
moderation = "none"
cost_address = "127.0.0.1:{cost_port}"

[usage]
retry_interval_s = 0.2

[cost]
address = "127.0.0.1:{cost_port}"

"""
    + BILLED_SIM_CHAT
    + """"""
)


class Load:
    """The clients: unary calls, retried with the same id while the router is down; id reuse
    (the same request again, another request under a used id); streams cancelled midway."""

    def __init__(self, router_address: str) -> None:
        self.address = router_address
        self.done = 0
        self.outcomes: dict[str, int] = {}
        self.rng = random.Random(7)
        #: router processes killed so far (request ids are remembered per router process)
        self.router_kills = 0

    def count(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1

    async def call(self, stub: router_pb2_grpc.RouterServiceStub, i: int) -> None:
        kind = self.rng.random()
        rid = f"call-{i}"
        prompt = f"prompt {i} " + "word " * self.rng.randint(1, 30)
        for _attempt in range(40):  # retried with the same id while the router restarts
            try:
                if kind < 0.2:
                    await self.cancelled_stream(stub, rid, prompt)
                elif kind < 0.3:
                    await self.reuse(stub, rid, prompt)
                else:
                    await stub.Complete(
                        router_pb2.CompleteRequest(request_id=rid, prompt=prompt, max_tokens=40),
                        timeout=10,
                        wait_for_ready=True,
                    )
                    self.count("unary")
                return
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError(f"call {i} never got through")

    async def reuse(self, stub: router_pb2_grpc.RouterServiceStub, rid: str, prompt: str) -> None:
        req = router_pb2.CompleteRequest(request_id=rid, prompt=prompt, max_tokens=20)
        kills = self.router_kills
        first = await stub.Complete(req, timeout=10, wait_for_ready=True)
        again = await stub.Complete(req, timeout=10, wait_for_ready=True)
        assert again.text == first.text
        try:
            await stub.Complete(
                router_pb2.CompleteRequest(request_id=rid, prompt=prompt + "!"),
                timeout=10,
                wait_for_ready=True,
            )
            if self.router_kills == kills:  # a restarted router has not seen the id
                raise AssertionError("a reused id with another prompt was answered")
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        self.count("reuse")

    async def cancelled_stream(
        self, stub: router_pb2_grpc.RouterServiceStub, rid: str, prompt: str
    ) -> None:
        req = router_pb2.CompleteRequest(request_id=rid, prompt=prompt, max_tokens=60)
        call = stub.CompleteStream(
            router_pb2.CompleteStreamRequest(request=req), timeout=10, wait_for_ready=True
        )
        stop_after = self.rng.randint(1, 12)
        n = 0
        async for event in call:
            n += 1
            if event.HasField("summary") or n >= stop_after:
                break
        call.cancel()
        self.count("stream")


async def ledger(cost_address: str) -> cost_pb2.GetUsageSummaryResponse:
    async with grpc.aio.insecure_channel(cost_address) as ch:
        return await cost_pb2_grpc.CostServiceStub(ch).GetUsageSummary(
            cost_pb2.GetUsageSummaryRequest(), timeout=10, wait_for_ready=True
        )


def test_provider_calls_equal_ledger_rows_through_kills(service_process, tmp_path: Path):
    router_port, cost_port = free_ports(2)
    data_dir = tmp_path / "data"
    env = {"QUORUM_DATA_DIR": str(data_dir)}
    with ProviderSimulator(token_delay_s=0.001) as sim:
        cfg = tmp_path / "quorum.toml"
        cfg.write_text(CONFIG.format(url=sim.url, cost_port=cost_port))
        router_args = ("--config", str(cfg), "--address", f"127.0.0.1:{router_port}")
        cost_args = ("--config", str(cfg))

        cost = service_process("services.cost", *cost_args, env=env)
        router = service_process("services.router", *router_args, env=env)
        load = Load(f"127.0.0.1:{router_port}")
        unsettled: dict[str, object] = {}

        async def drive() -> None:
            nonlocal cost, router
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(CALLS):
                queue.put_nowait(i)
            async with grpc.aio.insecure_channel(load.address) as ch:
                stub = router_pb2_grpc.RouterServiceStub(ch)

                async def worker() -> None:
                    while True:
                        try:
                            i = queue.get_nowait()
                        except asyncio.QueueEmpty:
                            return
                        await load.call(stub, i)
                        load.done += 1

                async def chaos() -> None:
                    nonlocal cost, router
                    kills = sorted(
                        [(n, "cost") for n in COST_KILLS_AT] + [(ROUTER_KILL_AT, "router")]
                    )
                    for at, what in kills:
                        while load.done < at:
                            await asyncio.sleep(0.01)
                        if what == "cost":
                            cost.kill()  # SIGKILL
                            await asyncio.sleep(0.5)
                            cost = await asyncio.to_thread(
                                service_process, "services.cost", *cost_args, env=env
                            )
                        else:
                            router.kill()
                            load.router_kills += 1
                            # what the dead router noted but never settled
                            unsettled.update(replay(data_dir / "router-usage.journal")[0])
                            router = await asyncio.to_thread(
                                service_process, "services.router", *router_args, env=env
                            )

                await asyncio.gather(chaos(), *(worker() for _ in range(CONCURRENCY)))

        started = time.monotonic()
        asyncio.run(asyncio.wait_for(drive(), timeout=240))
        elapsed = time.monotonic() - started

        # the router hands its journal over; then the ledger must hold every provider call
        journal = data_dir / "router-usage.journal"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if router.proc.poll() is not None:
                break
            intents, pending = replay(journal)
            if not intents and not pending:
                break
        assert replay(journal) == ({}, {}), "usage still waiting after 30 s"
        summary = asyncio.run(ledger(f"127.0.0.1:{cost_port}"))
        provider_calls = sim.stats["completions"]

        print(
            f"\n{CALLS} client calls in {elapsed:.1f}s {load.outcomes}; provider calls "
            f"{provider_calls}; ledger rows {summary.requests} "
            f"({summary.estimated_requests} estimated); unsettled at the router kill "
            f"{len(unsettled)}"
        )
        assert sum(load.outcomes.values()) == CALLS
        assert provider_calls <= summary.requests <= provider_calls + len(unsettled)
        router.stop()
        cost.stop()
