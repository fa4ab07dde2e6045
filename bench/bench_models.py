"""The brief's client benchmark: per model id, average latency, p50/p99, throughput and TTFT,
measured through :class:`quorum.client.MultiModelClient`.

    .venv/bin/python bench/bench_models.py [--requests 100] [--concurrency 4]
        [--stream-requests 20] [--ids 0 1 2 3] [--moderation none|input|output|both]

Starts `quorum up` as a person does (bench_mesh.start_quorum_up: free ports, a temporary
data folder, no API key, so the provider simulator answers every model), then for each model
id sends ``--requests`` Complete calls, ``--concurrency`` at a time (latency is each call's
wall time seen by the client; throughput is requests over the run's wall time), and
``--stream-requests`` CompleteStream calls one at a time for the time to the first piece of
text (TTFT). The simulator adds no think time: the figures are Quorum's own cost (routing,
moderation by the local judges on Triton when the policy asks for it, usage accounting),
not a provider's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_mesh import start_quorum_up, stop

from quorum.client import MultiModelClient

PROMPTS = (
    "Write a python function that reverses a list.",
    "Give me a quick summary of the water cycle.",
    "Compare TCP and UDP for a chat application.",
    "Plan a three-day trip to Lisbon on a budget.",
)


@dataclass(frozen=True)
class Row:
    model_id: int
    model: str
    latencies_ms: list[float]
    wall_s: float
    ttft_ms: list[float]
    concurrency: int

    def line(self) -> str:
        lat = sorted(self.latencies_ms)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        rps = len(lat) / self.wall_s
        ttft = f"{statistics.median(self.ttft_ms):8.2f}" if self.ttft_ms else "       -"
        return (
            f"{self.model_id:>2}  {self.model:<18} {statistics.fmean(lat):8.2f} "
            f"{statistics.median(lat):8.2f} {p99:8.2f} {rps:9.1f} {ttft}"
        )


async def bench_model(
    client: MultiModelClient, model_id: int, n: int, concurrency: int, n_stream: int
) -> Row:
    for i in range(3):  # warm-up: channels, the first route, the judges' first batch
        await client.infer(PROMPTS[i % len(PROMPTS)], model_id)
    todo = iter(range(n))
    latencies: list[float] = []
    models: set[str] = set()

    async def worker() -> None:
        for i in todo:
            result = await client.infer(PROMPTS[i % len(PROMPTS)], model_id)
            latencies.append(result.latency_ms)
            models.add(result.model)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ttfts = []
    for i in range(n_stream):
        streamed = await client.infer_stream(PROMPTS[i % len(PROMPTS)], model_id)
        ttfts.append(streamed.ttft_ms)
        models.add(streamed.model)
    if len(models) != 1:
        raise SystemExit(f"model id {model_id} was answered by {sorted(models)}")
    return Row(model_id, models.pop(), latencies, wall, ttfts, concurrency)


async def run(address: str, args: argparse.Namespace) -> list[Row]:
    async with MultiModelClient(address, timeout_s=30, moderation=args.moderation) as client:
        return [
            await bench_model(client, i, args.requests, args.concurrency, args.stream_requests)
            for i in args.ids
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="Complete calls per model")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight at once")
    parser.add_argument("--stream-requests", type=int, default=20, help="for TTFT, per model")
    parser.add_argument("--ids", type=int, nargs="+", default=[0, 1, 2, 3], help="model ids")
    parser.add_argument(
        "--moderation", choices=("none", "input", "output", "both"), default=None,
        help="the moderation policy asked for (default: the router's, input)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1 or args.stream_requests < 0:
        parser.error("--requests and --concurrency must be >= 1, --stream-requests >= 0")

    with tempfile.TemporaryDirectory(prefix="quorum-bench-") as tmp:
        proc, addresses, took = start_quorum_up(Path(tmp) / "mesh")
        try:
            rows = asyncio.run(run(addresses["router"], args))
        finally:
            stop(proc)
    moderation = args.moderation or "the router's default"
    print(f"`quorum up` started in {took:.1f} s; provider simulator (no think time); "
          f"moderation: {moderation}")  # fmt: skip
    print(f"{args.requests} Complete calls per model at concurrency {args.concurrency}; TTFT: "
          f"median of {args.stream_requests} CompleteStream calls, one at a time")  # fmt: skip
    print("id  model               avg ms   p50 ms   p99 ms     req/s  TTFT ms")
    for row in rows:
        print(row.line())


if __name__ == "__main__":
    main()
