"""What the prompt classifier adds to a ``Complete`` that is routed automatically.

    .venv/bin/python bench/bench_routing.py [--requests 200]

Runs `quorum up` twice (no API key: the provider simulator answers), with ``[routing]
classifier`` off and on, and sends ``--requests`` completions one at a time that name neither
a model nor a task (moderation off), cycling over the test split of
``data/routing_prompts.csv``. Prints p50 / p99 of each and the difference of the medians, how
many routes the classifier decided, and, on, the start-up time and resident memory of the
Triton server (the classifier costs one more encoder instance). The accuracy of rules,
classifier and both together is printed by ``scripts/train_prompt_task.py --eval``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from bench_mesh import start_quorum_up, stop

from quorum import datasets
from quorum.router.v1 import router_pb2, router_pb2_grpc


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _rss_mb(root: int, name: str) -> float:
    """Resident memory (MB) of the descendants of process ``root`` whose command line holds
    ``name`` (the mesh's own Triton server and its model stubs, no other process)."""
    parent: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                parent[int(proc.name)] = int(stat[1])
            except (OSError, ValueError, IndexError):
                continue
    total = 0
    for pid in parent:
        up = pid
        while up in parent and up != root:
            up = parent[up]
        if up != root:
            continue
        try:
            if name.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


async def _run(router: str, prompts: list[str], n: int) -> tuple[list[float], int]:
    ms: list[float] = []
    by_classifier = 0
    async with grpc.aio.insecure_channel(router) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        none = router_pb2.MODERATION_MODE_NONE
        for i in range(n + 10):
            req = router_pb2.CompleteRequest(
                prompt=prompts[i % len(prompts)], max_tokens=16, moderation=none
            )
            t = time.perf_counter()
            resp = await stub.Complete(req, timeout=30)
            if i >= 10:  # warm-up
                ms.append((time.perf_counter() - t) * 1000)
                by_classifier += "the classifier chose" in resp.route_reason
    return ms, by_classifier


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200)
    args = p.parse_args()
    prompts = [e.text for e in datasets.load_routing("test")]
    medians = {}
    for on in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            env = {"QUORUM_ROUTING__CLASSIFIER": "true" if on else "false"}
            proc, addresses, took = start_quorum_up(Path(tmp), env)
            try:
                triton_mb = _rss_mb(proc.pid, "triton")
                ms, decided = asyncio.run(_run(addresses["router"], prompts, args.requests))
            finally:
                stop(proc)
        label = "classifier on " if on else "classifier off"
        medians[on] = statistics.median(ms)
        print(
            f"{label}: Complete p50 {medians[on]:.1f} ms, p99 {_pct(ms, 99):.1f} ms; "
            f"{decided}/{len(ms)} routed by the classifier; quorum up {took:.1f} s, "
            f"Triton resident {triton_mb:.0f} MB"
        )
    print(f"added by the classifier (p50): {medians[True] - medians[False]:+.1f} ms")


if __name__ == "__main__":
    main()
