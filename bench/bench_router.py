"""The router's overhead over a direct provider call, and its throughput beside the LiteLLM proxy.

    .venv/bin/python bench/bench_router.py [--requests 300] [--seconds 10] [--concurrency 32]
                                           [--provider fast|simulator] [--no-litellm]
                                           [--router-workers 1] [--channels N]
    .venv/bin/python bench/bench_router.py --budgets [--requests 300]

Runs `quorum up` as a person does (Triton, cost, voter, router and the provider simulator on
free loopback ports, a temporary data folder). The provider that gpt-4.1 is sent to is, by
default (``--provider fast``), ``bench/fastprovider.py``: a stand-in that answers every
request at once, with a key set for it as for a real provider, so that the figures are the
router's and not the simulator's (the simulator costs about a millisecond of CPU a request
and caps throughput near 150 requests/s here). ``--provider simulator`` uses the simulator.
Then:

1. **Overhead**, one request at a time: the same chat completion sent straight to the
   provider over HTTP (with the client the router sends with,
   ``quorum.backends.transport.ProviderClient``) and through the router's ``Complete``
   (generated stub), with moderation off and with input moderation (every local judge on
   Triton), and through ``bench/grpcfloor.py``, a bare grpc.aio server that only forwards
   ``Complete`` to the provider with the same client (no routing, usage, telemetry, auth):
   the floor, the least a router in Python on grpc.aio can add here. The overhead is the
   difference of the medians (and of the p99s).
2. **Throughput** at ``--concurrency`` calls in flight for ``--seconds``: straight to the
   provider (the ceiling), through the router (moderation off, and input moderation), and
   through the LiteLLM proxy in front of the same provider, all driven by that same client.
   The router serves with ``--router-workers`` processes (``[router] workers``, 1 by
   default) and LiteLLM with as many (``--num_workers``), so that the two compare like for
   like. The gRPC rows spread their calls over ``--channels`` channels, each its own
   connection (one by default with one router process, as before; one per call in flight
   with several: a connection is served by one router process, and LiteLLM's client opens
   one per call in flight anyway). After each router row and LiteLLM's, a line breaks the
   CPU down by process (user + system, every thread, from /proc), per request: the router,
   the voter, the cost service, Triton and each model's stub, the provider stand-in, this
   client (LiteLLM's row: its own processes, the provider and this client). LiteLLM is
   installed by this script into a virtual
   environment of its own (``.quorum/bench/litellm``; never a dependency of Quorum) on first
   use, from PyPI.

``--budgets`` measures instead what a hard budget adds to a call: ``Complete`` one at a time
for a tenant with no budget and for one with a (large) hard budget, on a mesh that reserves
each call with the cost service and on one with budget leases (``[usage] lease_calls = 64``).

Client, provider and every server share this machine's cores, so the figures are what this
machine does with all of them on it; the provider adds no think time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import httpx
from bench_mesh import cpu_line, cpu_s, processes, start_quorum_up, stop
from grpcfloor import post_json

from quorum.backends.transport import ProviderClient
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.ids import free_ports
from quorum.router.v1 import router_pb2, router_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
LITELLM_VERSION = "1.106.12"
PROMPT = "What is a quorum?"
#: the model an unnamed prompt like PROMPT is routed to with the defaults (auto: complex)
MODEL = "gpt-4.1"
MAX_TOKENS = 64

Call = Callable[[], Awaitable[object]]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _body(model: str) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
    }


async def _one_at_a_time(call: Call, n: int) -> list[float]:
    for _ in range(20):
        await call()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def _saturated(call: Call, concurrency: int, seconds: float) -> tuple[int, list[float]]:
    await asyncio.gather(*(call() for _ in range(concurrency)))  # warm every connection
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - t) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return round(len(latencies) / (time.perf_counter() - t0)), latencies


def _http(client: ProviderClient, url: str, body: dict[str, object]) -> Call:
    async def call() -> object:
        return await post_json(client, url, body)

    return call


def _complete(
    stub: router_pb2_grpc.RouterServiceStub | list[router_pb2_grpc.RouterServiceStub],
    moderation: router_pb2.ModerationMode,
    metadata: tuple[tuple[str, str], ...] = (),
) -> Call:
    """``Complete`` on ``stub``, or on each of several stubs in turn."""
    req = router_pb2.CompleteRequest(prompt=PROMPT, max_tokens=MAX_TOKENS, moderation=moderation)
    stubs = itertools.cycle(stub if isinstance(stub, list) else [stub])

    async def call() -> object:
        return await next(stubs).Complete(req, metadata=metadata, timeout=30)

    return call


@contextlib.asynccontextmanager
async def _stubs(
    address: str, count: int
) -> AsyncIterator[list[router_pb2_grpc.RouterServiceStub]]:
    """``count`` channels to ``address``, each its own connection (without a local subchannel
    pool, channels to one address share one connection), as stubs."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options) for _ in range(count)]
    try:
        yield [router_pb2_grpc.RouterServiceStub(c) for c in channels]
    finally:
        for c in channels:
            await c.close()


async def _budgets(addresses: dict[str, str], args: argparse.Namespace, label: str) -> None:
    """Complete one at a time (moderation off) for a tenant with no budget and for one with
    a hard budget (the call waits for its reservation; the commit goes with the record)."""
    none = router_pb2.MODERATION_MODE_NONE
    async with (
        grpc.aio.insecure_channel(addresses["router"]) as channel,
        grpc.aio.insecure_channel(addresses["cost"]) as cost_channel,
    ):
        limit = common_pb2.Money(micros=10**15, currency="USD")
        await cost_pb2_grpc.CostServiceStub(cost_channel).SetBudget(
            cost_pb2.SetBudgetRequest(budget=cost_pb2.Budget(tenant="bench", limit=limit)),
            timeout=10,
        )
        stub = router_pb2_grpc.RouterServiceStub(channel)
        free = await _one_at_a_time(_complete(stub, none), args.requests)
        held = await _one_at_a_time(
            _complete(stub, none, (("quorum-tenant", "bench"),)), args.requests
        )
        print(f"budgets, {label}, one request at a time ({args.requests} each):")
        print(_row("router Complete, a tenant with no budget", free))
        print(_row("router Complete, a tenant with a hard budget", held))
        added = statistics.median(held) - statistics.median(free)
        print(
            f"  {'':<44}the budget adds p50 {added:+.2f}"
            f" ms, p99 {_pct(held, 0.99) - _pct(free, 0.99):+.2f} ms"
        )


def _litellm_python() -> Path:
    """The LiteLLM proxy's own environment, made on first use."""
    venv = ROOT / ".quorum" / "bench" / "litellm"
    python = venv / "bin" / "python"
    if not (venv / f".installed-{LITELLM_VERSION}").exists():
        print(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             f"litellm[proxy]=={LITELLM_VERSION}"],
            check=True,
        )  # fmt: skip
        (venv / f".installed-{LITELLM_VERSION}").touch()
    return python


def _start_script(name: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """``bench/<name>`` on a free port (``--port``), once it says it is listening: (process,
    port)."""
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / name), "--port", str(port), *args],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith(b"listening"):
        raise SystemExit(f"bench/{name} did not start ({proc.wait()})")
    return proc, port


def _start_provider() -> tuple[subprocess.Popen[bytes], str]:
    """bench/fastprovider.py on a free port: (process, its /v1 URL)."""
    proc, port = _start_script("fastprovider.py")
    return proc, f"http://127.0.0.1:{port}/v1"


@contextlib.asynccontextmanager
async def _floor(provider_url: str) -> AsyncIterator[str]:
    """bench/grpcfloor.py (a bare grpc.aio forwarder) on a free port, while in use: its
    address."""
    proc, port = await asyncio.to_thread(_start_script, "grpcfloor.py", "--provider", provider_url)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _start_litellm(
    simulator_url: str, tmp: Path, workers: int
) -> tuple[subprocess.Popen[bytes], str]:
    python = _litellm_python()
    (port,) = free_ports(1)
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {simulator_url}\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  telemetry: false\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env |= {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        # no keys, like the mesh it is compared with (both on loopback)
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    proc = subprocess.Popen(
        [str(python.parent / "litellm"), "--config", str(config), "--host", "127.0.0.1",
         "--port", str(port), "--num_workers", str(workers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the LiteLLM proxy exited ({proc.returncode})")
        try:
            if httpx.get(f"{url}/health/liveliness", timeout=1).status_code == 200:
                return proc, f"{url}/v1/chat/completions"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the LiteLLM proxy did not start within 120 s")


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def _row(label: str, ms: list[float], rate: int | None = None) -> str:
    per_s = f"  {rate:>6} req/s" if rate is not None else ""
    return (
        f"  {label:<44}{per_s}  p50 {statistics.median(ms):7.2f} ms"
        f"  p99 {_pct(ms, 0.99):7.2f} ms  (n={len(ms)})"
    )


async def _measure(addresses: dict[str, str], args: argparse.Namespace, tmp: Path) -> None:
    """Both measurements. The CPU lines read every process this one started (the mesh, the
    provider stand-in, the floor, LiteLLM), with their children."""
    provider = addresses["provider"]
    direct_url = provider + "/chat/completions"
    none, inp = router_pb2.MODERATION_MODE_NONE, router_pb2.MODERATION_MODE_INPUT
    async with (
        _floor(provider) as floor_address,
        contextlib.aclosing(ProviderClient(max_connections=args.concurrency)) as http,
        grpc.aio.insecure_channel(addresses["router"]) as channel,
        grpc.aio.insecure_channel(floor_address) as floor_channel,
    ):
        stub = router_pb2_grpc.RouterServiceStub(channel)
        bare = _complete(router_pb2_grpc.RouterServiceStub(floor_channel), none)
        direct = _http(http, direct_url, _body(MODEL))
        print(f"overhead, one request at a time ({args.requests} each, max_tokens {MAX_TOKENS}):")
        base = await _one_at_a_time(direct, args.requests)
        print(_row(f"straight to the {args.provider} provider (HTTP)", base))
        for label, call in (
            ("bare grpc.aio forwarder (the floor)", bare),
            ("router Complete, moderation off", _complete(stub, none)),
            ("router Complete, input moderation", _complete(stub, inp)),
        ):
            ms = await _one_at_a_time(call, args.requests)
            print(_row(label, ms))
            print(
                f"  {'':<44}overhead p50 {statistics.median(ms) - statistics.median(base):+.2f}"
                f" ms, p99 {_pct(ms, 0.99) - _pct(base, 0.99):+.2f} ms"
            )

        workers = args.router_workers
        print(
            f"throughput, {args.concurrency} calls in flight for {args.seconds:g} s; the router"
            f" with {_processes(workers)}, gRPC over {args.channels} channel(s):"
        )
        rates: dict[str, int] = {}
        async with (
            _stubs(addresses["router"], args.channels) as router_stubs,
            _stubs(floor_address, args.channels) as floor_stubs,
        ):
            for label, call in (
                (f"straight to the {args.provider} provider (HTTP)", direct),
                ("bare grpc.aio forwarder (the floor)", _complete(floor_stubs, none)),
                ("router Complete, moderation off", _complete(router_stubs, none)),
                ("router Complete, input moderation", _complete(router_stubs, inp)),
            ):
                parts = processes(os.getpid())
                before = {n: cpu_s(*pids) for n, pids in parts.items()}
                rate, ms = await _saturated(call, args.concurrency, args.seconds)
                rates[label] = rate
                print(_row(label, ms, rate))
                if label.startswith("router"):
                    print(cpu_line(parts, before, len(ms), "request"))
        if args.litellm:
            proc, url = await asyncio.to_thread(_start_litellm, provider, tmp, workers)
            try:
                parts = processes(os.getpid(), named={proc.pid: "LiteLLM"})
                before = {n: cpu_s(*pids) for n, pids in parts.items()}
                rate, ms = await _saturated(
                    _http(http, url, _body(MODEL)), args.concurrency, args.seconds
                )
                used = cpu_line(parts, before, len(ms), "request")
            finally:
                proc.terminate()
                proc.wait(30)
            print(_row(f"LiteLLM proxy {LITELLM_VERSION}, {workers} worker(s)", ms, rate))
            print(used)
            for label in ("router Complete, moderation off", "router Complete, input moderation"):
                print(f"  {label}: {rates[label] / max(rate, 1):.1f}x LiteLLM's requests/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300, help="per one-at-a-time measurement")
    p.add_argument("--seconds", type=float, default=10.0, help="per throughput measurement")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--provider", choices=("fast", "simulator"), default="fast")
    p.add_argument("--no-litellm", dest="litellm", action="store_false")
    p.add_argument(
        "--router-workers",
        type=int,
        default=1,
        help="router processes ([router] workers); LiteLLM gets as many (--num_workers)",
    )
    p.add_argument(
        "--channels",
        type=int,
        default=0,
        help="gRPC channels (connections) for the throughput rows (default: 1 with one router"
        " process, else one per call in flight)",
    )
    p.add_argument(
        "--budgets",
        action="store_true",
        help="instead: what a hard budget adds to a call, per-call reservations and leases",
    )
    args = p.parse_args()
    if args.budgets:
        _budget_runs(args)
        return
    if not args.channels:
        args.channels = 1 if args.router_workers == 1 else args.concurrency
    print(
        f"router vs direct vs LiteLLM on {os.cpu_count()} cores: the router with"
        f" {_processes(args.router_workers)}, LiteLLM with --num_workers {args.router_workers}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="quorum-bench-") as tmp:
        fast, env, url = None, {}, ""
        if args.provider == "fast":
            fast, url = _start_provider()
            # gpt-4.1 is a real provider's model, with a key: the router calls the stand-in
            env = {"QUORUM_PROVIDERS__OPENAI__BASE_URL": url, "OPENAI_API_KEY": "bench-key"}
        if args.router_workers > 1:
            # each worker's scrape endpoint on a free port of its own (the one start_quorum_up
            # picks need not have free ports after it)
            env |= {
                "QUORUM_ROUTER__WORKERS": str(args.router_workers),
                "QUORUM_ROUTER__METRICS_ADDRESS": "127.0.0.1:0",
            }
        try:
            proc, addresses, took = start_quorum_up(Path(tmp) / "mesh", env)
            addresses["provider"] = url or addresses["simulator"]
            print(f"quorum up in {took:.1f} s", flush=True)
            try:
                asyncio.run(_measure(addresses, args, Path(tmp)))
            finally:
                stop(proc)
        finally:
            if fast is not None:
                fast.terminate()
                fast.wait(10)


def _budget_runs(args: argparse.Namespace) -> None:
    """``--budgets``: two meshes on the fast provider (a keyed model: simulated calls are never
    reserved), one reserving each call, one with budget leases (``[usage] lease_calls``)."""
    with tempfile.TemporaryDirectory(prefix="quorum-bench-") as tmp:
        fast, url = _start_provider()
        try:
            env = {"QUORUM_PROVIDERS__OPENAI__BASE_URL": url, "OPENAI_API_KEY": "bench-key"}
            for label, extra in (
                ("a Reserve per call", {}),
                ("leases of 64 calls", {"QUORUM_USAGE__LEASE_CALLS": "64"}),
            ):
                proc, addresses, _ = start_quorum_up(Path(tmp) / label[:8], env | extra)
                try:
                    asyncio.run(_budgets(addresses, args, label))
                finally:
                    stop(proc)
        finally:
            fast.terminate()
            fast.wait(10)


if __name__ == "__main__":
    main()
