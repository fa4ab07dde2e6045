"""Latency and throughput of TritonScorer against the real tritonserver (profanity_check).

    .venv/bin/python bench/bench_triton.py [--seconds 5] [--concurrency 32]

Starts a server on free loopback ports, then measures one-text score() calls: latency
p50/p95 at concurrency 1, and throughput (plus latency and the average batch Triton's dynamic
batcher formed) at high concurrency. Each phase runs for ``--seconds`` after a short warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import httpx
from tritonclient.grpc.aio import InferenceServerClient

from quorum.backends.triton import TritonScorer
from quorum.tritonserver import TritonOptions, TritonServer, default_model_repository

MODEL = "profanity_check"
TEXTS = [
    "thank you for your help, have a lovely day",
    "you are a fucking idiot",
    "could you please send me the quarterly report by friday?",
    "what a piece of shit",
]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _stats(server: TritonServer) -> tuple[int, int]:
    r = httpx.get(f"http://{server.http_address}/v2/models/{MODEL}/stats", timeout=5)
    s = r.json()["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


async def _phase(
    scorer: TritonScorer, concurrency: int, seconds: float
) -> tuple[list[float], float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        i = w
        while time.perf_counter() < stop_at:
            text = TEXTS[i % len(TEXTS)]
            t0 = time.perf_counter()
            await scorer.score(MODEL, [text], timeout_s=10)
            latencies.append(time.perf_counter() - t0)
            i += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return latencies, time.perf_counter() - t0


def _report(label: str, latencies: list[float], elapsed: float, batch: float | None) -> None:
    ms = [x * 1000 for x in latencies]
    line = (
        f"{label:<16} calls={len(ms):>6}  {len(ms) / elapsed:>8.0f} req/s  "
        f"p50={statistics.median(ms):.2f} ms  p95={_pct(ms, 0.95):.2f} ms"
    )
    if batch is not None:
        line += f"  avg batch={batch:.1f}"
    print(line, flush=True)


async def _run(server: TritonServer, seconds: float, concurrency: int) -> None:
    async with InferenceServerClient(server.grpc_address) as client:
        scorer = TritonScorer(client)
        await _phase(scorer, 4, 1.0)  # warm-up
        for c in (1, concurrency):
            before = _stats(server)
            latencies, elapsed = await _phase(scorer, c, seconds)
            after = _stats(server)
            executions = after[1] - before[1]
            batch = (after[0] - before[0]) / executions if executions else None
            _report(f"concurrency {c}", latencies, elapsed, batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    print(f"tritonserver (pytriton 0.7.0, CPU), model {MODEL}, {os.cpu_count()} cores")
    with TritonServer(TritonOptions(model_repository=default_model_repository())) as server:
        asyncio.run(_run(server, args.seconds, args.concurrency))


if __name__ == "__main__":
    main()
