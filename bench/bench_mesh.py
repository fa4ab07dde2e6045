"""Start-up time of `quorum up` and the latency of one Moderate and one Complete, measured.

    .venv/bin/python bench/bench_mesh.py [--starts 3] [--requests 200]

With no API key every completion is answered by the provider simulator, and a simulated call
is never reserved against a budget: what a hard budget costs a real call is measured by
``bench/bench_router.py --budgets`` (a keyed provider stand-in).

Runs `quorum up` as a person does (no API key: Triton, cost, voter, router and the provider
simulator; ports moved to free ones with QUORUM_* overrides, a temporary data folder) and
times it from launch to "Quorum is up" (every service SERVING). Against the last one it
sends requests one at a time through the generated stubs and prints p50/p95/max. The
simulator adds no think time, so this is Quorum's own overhead plus the local model.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from quorum.ids import free_ports
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc

QUORUM = str(Path(sys.executable).parent / "quorum")


def start_quorum_up(
    data_dir: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], dict[str, str], float]:
    router, voter, cost, th, tg, tm, sim, m_router, m_voter, m_cost = free_ports(10)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env |= {
        "QUORUM_DATA_DIR": str(data_dir),
        "QUORUM_ROUTER__ADDRESS": f"127.0.0.1:{router}",
        "QUORUM_VOTER__ADDRESS": f"127.0.0.1:{voter}",
        "QUORUM_COST__ADDRESS": f"127.0.0.1:{cost}",
        "QUORUM_TRITON__HTTP_PORT": str(th),
        "QUORUM_TRITON__GRPC_PORT": str(tg),
        "QUORUM_TRITON__METRICS_PORT": str(tm),
        "QUORUM_SIMULATOR__PORT": str(sim),
        # metrics served as by default, on free ports (another mesh may hold the defaults)
        "QUORUM_ROUTER__METRICS_ADDRESS": f"127.0.0.1:{m_router}",
        "QUORUM_VOTER__METRICS_ADDRESS": f"127.0.0.1:{m_voter}",
        "QUORUM_COST__METRICS_ADDRESS": f"127.0.0.1:{m_cost}",
    }
    env |= extra_env or {}  # last: it may move any of the above
    t = time.perf_counter()
    proc = subprocess.Popen(
        [QUORUM, "up"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Quorum is up"):
            took = time.perf_counter() - t
            break
    else:
        raise SystemExit(f"quorum up failed (exit {proc.wait()})")
    addresses = {
        "router": f"127.0.0.1:{router}",
        "voter": f"127.0.0.1:{voter}",
        "cost": f"127.0.0.1:{cost}",
        "simulator": f"http://127.0.0.1:{sim}/v1",
    }
    return proc, addresses, took


def cpu_s(*pids: int) -> float:
    """CPU seconds (user + system, every thread) processes have used so far (Linux /proc)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    out = []
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _part(pid: int) -> str:
    """What a process of the mesh is, from its command line."""
    if pid == os.getpid():
        return "this client"
    try:
        argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return "gone"
    for arg in argv:
        if arg.startswith("services."):
            return arg.removeprefix("services.")
        if arg.endswith("model.py"):  # a Triton Python-backend stub: .../<model>/1/model.py
            return f"{Path(arg).parts[-3]} stub"
    name = Path(argv[0]).name if argv else "?"
    script = next((Path(a).stem for a in argv[1:2] if a.endswith(".py")), "")
    return script or ("quorum up" if "up" in argv[1:3] else name)


def processes(*roots: int, named: dict[int, str] | None = None) -> dict[str, list[int]]:
    """The processes under ``roots`` (each root and its descendants), by what they are
    (:func:`_part`: ``router``, ``voter``, ``cost``, ``tritonserver``, ``<model> stub``, a
    script's name); a process in ``named``, and every process under it, by that name."""
    parts: dict[str, list[int]] = {}
    seen: set[int] = set()
    todo = [(pid, "") for pid in roots]
    while todo:
        pid, inherited = todo.pop()
        if pid in seen:  # a root may be another's child (this client started them)
            continue
        seen.add(pid)
        name = (named or {}).get(pid) or inherited
        parts.setdefault(name or _part(pid), []).append(pid)
        todo += [(child, name) for child in _children(pid)]
    return parts


def cpu_line(parts: dict[str, list[int]], before: dict[str, float], calls: int, what: str) -> str:
    """The CPU each part used a call since ``before`` (``{part: cpu_s(...)}``), in ms."""
    used = {
        n: (cpu_s(*pids) - before.get(n, 0.0)) * 1000 / max(calls, 1) for n, pids in parts.items()
    }
    total = sum(used.values())
    ceiling = 1000 * (os.cpu_count() or 1) / max(total, 1e-9)
    shown = sorted(((ms, n) for n, ms in used.items() if ms >= 0.01), reverse=True)
    return (
        f"    CPU a {what}: "
        + ", ".join(f"{n} {ms:.2f} ms" for ms, n in shown)
        + f"; {total:.2f} ms in all: about {ceiling:.0f} {what}s/s, every core busy"
    )


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)


def percentiles(samples: list[float]) -> str:
    s = sorted(samples)
    p95 = s[min(len(s) - 1, int(0.95 * len(s)))]
    return (
        f"p50 {statistics.median(s):6.2f} ms   p95 {p95:6.2f} ms   max {s[-1]:6.2f} ms"
        f"   (n={len(s)}, one at a time)"
    )


def timed(call: Callable[[], object], n: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        call()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append((time.perf_counter() - t) * 1000)
    return out


def call(rpc: Callable[..., object], req: object) -> Callable[[], object]:
    return lambda: rpc(req, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=3, help="`quorum up` start-ups to time")
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="quorum-bench-") as tmp:
        starts = []
        for i in range(args.starts):
            proc, addresses, took = start_quorum_up(Path(tmp) / str(i))
            starts.append(took)
            if i < args.starts - 1:
                stop(proc)
        print("`quorum up` start-up (launch to every service SERVING, simulator included):")
        print(
            "  "
            + ", ".join(f"{s:.2f} s" for s in starts)
            + f"   median {statistics.median(starts):.2f} s"
        )
        try:
            with (
                grpc.insecure_channel(addresses["voter"]) as vch,
                grpc.insecure_channel(addresses["router"]) as rch,
            ):
                voter = voter_pb2_grpc.VoterServiceStub(vch)
                router = router_pb2_grpc.RouterServiceStub(rch)
                text = "Thanks for the quick delivery, the package arrived in perfect condition."
                mod = voter_pb2.ModerateRequest(text=text)
                one = voter_pb2.ModerateRequest(text=text, models=["profanity-check"])
                plain = router_pb2.CompleteRequest(
                    prompt="What is a quorum?", moderation=router_pb2.MODERATION_MODE_NONE
                )
                moderated = router_pb2.CompleteRequest(prompt="What is a quorum?")
                n = args.requests
                rows = (
                    ("Moderate (every local judge on Triton; no keyed judge)", voter.Moderate, mod),
                    ("Moderate, profanity-check alone (models=[...])", voter.Moderate, one),
                    ("Complete, simulator, no moderation", router.Complete, plain),
                    ("Complete, simulator, input moderation (default)", router.Complete, moderated),
                )
                for title, rpc, req in rows:
                    print(f"{title}:")
                    print("  " + percentiles(timed(call(rpc, req), n)))
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
