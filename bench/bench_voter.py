"""Moderate latency and throughput: the local judges on the real tritonserver, and the effect
of early decision when a remote judge is slow; with --batch N, ModerateBatch instead.

    .venv/bin/python bench/bench_voter.py [--seconds 5] [--concurrency 32] [--requests 60]
    .venv/bin/python bench/bench_voter.py --batch 256 [--batch-concurrency 2] [--seconds 5]

Starts Triton with every model in triton/ and the voter as its own process, on free loopback
ports, then measures ``Moderate`` through the generated stub:

1. every local judge, at concurrency 1 and ``--concurrency``: p50/p99 and texts/s, and at
   ``--concurrency`` the CPU time each process (voter, Triton, each model's stub, this client)
   spent a text, read from /proc;
2. the fast tier alone (the judges named by ``--fast``), the same way;
3. with two remote judges on provider simulators (labelled simulated: their verdicts come
   from keyword lists), one answering in 20 ms and one in ``--slow-s``: p50/p99 one request
   at a time, with early decision on and off, for texts the vote can settle early (clearly
   unsafe) and for texts it cannot (safe: the slow judge alone could still flag a category).

With ``--batch N`` it measures ``ModerateBatch`` of N texts instead, for every local judge and
for the fast tier: one batch at a time and ``--batch-concurrency`` batches at once, texts/s
and p50/p99 per batch, and at ``--batch-concurrency`` the CPU each process spent a text.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
from bench_mesh import cpu_line, cpu_s, processes

from quorum import config
from quorum.ids import free_ports
from quorum.registry import load_registry
from quorum.simulator import ProviderSimulator
from quorum.tritonserver import TritonOptions, TritonServer, default_model_repository
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc

TEXTS = [
    "thank you for your help, have a lovely day",
    "you are a fucking idiot",
    "could you please send me the quarterly report by friday?",
    "write an erotic story where two adults have sex in the shower",
    "what a piece of shit",
    "the meeting moved to 3pm, see you there",
]
UNSAFE = "I will kill you and your family, you worthless idiot"
SAFE = "could you please send me the quarterly report by friday?"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@asynccontextmanager
async def _voter(config_text: str, data_dir: str) -> AsyncIterator[voter_pb2_grpc.VoterServiceStub]:
    """The voter as its own process (as in production), on a free port."""
    path = Path(data_dir) / "voter.toml"
    path.write_text(config_text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUORUM_", "OTEL_"))}
    env |= {"QUORUM_DATA_DIR": data_dir, "OTEL_TRACES_EXPORTER": "none"}
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "services.voter", "--config", str(path), "--address", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        match = re.search(r"listening on (\S+)", line)
        if not match:
            raise RuntimeError(f"the voter did not start: {line!r}")
        async with grpc.aio.insecure_channel(match[1]) as channel:
            await channel.channel_ready()
            yield voter_pb2_grpc.VoterServiceStub(channel)
    finally:
        proc.terminate()
        proc.wait(10)


def _config(triton: TritonServer, extra: str = "") -> str:
    # no cost service: the local judges bill nothing anyway; metrics served as by default,
    # on a free port
    cost_port, metrics_port = free_ports(2)
    return (
        f'[voter]\ntriton_address = "{triton.grpc_address}"\n'
        f'cost_address = "127.0.0.1:{cost_port}"\n'
        f'metrics_address = "127.0.0.1:{metrics_port}"\n' + extra
    )


async def _throughput(
    stub: voter_pb2_grpc.VoterServiceStub,
    concurrency: int,
    seconds: float,
    models: list[str],
    batch: int = 0,
) -> tuple[list[float], float]:
    """Latencies of the calls made by ``concurrency`` callers for ``seconds``: Moderate, or
    ModerateBatch of ``batch`` texts."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        i = w
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            if batch:
                texts = [TEXTS[(i + k) % len(TEXTS)] for k in range(batch)]
                resp = await stub.ModerateBatch(
                    voter_pb2.ModerateBatchRequest(texts=texts, models=models), timeout=60
                )
                if any(r.HasField("error") for r in resp.results):
                    raise RuntimeError(f"a text of the batch failed: {resp.results}")
            else:
                req = voter_pb2.ModerateRequest(text=TEXTS[i % len(TEXTS)], models=models)
                await stub.Moderate(req, timeout=30)
            latencies.append(time.perf_counter() - t0)
            i += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return latencies, time.perf_counter() - t0


def _line(
    label: str, latencies: list[float], elapsed: float | None = None, per_call: int = 1
) -> str:
    ms = [x * 1000 for x in latencies]
    rate = f"  {len(ms) * per_call / elapsed:>7.0f} texts/s" if elapsed else ""
    return (
        f"  {label:<34} p50 {statistics.median(ms):7.2f} ms  p99 {_pct(ms, 0.99):7.2f} ms"
        f"  (n={len(ms)}){rate}"
    )


async def _local(triton: TritonServer, args: argparse.Namespace, data_dir: str) -> None:
    batch = args.batch
    async with _voter(_config(triton), data_dir) as stub:
        judges = [j.name for j in load_registry(config.load(env={})).resolve_keys({}).judges()]
        await _throughput(stub, 4, 1.0, [], batch)  # warm-up
        # the voter, Triton and each model's stubs (this client started them), and this client
        parts = processes(os.getpid())
        levels = (1, args.batch_concurrency) if batch else (1, args.concurrency)
        for label, models in (
            (f"every local judge ({', '.join(judges)})", []),
            (f"fast tier ({', '.join(args.fast)})", list(args.fast)),
        ):
            print(label + (f", ModerateBatch of {batch} texts" if batch else ""), flush=True)
            for c in levels:
                before = {name: cpu_s(*pids) for name, pids in parts.items()}
                lat, elapsed = await _throughput(stub, c, args.seconds, models, batch)
                calls = "batches" if batch else "concurrency"
                print(_line(f"{calls} {c}", lat, elapsed, max(batch, 1)), flush=True)
                if c == levels[-1]:
                    texts = len(lat) * max(batch, 1)
                    print(cpu_line(parts, before, texts, "text"), flush=True)


async def _early(triton: TritonServer, args: argparse.Namespace, data_dir: str) -> None:
    with (
        ProviderSimulator(latency_s=0.02) as fast,
        ProviderSimulator(latency_s=args.slow_s) as slow,
    ):
        judges = ""
        for name, sim in (("fast", fast), ("slow", slow)):
            judges += (
                f'\n[providers.sim-{name}]\nbase_url = "{sim.url}"\nsimulated = true\n'
                f'[models.judge-{name}]\nprovider = "sim-{name}"\n'
                'input_per_mtok = "0"\noutput_per_mtok = "0"\nmoderation = { categories = '
                '["violence", "adult", "hate", "spam", "harassment"] }\n'
            )
        print(
            f"two remote judges on the simulator (simulated), one answering in 20 ms, one in "
            f"{args.slow_s * 1000:.0f} ms; one request at a time",
            flush=True,
        )
        for early in (False, True):
            extra = f"model_timeout_s = {args.slow_s + 2}\nearly_decision = {str(early).lower()}\n"
            async with _voter(_config(triton, extra + judges), data_dir) as stub:
                for label, text in (("clearly unsafe", UNSAFE), ("safe", SAFE)):
                    lat: list[float] = []
                    skipped = 0
                    for _ in range(args.requests):
                        t0 = time.perf_counter()
                        resp = await stub.Moderate(voter_pb2.ModerateRequest(text=text), timeout=30)
                        lat.append(time.perf_counter() - t0)
                        skipped += any(
                            v.status == voter_pb2.VOTE_STATUS_SKIPPED for v in resp.votes
                        )
                    state = "on " if early else "off"
                    print(
                        _line(f"early decision {state}, {label}", lat)
                        + f"  slow judge skipped {skipped}/{args.requests}",
                        flush=True,
                    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--requests", type=int, default=60, help="per early-decision measurement")
    p.add_argument("--slow-s", type=float, default=0.5, help="the slow remote judge's latency")
    p.add_argument("--fast", nargs="+", default=["profanity-check", "nsfw-check", "ngram-heads"])
    p.add_argument(
        "--batch", type=int, default=0, metavar="N", help="measure ModerateBatch of N texts"
    )
    p.add_argument(
        "--batch-concurrency", type=int, default=2, help="batches in flight at once (--batch)"
    )
    args = p.parse_args()
    print(f"voter + tritonserver (pytriton 0.7.0, CPU), {os.cpu_count()} cores", flush=True)
    t0 = time.perf_counter()
    with (
        TritonServer(TritonOptions(model_repository=default_model_repository())) as triton,
        tempfile.TemporaryDirectory() as data_dir,
    ):
        print(f"Triton ready with {', '.join(triton.models)} in {time.perf_counter() - t0:.1f} s")
        asyncio.run(_local(triton, args, data_dir))
        if not args.batch:
            asyncio.run(_early(triton, args, data_dir))


if __name__ == "__main__":
    main()
