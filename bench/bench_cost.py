"""Recording usage: sustained throughput and latency of the ledger alone, of ``RecordUsage``
(one record per call) and of ``RecordUsageBatch`` (``--batch-size`` records per call), each
at every ``--concurrency`` (calls in flight), on either ledger backend; and, one call at a
time, a hard budget's two steps for a call (``Reserve`` before it, which the call waits for,
and ``Commit`` after it):

    .venv/bin/python bench/bench_cost.py [--backend sqlite|postgres] [--server inproc|process]
        [--requests 5000] [--batch-size 50] [--batch-requests 50000]
        [--concurrency 1 16 64] [--duplicates]

``sqlite``: a file in a temporary directory. ``postgres``: a throw-away PostgreSQL server
started from the OS packages (``initdb`` + ``postgres`` on a loopback port, PostgreSQL's own
durability settings: fsync and synchronous commit on), a fresh schema per run.

``--server inproc`` (the default) runs the cost server in this process, next to the clients
(one interpreter, one GIL for both), and first measures a server whose RecordUsage does
nothing at all (what the gRPC unary path itself costs); ``process`` starts
``python -m services.cost`` per run, as it runs in production, so the server has an
interpreter of its own.

Every run starts on an empty ledger, and each request id is new (an insert) unless
--duplicates is given (every record repeats one of 100 ids: the read path after
ON CONFLICT DO NOTHING). Latency is per call: for a batch, the time until every one of its
records is stored. Records per second count records, not calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import psycopg

from quorum import config
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.pgserver import TempPostgres, find_binaries
from services.cost.config import from_config
from services.cost.ledger import LedgerEntry, SqliteLedger
from services.cost.pgledger import PostgresLedger
from services.cost.server import create

REPO = Path(__file__).resolve().parents[1]
ADDRESS_LINE = re.compile(r"^quorum-cost listening on (?P<address>\S+)$")

#: makes a new, empty ledger database (a SQLite path or a PostgreSQL URL) named after a tag
NewDatabase = Callable[[str], str]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def report(what: str, concurrency: int, records: int, elapsed: float, lat: list[float]) -> None:
    print(
        f"{what:<22} c={concurrency:<3} {records / elapsed:8.0f} records/s"
        f"  p50 {statistics.median(lat) * 1e3:7.2f} ms  p99 {pct(lat, 0.99) * 1e3:7.2f} ms",
        flush=True,
    )


def record_request(i: int, duplicates: bool) -> cost_pb2.RecordUsageRequest:
    return cost_pb2.RecordUsageRequest(
        request_id=f"dup-{i % 100}" if duplicates else f"req-{i}",
        model="gpt-4.1",
        usage=common_pb2.Usage(input_tokens=1000, output_tokens=500),
        source="bench",
    )


# --- the cost server: in this process, or its own ----------------------------------------------


@contextlib.asynccontextmanager
async def inproc_server(tmp: Path, database: str) -> AsyncIterator[str]:
    settings = from_config(
        config.defaults(),
        {"QUORUM_DATA_DIR": str(tmp)},
        address="127.0.0.1:0",
        database=database,
    )
    server, port, monitor, close = await create(settings)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await monitor.stop()
        await close()


@contextlib.asynccontextmanager
async def process_server(tmp: Path, database: str) -> AsyncIterator[str]:
    """``python -m services.cost`` on a free loopback port, stopped with SIGTERM after."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cost", "--address", "127.0.0.1:0",
        "--set", f"cost.database={database}", "--log-level", "WARNING",
        cwd=REPO,
        env={**os.environ, "QUORUM_DATA_DIR": str(tmp)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        match = ADDRESS_LINE.match(line)
        if match is None:
            raise SystemExit(f"the cost service did not start (it printed {line!r})")
        yield match["address"]
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


class NoWork(cost_pb2_grpc.CostServiceServicer):
    """Answers RecordUsage at once: what a unary call costs the client and server alone."""

    async def RecordUsage(
        self, request: cost_pb2.RecordUsageRequest, context: object
    ) -> cost_pb2.RecordUsageResponse:
        return cost_pb2.RecordUsageResponse(cost=common_pb2.Money(micros=1, currency="USD"))

    async def ListPrices(
        self, request: cost_pb2.ListPricesRequest, context: object
    ) -> cost_pb2.ListPricesResponse:
        return cost_pb2.ListPricesResponse()  # the warm-up call


@contextlib.asynccontextmanager
async def no_work_server() -> AsyncIterator[str]:
    server = grpc.aio.server()
    cost_pb2_grpc.add_CostServiceServicer_to_server(NoWork(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


# --- the runs ----------------------------------------------------------------------------------


async def bench_single(
    address: str, n: int, concurrency: int, duplicates: bool
) -> tuple[float, list[float]]:
    """``n`` RecordUsage calls, ``concurrency`` at a time: (seconds, latencies)."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = cost_pb2_grpc.CostServiceStub(channel)
        await stub.ListPrices(cost_pb2.ListPricesRequest(), timeout=10, wait_for_ready=True)
        todo = iter(range(n))

        async def worker() -> None:
            for i in todo:
                req = record_request(i, duplicates)
                t = time.perf_counter()
                await stub.RecordUsage(req, timeout=30)
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies


async def bench_batch(
    address: str, n: int, size: int, concurrency: int, duplicates: bool
) -> tuple[float, list[float]]:
    """``n`` records in RecordUsageBatch calls of ``size``, ``concurrency`` calls at a time:
    (seconds, latencies of the calls). Every record must come back recorded."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = cost_pb2_grpc.CostServiceStub(channel)
        await stub.ListPrices(cost_pb2.ListPricesRequest(), timeout=10, wait_for_ready=True)
        todo = iter(range(0, n, size))

        async def worker() -> None:
            for first in todo:
                ids = range(first, min(first + size, n))
                req = cost_pb2.RecordUsageBatchRequest(
                    records=[record_request(i, duplicates) for i in ids]
                )
                t = time.perf_counter()
                resp = await stub.RecordUsageBatch(req, timeout=30)
                latencies.append(time.perf_counter() - t)
                failed = [r.error for r in resp.results if r.WhichOneof("result") != "recorded"]
                if failed:
                    raise SystemExit(f"{len(failed)} records failed, e.g. {failed[0]}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies


async def bench_reserve(address: str, n: int) -> tuple[list[float], list[float]]:
    """``n`` calls' budget steps one at a time, for a tenant with a hard budget: ``Reserve``
    (the call waits for it) then ``Commit`` of what the call cost (the router sends that with
    the usage record, after answering). (Reserve latencies, Commit latencies)."""
    reserve_lat: list[float] = []
    commit_lat: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = cost_pb2_grpc.CostServiceStub(channel)
        await stub.ListPrices(cost_pb2.ListPricesRequest(), timeout=10, wait_for_ready=True)
        limit = common_pb2.Money(micros=10**15, currency="USD")
        budget = cost_pb2.Budget(tenant="bench", limit=limit, time_zone="UTC")
        await stub.SetBudget(cost_pb2.SetBudgetRequest(budget=budget), timeout=10)
        for i in range(n):
            t = time.perf_counter()
            r = await stub.Reserve(
                cost_pb2.ReserveRequest(
                    request_id=f"call-{i}", tenant="bench", model="gpt-4.1",
                    input_tokens=1000, max_output_tokens=500,
                ),
                timeout=10,
            )  # fmt: skip
            reserve_lat.append(time.perf_counter() - t)
            if not r.reservation_id:
                raise SystemExit("no reservation was made (is the budget there?)")
            req = record_request(i, False)
            req.tenant, req.reservation_id = "bench", r.reservation_id
            t = time.perf_counter()
            await stub.Commit(req, timeout=10)
            commit_lat.append(time.perf_counter() - t)
    return reserve_lat, commit_lat


async def bench_ledger(new_database: NewDatabase, n: int, concurrency: int) -> None:
    database = new_database(f"ledger_only_{concurrency}")
    led: SqliteLedger | PostgresLedger
    if database.startswith("postgresql://"):
        led = await PostgresLedger.open(database)
    else:
        led = await SqliteLedger.open(database)
    latencies: list[float] = []
    try:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                t = time.perf_counter()
                await led.record(LedgerEntry(f"r{i}", "m", "bench", 1, 1, 1, "USD", i))
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - start
    finally:
        await led.close()
    report("ledger alone", concurrency, n, elapsed, latencies)


@contextlib.contextmanager
def databases(backend: str, tmp: Path) -> Iterator[NewDatabase]:
    if backend == "sqlite":
        yield lambda tag: str(tmp / f"{tag}.sqlite3")
        return
    binaries = find_binaries()
    if binaries is None:
        sys.exit(
            "PostgreSQL is not installed (initdb, postgres); on Debian: apt-get install postgresql"
        )
    with TempPostgres(binaries, durable=True) as pg:

        def new_schema(tag: str) -> str:
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {tag}")  # our own tag
            return f"{pg.url}?options=-csearch_path%3D{tag}"

        yield new_schema


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--server", choices=["inproc", "process"], default="inproc")
    p.add_argument("--requests", type=int, default=5000, help="records per run, one per call")
    p.add_argument("--batch-size", type=int, default=50, help="records per RecordUsageBatch")
    p.add_argument("--batch-requests", type=int, default=50_000, help="records per batch run")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--duplicates", action="store_true")
    args = p.parse_args()
    server = inproc_server if args.server == "inproc" else process_server
    kind = "dup" if args.duplicates else "new"
    with tempfile.TemporaryDirectory() as tmp, databases(args.backend, Path(tmp)) as new_database:
        print(
            f"backend {args.backend}, cost server {args.server}, {os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        for c in args.concurrency:
            await bench_ledger(new_database, args.requests, c)
        if args.server == "inproc":
            for c in args.concurrency:
                async with no_work_server() as address:
                    elapsed, lat = await bench_single(address, args.requests, c, False)
                report("unary call, no work", c, args.requests, elapsed, lat)
        for run, c in enumerate(args.concurrency):
            async with server(Path(tmp), new_database(f"single_{run}")) as address:
                elapsed, lat = await bench_single(address, args.requests, c, args.duplicates)
            report(f"RecordUsage ({kind})", c, args.requests, elapsed, lat)
        async with server(Path(tmp), new_database("reserve")) as address:
            reserve_lat, commit_lat = await bench_reserve(address, min(args.requests, 2000))
        for what, lat in (("Reserve (before)", reserve_lat), ("Commit (after)", commit_lat)):
            print(
                f"{what:<22} c=1   {len(lat):8d} calls    "
                f"  p50 {statistics.median(lat) * 1e3:7.2f} ms  p99 {pct(lat, 0.99) * 1e3:7.2f} ms",
                flush=True,
            )
        for run, c in enumerate(args.concurrency):
            async with server(Path(tmp), new_database(f"batch_{run}")) as address:
                elapsed, lat = await bench_batch(
                    address, args.batch_requests, args.batch_size, c, args.duplicates
                )
            report(f"Batch x{args.batch_size} ({kind})", c, args.batch_requests, elapsed, lat)
        print(f"load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
