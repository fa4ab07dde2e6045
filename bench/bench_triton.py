"""Latency and throughput of TritonScorer against the real tritonserver, one model at a time.

    .venv/bin/python bench/bench_triton.py [--model NAME] [--seconds 5] [--concurrency 32]

Starts a server with only that model (default profanity_check) on free loopback ports, prints
how long it took to be ready, then measures one-text calls the way the voter's judge makes them
(``score``, or ``score_categories`` with every category of the model's registry entry for a
per-category model such as text_heads): latency p50/p95 at
concurrency 1, and throughput (plus latency and the average batch Triton's dynamic batcher
formed) at high concurrency. Each phase runs for ``--seconds`` after a short warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import httpx
from tritonclient.grpc.aio import InferenceServerClient

from quorum import config
from quorum.backends.triton import TritonScorer
from quorum.registry import TritonBackend, load_registry
from quorum.tritonserver import TritonOptions, TritonServer, default_model_repository

DEFAULT_MODEL = "profanity_check"
TEXTS = [
    "thank you for your help, have a lovely day",
    "you are a fucking idiot",
    "could you please send me the quarterly report by friday?",
    "what a piece of shit",
]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _stats(server: TritonServer, model: str) -> tuple[int, int]:
    r = httpx.get(f"http://{server.http_address}/v2/models/{model}/stats", timeout=5)
    s = r.json()["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def _categories(model: str) -> tuple[str, ...] | None:
    """The categories to ask a per-category model for (its registry entry's); None for a
    single-score model."""
    for spec in load_registry(config.defaults()).models.values():
        b = spec.backend
        if isinstance(b, TritonBackend) and b.triton_model == model and spec.moderation:
            return spec.moderation.categories if b.outputs == "per_category" else None
    return None


async def _phase(
    scorer: TritonScorer, model: str, concurrency: int, seconds: float
) -> tuple[list[float], float]:
    categories = _categories(model)
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        i = w
        while time.perf_counter() < stop_at:
            text = TEXTS[i % len(TEXTS)]
            t0 = time.perf_counter()
            if categories is None:
                await scorer.score(model, [text], timeout_s=10)
            else:
                await scorer.score_categories(model, [text], categories, timeout_s=10)
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


async def _run(server: TritonServer, model: str, seconds: float, concurrency: int) -> None:
    async with InferenceServerClient(server.grpc_address) as client:
        scorer = TritonScorer(client)
        await _phase(scorer, model, 4, 1.0)  # warm-up
        for c in (1, concurrency):
            before = _stats(server, model)
            latencies, elapsed = await _phase(scorer, model, c, seconds)
            after = _stats(server, model)
            executions = after[1] - before[1]
            batch = (after[0] - before[0]) / executions if executions else None
            _report(f"concurrency {c}", latencies, elapsed, batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="a model folder in triton/")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    print(f"tritonserver (pytriton 0.7.0, CPU), model {args.model}, {os.cpu_count()} cores")
    options = TritonOptions(model_repository=default_model_repository(), models=(args.model,))
    t0 = time.perf_counter()
    with TritonServer(options) as server:
        print(f"server and model ready in {time.perf_counter() - t0:.2f} s", flush=True)
        asyncio.run(_run(server, args.model, args.seconds, args.concurrency))


if __name__ == "__main__":
    main()
