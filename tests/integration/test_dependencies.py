"""Dependencies that are down: answers come within the deadline, nothing is lost, health
says so. Real in-process gRPC servers on loopback, a real SQLite ledger, a real simulator."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.usage import Meter, replay
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc
from services.cost import server as cost_server
from services.cost.config import from_config as cost_settings
from services.router import server as router_server
from services.router.config import RouterSettings
from services.voter import server as voter_server
from services.voter.config import VoterSettings
from tests.integration.inproc import (
    free_port,
    mesh_config,
    reason,
    start,
    stop,
    wait_for_recorded,
)


async def test_cost_down_usage_waits_in_the_journal_then_is_recorded_once(sim, tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port = free_port()
    data = mesh_config(sim.url, cost_port=cost_port, voter_port=free_port(), moderation="none")
    router = await start(router_server.create, RouterSettings.from_config(data, env))
    journal = tmp_path / "router-usage.journal"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router[1]}") as ch:
            stub = router_pb2_grpc.RouterServiceStub(ch)
            resp = await stub.Complete(
                router_pb2.CompleteRequest(request_id="r1", prompt="hello"), timeout=10
            )
        assert resp.text and not resp.usage_recorded  # answered although cost is down
        for _ in range(50):  # the journal's writer notes the settled call in the background
            intents, pending = replay(journal)
            if not intents:
                break
            await asyncio.sleep(0.05)
        assert not intents and len(pending) == 1
        (key,) = pending
        assert key.startswith("r1:complete:")

        cost = await start(cost_server.create, cost_settings(data, env))
        try:
            summary = await wait_for_recorded(cost_port)
            assert summary.requests == 1
            async with grpc.aio.insecure_channel(f"127.0.0.1:{cost_port}") as ch:
                stub = cost_pb2_grpc.CostServiceStub(ch)
                assert summary.usage == resp.usage
                assert summary.totals[0].micros == resp.cost.micros
                for _ in range(50):  # the journal notes the record as taken
                    if not replay(journal)[1]:
                        break
                    await asyncio.sleep(0.05)
                assert replay(journal) == ({}, {})
                # sending the same record again never counts it twice
                dup = await stub.RecordUsage(
                    cost_pb2.RecordUsageRequest(request_id=key, model="sim-chat", usage=resp.usage),
                    timeout=5,
                )
                assert dup.duplicate
                again = await stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
                assert again.requests == 1
        finally:
            await stop(cost)
    finally:
        await stop(router)


async def test_journaled_usage_survives_a_router_restart(sim, tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port = free_port()
    data = mesh_config(sim.url, cost_port=cost_port, voter_port=free_port(), moderation="none")
    router = await start(router_server.create, RouterSettings.from_config(data, env))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router[1]}") as ch:
        await router_pb2_grpc.RouterServiceStub(ch).Complete(
            router_pb2.CompleteRequest(request_id="r2", prompt="hello"), timeout=10
        )
    await stop(router)  # the cost service never came: the record stays on disk
    assert len(replay(tmp_path / "router-usage.journal")[1]) == 1

    cost = await start(cost_server.create, cost_settings(data, env))
    router = await start(router_server.create, RouterSettings.from_config(data, env))
    try:
        summary = await wait_for_recorded(cost_port)
        assert summary.requests == 1 and summary.estimated_requests == 0
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
            stub = voter_pb2_grpc.VoterServiceStub(ch)
            start_t = time.monotonic()
            # the default policy: no quorum is an outage (retryable), not a verdict
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Moderate(voter_pb2.ModerateRequest(text="a nice sentence"), timeout=10)
            assert time.monotonic() - start_t < 5
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert reason(e.value) == "NO_QUORUM"
    finally:
        await stop(voter)

    data["voter"]["on_no_quorum"] = "review"
    voter = await start(voter_server.create, VoterSettings.from_config(data, env))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{voter[1]}") as ch:
            resp = await voter_pb2_grpc.VoterServiceStub(ch).Moderate(
                voter_pb2.ModerateRequest(text="a perfectly nice sentence"), timeout=10
            )
        assert not resp.is_safe and resp.requires_review and not resp.quorum
        assert resp.votes[0].status == voter_pb2.VOTE_STATUS_ERROR
        assert "only 0 of 1 models voted" in resp.reasons[0]
        # the router takes a verdict without quorum for the outage it is, never INPUT_BLOCKED
        data["router"]["voter_address"] = f"127.0.0.1:{voter[1]}"
        router = await start(router_server.create, RouterSettings.from_config(data, env))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{router[1]}") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await router_pb2_grpc.RouterServiceStub(ch).Complete(
                        router_pb2.CompleteRequest(prompt="hello"), timeout=10
                    )
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert reason(e.value) == "NO_QUORUM"
        finally:
            await stop(router)
    finally:
        await stop(voter)


async def test_records_the_cost_service_refuses_are_kept_aside_not_retried(tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port = free_port()
    data = mesh_config(
        "http://127.0.0.1:9/v1", cost_port=cost_port, voter_port=0, moderation="none"
    )
    cost = await start(cost_server.create, cost_settings(data, env))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cost_port}") as ch:
            journal = tmp_path / "usage.journal"
            meter = Meter(cost_pb2_grpc.CostServiceStub(ch), journal, source="router")
            await meter.start()
            try:
                bad = await meter.begin("k1", "no-such-model", input_tokens=1, max_output_tokens=9)
                bad.settle(1, 1)
                assert not await bad.recorded(5)
                good = await meter.begin("k2", "sim-chat", input_tokens=1, max_output_tokens=9)
                good.settle(1, 1)
                assert await good.recorded(5)
                assert meter.backlog == 0  # nothing waits to be re-sent
            finally:
                await meter.stop()
            assert replay(journal) == ({}, {})
            kept = meter.rejected_path.read_text().splitlines()
            assert len(kept) == 1 and '"no-such-model"' in kept[0]
    finally:
        await stop(cost)
