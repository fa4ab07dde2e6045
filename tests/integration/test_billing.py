"""Every provider call is billed exactly once: real router and cost servers (in process), the
real simulator, a real SQLite ledger. The invariant each test checks is the simulator's own
count of answered calls against the ledger's rows."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.simulator import Fault
from quorum.usage import Meter, replay
from services.cost import server as cost_server
from services.cost.config import from_config as cost_settings
from services.router import server as router_server
from services.router.config import RouterSettings
from tests.integration.inproc import free_port, mesh_config, reason, router_and_cost, start, stop


@pytest.fixture
async def mesh(sim, tmp_path, request):
    """Cost and router (no moderation) in process; yields (router stub, cost stub, data),
    ``data`` naming the addresses they listen on. An indirect parameter, when given, is
    merged into ``[usage]``."""
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port = free_port()
    data = mesh_config(sim.url, cost_port=cost_port, voter_port=free_port(), moderation="none")
    data["usage"] |= getattr(request, "param", {})
    cost = await start(cost_server.create, cost_settings(data, env))
    router = await start(router_server.create, RouterSettings.from_config(data, env))
    data["router"]["address"] = f"127.0.0.1:{router[1]}"
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{router[1]}") as rch,
            grpc.aio.insecure_channel(f"127.0.0.1:{cost_port}") as cch,
        ):
            yield router_pb2_grpc.RouterServiceStub(rch), cost_pb2_grpc.CostServiceStub(cch), data
    finally:
        await stop(router)
        await stop(cost)


async def ledger_rows(
    cost, expected: int, timeout_s: float = 10.0
) -> cost_pb2.GetUsageSummaryResponse:
    """The summary once it has ``expected`` rows (or the time is up); then a moment more, so
    that a surplus row would show."""
    deadline = time.monotonic() + timeout_s
    while True:
        summary = await cost.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
        if summary.requests >= expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    return await cost.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)


def complete(prompt: str, request_id: str = "", **kw) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(request_id=request_id, prompt=prompt, **kw)


async def test_one_request_id_with_other_prompts_is_refused_before_any_call(mesh, sim):
    router, cost, _ = mesh
    first = await router.Complete(complete("prompt number 0", "rid-1"), timeout=10)
    assert not first.replayed
    for i in range(1, 20):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await router.Complete(complete(f"prompt number {i}", "rid-1"), timeout=10)
        assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert reason(e.value) == "REQUEST_ID_REUSED"
    assert sim.stats["completions"] == 1
    assert (await ledger_rows(cost, 1)).requests == 1


async def test_the_same_request_again_is_replayed_without_a_new_call(mesh, sim):
    router, cost, _ = mesh
    first = await router.Complete(complete("say something", "rid-2"), timeout=10)
    again = await router.Complete(complete("say something", "rid-2"), timeout=10)
    assert again.replayed and not first.replayed
    assert (again.text, again.usage, again.cost) == (first.text, first.usage, first.cost)
    # a stream with the same id and request gets the stored answer too
    events = [e async for e in router.CompleteStream(
        router_pb2.CompleteStreamRequest(request=complete("say something", "rid-2")), timeout=10
    )]  # fmt: skip
    assert "".join(e.delta for e in events[:-1]) == first.text
    assert events[-1].summary.replayed
    assert sim.stats["completions"] == 1
    assert (await ledger_rows(cost, 1)).requests == 1


async def test_concurrent_duplicates_wait_for_the_first_call(mesh, sim):
    router, cost, _ = mesh
    sim.latency_s = 0.3
    answers = await asyncio.gather(
        *(router.Complete(complete("slow one", "rid-3"), timeout=10) for _ in range(6))
    )
    assert len({a.text for a in answers}) == 1
    assert sum(not a.replayed for a in answers) == 1
    assert sim.stats["completions"] == 1
    assert (await ledger_rows(cost, 1)).requests == 1


async def test_a_failed_call_leaves_the_id_free_for_a_retry(mesh, sim):
    router, cost, _ = mesh
    sim.add_fault(Fault(kind="status", status=500))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await router.Complete(complete("try me", "rid-4"), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    sim.clear_faults()
    ok = await router.Complete(complete("try me", "rid-4"), timeout=10)
    assert ok.text and not ok.replayed
    assert sim.stats["completions"] == 1
    summary = await ledger_rows(cost, 1)
    assert summary.requests == 1  # the 500s billed nothing


async def test_ids_the_router_made_up_are_never_replayed(mesh, sim):
    router, cost, _ = mesh
    a = await router.Complete(complete("same words"), timeout=10)
    b = await router.Complete(complete("same words"), timeout=10)
    assert a.request_id != b.request_id and not b.replayed
    assert sim.stats["completions"] == 2
    assert (await ledger_rows(cost, 2)).requests == 2


async def test_an_answer_without_usage_is_billed_as_an_estimate(mesh, sim):
    router, cost, _ = mesh
    sim.add_fault(Fault(kind="no_usage", times=1))
    resp = await router.Complete(complete("count my tokens please"), timeout=10)
    assert resp.usage_estimated and resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    summary = await ledger_rows(cost, 1)
    assert summary.requests == 1 and summary.estimated_requests == 1
    assert summary.usage == resp.usage


async def test_a_stream_cancelled_midway_is_billed_for_what_was_generated(mesh, sim):
    router, cost, _ = mesh
    sim.token_delay_s = 0.02
    call = router.CompleteStream(
        router_pb2.CompleteStreamRequest(request=complete("a long answer please", max_tokens=400)),
        timeout=10,
    )
    got = []
    async for event in call:
        got.append(event.delta)
        if len(got) == 5:
            call.cancel()
            break
    summary = await ledger_rows(cost, 1)
    assert sim.stats["completions"] == 1
    assert summary.requests == 1 and summary.estimated_requests == 1
    assert 0 < summary.usage.output_tokens < 400


async def test_streams_cancelled_before_the_summary_are_all_billed(mesh, sim):
    router, cost, _ = mesh
    n = 20

    async def one(i: int) -> None:
        call = router.CompleteStream(
            router_pb2.CompleteStreamRequest(request=complete(f"short {i}", max_tokens=8)),
            timeout=10,
        )
        async for event in call:
            if event.HasField("summary"):
                break
            # every delta arrived; the client leaves before reading the summary
        call.cancel()

    await asyncio.gather(*(one(i) for i in range(n)))
    summary = await ledger_rows(cost, n)
    assert sim.stats["completions"] == n
    assert summary.requests == n


async def test_a_stream_that_breaks_after_its_first_delta_is_billed(mesh, sim):
    router, cost, _ = mesh
    sim.add_fault(Fault(kind="cut_stream", after_chunks=4, times=1))
    call = router.CompleteStream(
        router_pb2.CompleteStreamRequest(request=complete("break please", max_tokens=100)),
        timeout=10,
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in call:
            pass
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    summary = await ledger_rows(cost, 1)
    assert sim.stats["completions"] == 1
    assert summary.requests == 1 and summary.estimated_requests == 1


async def test_output_moderation_failing_after_the_call_still_bills_it_once(sim, tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    # output moderation on, and no voter anywhere: the check after the call fails
    data = mesh_config(sim.url, cost_port=free_port(), voter_port=free_port(), moderation="output")
    async with router_and_cost(data, env) as s:
        for _ in range(2):  # the retry re-checks the output; it does not call again
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await s.router.Complete(complete("hello", "rid-5"), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        summary = await ledger_rows(s.cost, 1)
        assert sim.stats["completions"] == 1
        assert summary.requests == 1


async def test_a_full_backlog_refuses_paid_calls_before_calling(sim, tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    data = mesh_config(sim.url, cost_port=free_port(), voter_port=free_port(), moderation="none")
    data["usage"]["max_backlog_records"] = 2  # the cost service is down all along
    router = await start(router_server.create, RouterSettings.from_config(data, env))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router[1]}") as ch:
            stub = router_pb2_grpc.RouterServiceStub(ch)
            for i in range(2):
                ok = await stub.Complete(complete(f"p{i}"), timeout=10)
                assert not ok.usage_recorded
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Complete(complete("one too many"), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert reason(e.value) == "USAGE_BACKLOG_FULL"
        assert sim.stats["completions"] == 2
    finally:
        await stop(router)


# -- the journal itself ---------------------------------------------------------------------


@pytest.fixture
async def dead_cost():
    async with grpc.aio.insecure_channel("127.0.0.1:9") as ch:  # nothing listens there
        yield cost_pb2_grpc.CostServiceStub(ch)


async def test_an_intent_never_settled_is_billed_as_an_estimate_after_a_restart(
    dead_cost, tmp_path
):
    journal = tmp_path / "router.journal"
    meter = Meter(dead_cost, journal, source="router")
    await meter.start()
    await meter.begin("k-crash", "sim-chat", input_tokens=12, max_output_tokens=300)
    # the process "dies" here: nothing settles the call
    await meter.stop(drain_s=0)
    intents, pending = replay(journal)
    assert list(intents) == ["k-crash"] and not pending

    again = Meter(dead_cost, journal, source="router")
    await again.start()
    try:
        assert again.backlog == 1
    finally:
        await again.stop(drain_s=0)
    intents, pending = replay(journal)
    assert not intents
    rec = pending["k-crash"]
    assert rec.estimated and (rec.input_tokens, rec.output_tokens) == (12, 300)


async def test_the_journal_belongs_to_one_process(dead_cost, tmp_path):
    from quorum.registry import ConfigError

    meter = Meter(dead_cost, tmp_path / "j", source="router")
    await meter.start()
    try:
        with pytest.raises(ConfigError, match="in use by another process"):
            await Meter(dead_cost, tmp_path / "j", source="router").start()
    finally:
        await meter.stop(drain_s=0)


async def test_the_journal_is_compacted_and_stays_consistent(dead_cost, tmp_path):
    from quorum.usage import MeterSettings

    journal = tmp_path / "j"
    meter = Meter(dead_cost, journal, source="router", settings=MeterSettings(compact_bytes=4096))
    await meter.start()
    try:
        for i in range(400):  # voided calls leave nothing live: the file stays small
            (await meter.begin(f"v{i}", "m", input_tokens=i, max_output_tokens=10)).void()
        await meter.sync()
        assert journal.stat().st_size < 2 * 4096
        for i in range(200):
            charge = await meter.begin(f"k{i}", "m", input_tokens=i, max_output_tokens=10)
            if i % 2:
                charge.void()
            else:
                charge.settle(i, 1)
        await meter.sync()
        live = sum(len(line) for line in journal.read_text().splitlines() if '"usage"' in line)
        assert journal.stat().st_size < 2 * live + 2 * 4096
    finally:
        await meter.stop(drain_s=0)
    intents, pending = replay(journal)
    assert not intents
    assert sorted(pending) == sorted(f"k{i}" for i in range(0, 200, 2))
    assert all(pending[f"k{i}"].input_tokens == i for i in range(0, 200, 2))


async def test_the_exact_count_runs_only_for_an_estimate(dead_cost, tmp_path):
    meter = Meter(dead_cost, tmp_path / "j", source="router")
    await meter.start()
    counted: list[int] = []

    def count() -> int:
        counted.append(1)
        return 7

    try:
        answered = await meter.begin("a", "m", input_tokens=50, max_output_tokens=9,
                                     count_input=count)  # fmt: skip
        answered.settle(5, 3)
        assert not counted  # the provider's counts: nothing to count
        cut = await meter.begin("b", "m", input_tokens=50, max_output_tokens=9, count_input=count)
        cut.failed(None, partial_text="hello there")
        assert counted and cut.record is not None and cut.record.input_tokens == 7
    finally:
        await meter.stop(drain_s=0)
