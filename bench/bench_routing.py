"""What the prompt classifier adds to a ``Complete`` that is routed automatically.

    .venv/bin/python bench/bench_routing.py [--requests 200]

Runs `quorum up` twice (no API key: the provider simulator answers), with ``[routing]
classifier`` off and on, and sends ``--requests`` completions one at a time that name neither
a model nor a task (moderation off), cycling over the test split of
``data/routing_prompts.csv``. Prints p50 / p99 of each and the difference of the medians, how
many routes the classifier decided and the start-up time; then the memory of the Triton server
and of each of its Python-backend stub processes (RSS, and PSS, which counts the pages they
share once), read from /proc after the requests, and what loading ``prompt_task`` adds (its
stub holds one more encoder). The accuracy of rules, classifier and both together is printed
by ``scripts/train_prompt_task.py --eval``.
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


def _kb(path: Path, key: str) -> int:
    """The ``key:`` figure (kB) of a /proc status or smaps_rollup file, 0 when absent."""
    for line in path.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def _triton_memory(root: int) -> dict[str, tuple[int, int]]:
    """Resident and proportional memory (RSS, PSS; kB) of the Triton server started by process
    ``root`` (``quorum up``) and of each of its Python-backend stubs, named by model. PSS
    shares each page among the processes that map it, so the stubs' common libraries are
    not counted once per stub as RSS counts them."""
    parts: dict[str, tuple[int, int]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if cmd[0].endswith(b"/tritonserver"):
                for stub in [pid, *_children(pid)]:
                    args = Path(f"/proc/{stub}/cmdline").read_bytes().split(b"\0")
                    model = next(
                        (Path(a.decode()).parts[-3] for a in args if a.endswith(b"model.py")), ""
                    )
                    name = f"{model} stub" if model else "tritonserver"
                    parts[name] = (
                        _kb(Path(f"/proc/{stub}/status"), "VmRSS"),
                        _kb(Path(f"/proc/{stub}/smaps_rollup"), "Pss"),
                    )
                continue
            todo.extend(_children(pid))
        except OSError:
            continue
    return parts


def _mb(kb: int) -> str:
    return f"{kb / 1024:.0f} MB"


def _memory_line(parts: dict[str, tuple[int, int]]) -> str:
    rss, pss = (sum(v[i] for v in parts.values()) for i in (0, 1))
    each = ", ".join(f"{name} {_mb(r)}" for name, (r, _) in sorted(parts.items()))
    return f"  Triton RSS {_mb(rss)} (PSS {_mb(pss)}): {each}"


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
    memory: dict[bool, dict[str, tuple[int, int]]] = {}
    for on in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            env = {"QUORUM_ROUTING__CLASSIFIER": "true" if on else "false"}
            proc, addresses, took = start_quorum_up(Path(tmp), env)
            try:
                ms, decided = asyncio.run(_run(addresses["router"], prompts, args.requests))
                memory[on] = _triton_memory(proc.pid)  # after serving: warm, as in use
            finally:
                stop(proc)
        label = "classifier on " if on else "classifier off"
        medians[on] = statistics.median(ms)
        print(
            f"{label}: Complete p50 {medians[on]:.1f} ms, p99 {_pct(ms, 99):.1f} ms; "
            f"{decided}/{len(ms)} routed by the classifier; quorum up {took:.1f} s"
        )
        print(_memory_line(memory[on]))
    print(f"added by the classifier (p50): {medians[True] - medians[False]:+.1f} ms")
    off, on_ = memory[False], memory[True]
    stub = on_.get("prompt_task stub", (0, 0))
    server = [
        on_.get("tritonserver", (0, 0))[i] - off.get("tritonserver", (0, 0))[i] for i in (0, 1)
    ]
    rss, pss = (sum(v[i] for v in on_.values()) - sum(v[i] for v in off.values()) for i in (0, 1))
    print(
        f"added by prompt_task: RSS {rss / 1024:+.0f} MB (its stub {_mb(stub[0])}, tritonserver "
        f"{server[0] / 1024:+.0f} MB), PSS {pss / 1024:+.0f} MB (stub {_mb(stub[1])})"
    )


if __name__ == "__main__":
    main()
