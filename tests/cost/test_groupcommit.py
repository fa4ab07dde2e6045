"""The write-behind queue in front of the ledger's writer, on its own: batching, per-job
results and errors, a failed batch, the bound, callers that give up, and the drain at close.

The store here is a list in memory behind a write function that the tests can hold up (an
``asyncio.Event``) or make fail; the ledgers' own writes are tested in ``test_ledger.py``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from quorum.errors import FailedPrecondition, Internal, QuorumError, ResourceExhausted, Unavailable
from services.cost.groupcommit import GroupCommit


class Store:
    """Keeps every batch it was given; a job "bad-..." fails alone, a job "boom" fails its
    whole batch (nothing of it is kept), a job "bug" raises a bug."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.kept: list[str] = []
        self.open = asyncio.Event()
        self.open.set()
        self.writing = asyncio.Event()

    async def write(self, jobs: list[str]) -> Sequence[str | QuorumError]:
        self.writing.set()
        await self.open.wait()
        self.batches.append(list(jobs))
        if "boom" in jobs:
            raise Unavailable("the store is down", reason="LEDGER_UNAVAILABLE")
        if "bug" in jobs:
            raise KeyError("a bug")
        out: list[str | QuorumError] = []
        for job in jobs:
            if job.startswith("bad"):
                out.append(FailedPrecondition(f"{job} refused", reason="REQUEST_ID_REUSED"))
            else:
                self.kept.append(job)
                out.append(job.upper())
        return out


@pytest.fixture
async def store() -> Store:
    return Store()


async def test_concurrent_jobs_share_one_batch_and_get_their_own_results(store: Store) -> None:
    gc: GroupCommit[str, str] = GroupCommit(store.write)
    results = await asyncio.gather(*(gc.run(f"j{i}") for i in range(50)))
    assert results == [f"J{i}" for i in range(50)]
    assert store.batches == [[f"j{i}" for i in range(50)]]
    assert (gc.batches, gc.jobs) == (1, 50)
    await gc.close()


async def test_batches_grow_while_one_is_written_and_stay_under_max_batch(store: Store) -> None:
    gc: GroupCommit[str, str] = GroupCommit(store.write, max_batch=10)
    store.open.clear()
    first = asyncio.ensure_future(gc.run("first"))
    await store.writing.wait()  # "first" is being written, alone
    rest = asyncio.gather(*(gc.run(f"j{i}") for i in range(25)))
    await asyncio.sleep(0)
    store.open.set()
    assert await first == "FIRST"
    assert await rest == [f"J{i}" for i in range(25)]
    assert [len(b) for b in store.batches] == [1, 10, 10, 5]
    assert store.kept == ["first", *(f"j{i}" for i in range(25))]  # in order
    await gc.close()


async def test_results_wait_for_the_write_to_return(store: Store) -> None:
    """A result is handed out only once the store's write (its commit) has returned."""
    gc: GroupCommit[str, str] = GroupCommit(store.write)
    store.open.clear()
    call = asyncio.ensure_future(gc.run("a"))
    await store.writing.wait()
    await asyncio.sleep(0.05)
    assert not call.done()
    store.open.set()
    assert await call == "A"
    await gc.close()


async def test_a_jobs_own_error_is_its_own(store: Store) -> None:
    gc: GroupCommit[str, str] = GroupCommit(store.write)
    results = await gc.run_many(["a", "bad-1", "b"])
    assert results[0] == "A" and results[2] == "B"
    assert isinstance(results[1], FailedPrecondition)
    assert results[1].reason == "REQUEST_ID_REUSED"
    with pytest.raises(FailedPrecondition):
        await gc.run("bad-2")
    assert store.kept == ["a", "b"]
    await gc.close()


async def test_a_failed_batch_fails_each_of_its_jobs_and_the_next_batch_goes_on(
    store: Store,
) -> None:
    gc: GroupCommit[str, str] = GroupCommit(store.write)
    failed = await gc.run_many(["a", "boom", "b"])
    assert all(isinstance(r, Unavailable) and r.reason == "LEDGER_UNAVAILABLE" for r in failed)
    assert store.kept == []
    assert await gc.run("c") == "C"
    assert (gc.batches, gc.jobs) == (1, 1)  # the failed batch is not counted as written
    await gc.close()


async def test_a_bug_in_the_write_is_logged_and_internal(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    gc: GroupCommit[str, str] = GroupCommit(store.write)
    with caplog.at_level(logging.ERROR):
        results = await gc.run_many(["a", "bug"])
    assert all(isinstance(r, Internal) for r in results)
    assert "writing a batch of 2 failed" in caplog.text
    assert await gc.run("b") == "B"
    await gc.close()


async def test_past_the_bound_jobs_fail_at_once_with_ledger_busy(store: Store) -> None:
    gc: GroupCommit[str, str] = GroupCommit(store.write, max_batch=2, max_queued=3)
    store.open.clear()
    taken = asyncio.ensure_future(gc.run_many(["t1", "t2"]))  # the batch being written
    await store.writing.wait()
    queued = asyncio.ensure_future(gc.run_many(["q1", "q2", "q3"]))
    await asyncio.sleep(0)
    assert gc.queued == 3
    started = asyncio.get_running_loop().time()
    with pytest.raises(ResourceExhausted) as info:
        await gc.run("one-too-many")
    assert asyncio.get_running_loop().time() - started < 0.1
    assert info.value.reason == "LEDGER_BUSY"
    assert info.value.metadata == {"queued": "3"}
    store.open.set()
    assert await taken == ["T1", "T2"]
    assert await queued == ["Q1", "Q2", "Q3"]
    assert "one-too-many" not in store.kept
    await gc.close()


async def test_run_many_past_the_bound_fails_only_the_jobs_that_do_not_fit(store: Store) -> None:
    gc: GroupCommit[str, str] = GroupCommit(store.write, max_batch=1, max_queued=2)
    store.open.clear()
    first = asyncio.ensure_future(gc.run("first"))
    await store.writing.wait()
    many = asyncio.ensure_future(gc.run_many(["a", "b", "c", "d"]))
    await asyncio.sleep(0)
    store.open.set()
    assert await first == "FIRST"
    results = await many
    assert results[:2] == ["A", "B"]
    assert all(isinstance(r, ResourceExhausted) and r.reason == "LEDGER_BUSY" for r in results[2:])
    assert store.kept == ["first", "a", "b"]
    await gc.close()


async def test_a_caller_that_gives_up_before_its_batch_is_never_written(store: Store) -> None:
    gc: GroupCommit[str, str] = GroupCommit(store.write)
    store.open.clear()
    first = asyncio.ensure_future(gc.run("first"))
    await store.writing.wait()
    gone = asyncio.ensure_future(gc.run("gone"))
    kept = asyncio.ensure_future(gc.run("kept"))
    await asyncio.sleep(0)
    gone.cancel()
    store.open.set()
    assert (await first, await kept) == ("FIRST", "KEPT")
    assert gone.cancelled()
    assert store.kept == ["first", "kept"]
    await gc.close()


async def test_close_writes_what_is_queued_then_refuses(store: Store) -> None:
    gc: GroupCommit[str, str] = GroupCommit(store.write, max_batch=3)
    store.open.clear()
    calls = asyncio.ensure_future(gc.run_many([f"j{i}" for i in range(7)]))
    await store.writing.wait()
    closing = asyncio.ensure_future(gc.close())
    await asyncio.sleep(0)
    with pytest.raises(Unavailable) as info:
        await gc.run("late")
    assert info.value.reason == "LEDGER_UNAVAILABLE"
    store.open.set()
    await closing
    assert await calls == [f"J{i}" for i in range(7)]
    assert store.kept == [f"j{i}" for i in range(7)]
    await gc.close()  # idempotent


def test_bounds_must_be_positive() -> None:
    async def write(jobs: list[str]) -> list[str]:
        return jobs

    for kw in ({"max_batch": 0}, {"max_queued": 0}, {"writers": 0}):
        with pytest.raises(ValueError, match="at least 1"):
            GroupCommit(write, **kw)  # type: ignore[arg-type]
