"""Write-behind batching with group commit: many callers' writes, one transaction.

Callers submit jobs and each waits for its own result; a writer task takes whatever has
queued up (at most ``max_batch`` jobs) and hands it to ``write``, which runs the whole batch
in one transaction and answers one result per job, in order: a value, or the domain error of
that job alone (e.g. ``REQUEST_ID_REUSED``). While a batch is being written the next one
queues, so batches grow with the load, and a lone caller waits for no timer (no linger).

- A caller's future is resolved only once ``write`` has returned, i.e. after the commit: a
  result handed out is durable.
- ``write`` raising a :class:`~quorum.errors.QuorumError` (the store failed; the batch's
  transaction rolled back) fails every job of that batch with it. Anything else is a bug: it
  is logged and fails them with ``INTERNAL``. Either way the writer goes on with the next
  batch.
- The queue is bounded: past ``max_queued`` jobs waiting (the batches being written not
  counted), a job fails at once with ``RESOURCE_EXHAUSTED`` (``LEDGER_BUSY``) instead of waiting.
- A job whose caller gave up (cancelled its future) before its batch was taken is dropped;
  once taken it is written all the same (a retry of the caller then finds it stored).
- :meth:`GroupCommit.close` refuses new jobs (``UNAVAILABLE``, ``LEDGER_UNAVAILABLE``), lets
  the queued ones be written, then ends the writers.

No I/O here: ``write`` is the store's (see :class:`services.cost.ledger.SqliteLedger` and
:class:`services.cost.pgledger.PostgresLedger`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar, cast

from quorum.errors import Internal, QuorumError, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")

#: writes one batch in one transaction: one result (or the job's own error) per job, in order
Write = Callable[[list[J]], Awaitable[Sequence[R | QuorumError]]]

DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_QUEUED = 8192


class GroupCommit(Generic[J, R]):
    """A bounded queue of jobs in front of ``writers`` writer tasks (see the module
    docstring). Create it inside a running event loop; the writers start with the first job."""

    def __init__(
        self,
        write: Write[J, R],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queued: int = DEFAULT_MAX_QUEUED,
        writers: int = 1,
        name: str = "group-commit",
    ) -> None:
        if max_batch < 1 or max_queued < 1 or writers < 1:
            raise ValueError("max_batch, max_queued and writers must be at least 1")
        self._write = write
        self.max_batch = max_batch
        self.max_queued = max_queued
        self._writers = writers
        self._name = name
        self._queue: deque[tuple[J, asyncio.Future[R]]] = deque()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        #: batches and jobs written so far (jobs dropped before their batch not counted)
        self.batches = 0
        self.jobs = 0

    @property
    def queued(self) -> int:
        """Jobs waiting for a batch (some may have been given up by their callers)."""
        return len(self._queue)

    def submit(self, jobs: Sequence[J]) -> list[asyncio.Future[R]]:
        """Queue ``jobs``; one future per job, in order. A job past the bound (or after
        :meth:`close`) gets a future that has already failed with ``UNAVAILABLE``."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = []
        for job in jobs:
            fut: asyncio.Future[R] = loop.create_future()
            if self._closing:
                fut.set_exception(
                    Unavailable("the usage ledger is closed", reason="LEDGER_UNAVAILABLE")
                )
            elif len(self._queue) >= self.max_queued:
                fut.set_exception(
                    ResourceExhausted(  # overload: refused at once, not queued without bound
                        f"the usage ledger is busy ({len(self._queue)} records wait to be "
                        "written); try again shortly",
                        reason="LEDGER_BUSY",
                        metadata={"queued": str(len(self._queue))},
                    )
                )
            else:
                self._queue.append((job, fut))
            futures.append(fut)
        if self._queue:
            if not self._tasks:
                self._tasks = [
                    asyncio.create_task(self._writer(), name=f"{self._name}-{i}")
                    for i in range(self._writers)
                ]
            self._ready.set()
        return futures

    async def run(self, job: J) -> R:
        """Write one job; its result, or its error raised. Cancelling the caller drops the
        job if its batch has not been taken yet."""
        (fut,) = self.submit([job])
        return await fut

    async def run_many(self, jobs: Sequence[J]) -> list[R | QuorumError]:
        """Write ``jobs`` (in as many batches as they need); one result or error per job."""
        futures = self.submit(jobs)
        results = await asyncio.gather(*futures, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, QuorumError):
                raise r
        return cast("list[R | QuorumError]", results)

    async def close(self) -> None:
        """Refuse new jobs, write the queued ones, end the writers. Idempotent."""
        self._closing = True
        self._ready.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _take(self) -> list[tuple[J, asyncio.Future[R]]]:
        batch: list[tuple[J, asyncio.Future[R]]] = []
        while self._queue and len(batch) < self.max_batch:
            job, fut = self._queue.popleft()
            if not fut.done():  # a caller that gave up: its job is never written
                batch.append((job, fut))
        return batch

    async def _writer(self) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
            batch = self._take()
            if not batch:
                continue
            outcomes: Sequence[R | QuorumError]
            try:
                outcomes = await self._write([job for job, _ in batch])
                if len(outcomes) != len(batch):
                    raise AssertionError(f"{len(outcomes)} results for {len(batch)} jobs")
            except QuorumError as e:  # the store failed: nothing of the batch was written
                outcomes = [e] * len(batch)
            except asyncio.CancelledError:
                failed = Unavailable("the usage ledger was stopped", reason="LEDGER_UNAVAILABLE")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(failed)
                raise
            except Exception:
                log.exception("writing a batch of %d failed", len(batch))
                outcomes = [Internal("internal error", reason="INTERNAL")] * len(batch)
            else:
                self.batches += 1
                self.jobs += len(batch)
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if fut.done():
                    continue
                if isinstance(outcome, QuorumError):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)
