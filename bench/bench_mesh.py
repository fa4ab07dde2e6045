"""Start-up time of the mesh and the latency of one Moderate and one Complete, measured.

    .venv/bin/python bench/bench_mesh.py [--starts 3] [--requests 200]

Starts the whole mesh as `quorum up` does (Triton, cost, voter, router and the provider
simulator, no API key: the simulator answers with zero added latency), on free ports with a
temporary data folder, then sends requests one at a time through the generated stubs and
prints p50/p95/max. What is measured is Quorum's own overhead plus the local models: the
simulated provider adds no think time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from quorum.mesh import Mesh, MeshOptions
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc


def percentiles(samples: list[float]) -> str:
    s = sorted(samples)
    p50 = statistics.median(s)
    p95 = s[min(len(s) - 1, int(0.95 * len(s)))]
    return f"p50 {p50:7.2f} ms   p95 {p95:7.2f} ms   max {s[-1]:7.2f} ms   (n={len(s)})"


def timed(call: Callable[[], object], n: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        call()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=3, help="mesh start-ups to time")
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}

    starts = []
    with tempfile.TemporaryDirectory(prefix="quorum-bench-") as tmp:
        for i in range(args.starts):
            mesh = Mesh(MeshOptions(data_dir=Path(tmp) / str(i), ephemeral_ports=True, env=env))
            t = time.perf_counter()
            mesh.start()
            starts.append(time.perf_counter() - t)
            if i < args.starts - 1:
                mesh.stop()
        print("mesh start-up (Triton + cost + voter + router + simulator, until all SERVING):")
        print(
            f"  runs {len(starts)}: "
            + ", ".join(f"{s:.2f} s" for s in starts)
            + f"   median {statistics.median(starts):.2f} s"
        )
        try:
            with (
                grpc.insecure_channel(mesh.addresses["voter"]) as vch,
                grpc.insecure_channel(mesh.addresses["router"]) as rch,
            ):
                voter = voter_pb2_grpc.VoterServiceStub(vch)
                router = router_pb2_grpc.RouterServiceStub(rch)
                text = "Thanks for the quick delivery, the package arrived in perfect condition."
                mod = voter_pb2.ModerateRequest(text=text)
                print("Moderate (local profanity-check on Triton; no keyed judge):")
                print(
                    "  "
                    + percentiles(timed(lambda: voter.Moderate(mod, timeout=10), args.requests))
                )
                plain = router_pb2.CompleteRequest(
                    prompt="What is a quorum?", moderation=router_pb2.MODERATION_MODE_NONE
                )
                print("Complete on the simulator, no moderation (route, call, price, record):")
                print(
                    "  "
                    + percentiles(timed(lambda: router.Complete(plain, timeout=10), args.requests))
                )
                moderated = router_pb2.CompleteRequest(prompt="What is a quorum?")
                print("Complete on the simulator with input moderation (the default policy):")
                print(
                    "  "
                    + percentiles(
                        timed(lambda: router.Complete(moderated, timeout=10), args.requests)
                    )
                )
        finally:
            mesh.stop()


if __name__ == "__main__":
    main()
