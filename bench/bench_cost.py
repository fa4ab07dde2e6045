"""RecordUsage throughput and latency through a real in-process cost server (loopback gRPC,
SQLite ledger in a temporary directory), plus the ledger alone.

    .venv/bin/python bench/bench_cost.py [--requests 5000] [--concurrency 1 16 64]

Each request id is new (an insert) unless --duplicates is given (every call repeats one of
100 ids: the read path after ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from quorum import config
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from services.cost.config import from_config
from services.cost.ledger import SqliteLedger, UsageRecord
from services.cost.server import create


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def bench_server(tmp: Path, n: int, concurrency: int, duplicates: bool, run: int) -> None:
    settings = from_config(
        config.defaults(),
        {"QUORUM_DATA_DIR": str(tmp)},
        address="127.0.0.1:0",
        database=f"bench-{run}.sqlite3",
    )
    server, port, monitor, close = await create(settings)
    await server.start()
    latencies: list[float] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = cost_pb2_grpc.CostServiceStub(channel)
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(n):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    rid = f"dup-{i % 100}" if duplicates else f"req-{i}"
                    req = cost_pb2.RecordUsageRequest(
                        request_id=rid,
                        model="gpt-4.1",
                        usage=common_pb2.Usage(input_tokens=1000, output_tokens=500),
                        source="bench",
                    )
                    t = time.perf_counter()
                    await stub.RecordUsage(req, timeout=10)
                    latencies.append(time.perf_counter() - t)

            await stub.ListPrices(cost_pb2.ListPricesRequest(), timeout=10)  # warm up
            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - start
    finally:
        await server.stop(None)
        await monitor.stop()
        await close()
    print(
        f"server  c={concurrency:<3} {'dup' if duplicates else 'new'}  {n / elapsed:8.0f} req/s"
        f"  p50 {statistics.median(latencies) * 1e3:6.2f} ms"
        f"  p99 {pct(latencies, 0.99) * 1e3:6.2f} ms"
    )


async def bench_ledger(tmp: Path, n: int, concurrency: int) -> None:
    led = await SqliteLedger.open(tmp / f"ledger-only-{concurrency}.sqlite3")
    try:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await led.record(UsageRecord(f"r{i}", "m", "bench", 1, 1, 1, "USD", i))

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - start
    finally:
        await led.close()
    print(f"ledger  c={concurrency:<3} new  {n / elapsed:8.0f} records/s")


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--duplicates", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.concurrency:
            await bench_ledger(Path(tmp), args.requests, c)
        for run, c in enumerate(args.concurrency):
            await bench_server(Path(tmp), args.requests, c, args.duplicates, run)


if __name__ == "__main__":
    asyncio.run(main())
