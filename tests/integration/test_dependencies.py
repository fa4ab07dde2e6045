"""Dependencies that are down: answers come within the deadline, nothing is lost, health
says so. Real in-process gRPC servers on loopback, a real SQLite ledger, a real simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quorum import config
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.ids import free_ports
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.simulator import ProviderSimulator
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc
from services.cost import server as cost_server
from services.cost.config import from_config as cost_settings
from services.router import server as router_server
from services.router.config import RouterSettings
from services.voter import server as voter_server
from services.voter.config import VoterSettings


def free_port() -> int:
    return free_ports(1)[0]


async def wait_for_recorded(cost_port: int, timeout_s: float = 15.0):
    """Poll the cost service's summary until it holds a record (or the time is up)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cost_port}") as ch:
        stub = cost_pb2_grpc.CostServiceStub(ch)
        deadline = time.monotonic() + timeout_s
        while True:
            summary = await stub.GetUsageSummary(
                cost_pb2.GetUsageSummaryRequest(), timeout=5, wait_for_ready=True
            )
            if summary.requests or time.monotonic() > deadline:
                return summary
            await asyncio.sleep(0.2)


def mesh_config(sim_url: str, *, cost_port: int, voter_port: int, moderation: str) -> dict:
    data = config.load(env={})
    data["providers"]["sim"] = {"base_url": sim_url, "simulated": True}
    data["models"] = {
        "sim-chat": {"provider": "sim", "input_per_mtok": "1.00", "output_per_mtok": "2.00"},
        "profanity-check": {
            "triton_model": "profanity_check",
            "moderation": {"weight": 1.0, "categories": ["harassment", "hate"]},
        },
    }
    data["registry"] = {"default_model": "sim-chat"}
    data["router"] |= {
        "cost_address": f"127.0.0.1:{cost_port}",
        "voter_address": f"127.0.0.1:{voter_port}",
        "moderation": moderation,
    }
    data["voter"] |= {
        "cost_address": f"127.0.0.1:{cost_port}",
        "triton_address": f"127.0.0.1:{free_port()}",  # nothing listens there
    }
    data["cost"]["address"] = f"127.0.0.1:{cost_port}"
    return data


@pytest.fixture
def sim():
    with ProviderSimulator() as s:
        yield s


async def start(create, settings) -> AsyncIterator:
    server, port, monitor, close = await create(settings)
    await server.start()
    await monitor.update()
    return server, port, monitor, close


async def stop(handle) -> None:
    server, _, monitor, close = handle
    await monitor.stop()
    await server.stop(0.5)
    await close()


async def test_cost_down_usage_is_spooled_then_recorded_once(sim, tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port = free_port()
    data = mesh_config(sim.url, cost_port=cost_port, voter_port=free_port(), moderation="none")
    router = await start(router_server.create, RouterSettings.from_config(data, env))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router[1]}") as ch:
            stub = router_pb2_grpc.RouterServiceStub(ch)
            resp = await stub.Complete(
                router_pb2.CompleteRequest(request_id="r1", prompt="hello"), timeout=10
            )
        assert resp.text and not resp.usage_recorded  # answered although cost is down
        spool = tmp_path / "router-usage-spool.jsonl"
        assert spool.exists() and len(spool.read_text().splitlines()) == 1

        cost = await start(cost_server.create, cost_settings(data, env))
        try:
            summary = await wait_for_recorded(cost_port)
            assert summary.requests == 1
            async with grpc.aio.insecure_channel(f"127.0.0.1:{cost_port}") as ch:
                stub = cost_pb2_grpc.CostServiceStub(ch)
                assert summary.usage == resp.usage
                assert summary.totals[0].micros == resp.cost.micros
                assert not spool.exists()
                # sending the same record again never counts it twice
                dup = await stub.RecordUsage(
                    cost_pb2.RecordUsageRequest(
                        request_id="r1:complete", model="sim-chat", usage=resp.usage
                    ),
                    timeout=5,
                )
                assert dup.duplicate
                again = await stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
                assert again.requests == 1
        finally:
            await stop(cost)
    finally:
        await stop(router)


async def test_spooled_usage_survives_a_router_restart(sim, tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port = free_port()
    data = mesh_config(sim.url, cost_port=cost_port, voter_port=free_port(), moderation="none")
    router = await start(router_server.create, RouterSettings.from_config(data, env))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router[1]}") as ch:
        await router_pb2_grpc.RouterServiceStub(ch).Complete(
            router_pb2.CompleteRequest(request_id="r2", prompt="hello"), timeout=10
        )
    await stop(router)  # the cost service never came: the record stays on disk
    assert (tmp_path / "router-usage-spool.jsonl").exists()

    cost = await start(cost_server.create, cost_settings(data, env))
    router = await start(router_server.create, RouterSettings.from_config(data, env))
    try:
        assert (await wait_for_recorded(cost_port)).requests == 1
    finally:
        await stop(router)
        await stop(cost)


async def test_voter_down_router_answers_unavailable_quickly(sim, tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    data = mesh_config(sim.url, cost_port=free_port(), voter_port=free_port(), moderation="input")
    router = await start(router_server.create, RouterSettings.from_config(data, env))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router[1]}") as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            start_t = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await router_pb2_grpc.RouterServiceStub(ch).Complete(
                    router_pb2.CompleteRequest(prompt="hello"), timeout=10
                )
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "voter" in e.value.details()
            assert time.monotonic() - start_t < 5
    finally:
        await stop(router)


async def test_triton_down_voter_not_serving_and_never_says_safe(tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    data = mesh_config(
        "http://127.0.0.1:9/v1", cost_port=free_port(), voter_port=0, moderation="input"
    )
    data["voter"]["address"] = "127.0.0.1:0"
    voter = await start(voter_server.create, VoterSettings.from_config(data, env))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{voter[1]}") as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="quorum.voter.v1.VoterService"), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            start_t = time.monotonic()
            resp = await voter_pb2_grpc.VoterServiceStub(ch).Moderate(
                voter_pb2.ModerateRequest(text="a perfectly nice sentence"), timeout=10
            )
            assert time.monotonic() - start_t < 5
        assert not resp.is_safe and resp.requires_review
        assert resp.votes[0].status == voter_pb2.VOTE_STATUS_ERROR
        assert "only 0 of 1 models voted" in resp.reasons[0]
    finally:
        await stop(voter)


async def test_records_the_cost_service_refuses_are_kept_aside_not_retried(tmp_path):
    from quorum.usage import UsageRecord, UsageRecorder

    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port = free_port()
    data = mesh_config(
        "http://127.0.0.1:9/v1", cost_port=cost_port, voter_port=0, moderation="none"
    )
    cost = await start(cost_server.create, cost_settings(data, env))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cost_port}") as ch:
            spool = tmp_path / "spool.jsonl"
            recorder = UsageRecorder(cost_pb2_grpc.CostServiceStub(ch), spool)
            bad = UsageRecord("k1", "no-such-model", 1, 1, "router", 1_700_000_000_000_000)
            assert await recorder.record(bad, timeout_s=5) is None
            good = UsageRecord("k2", "sim-chat", 1, 1, "router", 1_700_000_000_000_000)
            assert (await recorder.record(good, timeout_s=5)).cost.micros == 3
            assert not spool.exists()  # nothing waits to be re-sent
            kept = recorder.rejected_path.read_text().splitlines()
            assert len(kept) == 1 and '"no-such-model"' in kept[0]
    finally:
        await stop(cost)
