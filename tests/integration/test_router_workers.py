"""``[router] workers``: several router processes on one port, as real processes on loopback.

A router with ``workers = 2`` (the provider simulator as its model, a real cost service):
two processes listen on the one port it announces, the second a child of the first; calls
over many separate channels all succeed, both processes serve some of them (each one's own
Prometheus endpoint counts what it served), and the ledger holds each call once (each worker
has its own usage journal), and each exports its OTLP metrics as an instance of its own. A
journal left by a worker beyond ``workers`` is sent by the first. SIGTERM to the first ends
both with exit 0; SIGKILL to the first ends the second too (it asked Linux for SIGTERM when
its parent dies); a worker that dies or cannot start makes the first stop and exit 1; a bad
``workers`` is a configuration error; a fixed port something listens on is never shared."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from prometheus_client.parser import text_string_to_metric_families

from quorum import usage
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.simulator import ProviderSimulator
from quorum.usage import UsageRecord
from tests.conftest import ServiceProcess
from tests.integration.inproc import BILLED_SIM_CHAT
from tests.otlp_receiver import OtlpReceiver

CONFIG = (
    """
[registry]
default_model = "sim-chat"

[router]
moderation = "none"

"""
    + BILLED_SIM_CHAT
    + """"""
)

COMPLETE = "quorum.router.v1.RouterService/Complete"
CHANNELS = 40
CALLS_PER_CHANNEL = 3


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])  # after "pid (comm) state"


def ended(pid: int) -> bool:
    """Gone, or a zombie waiting for whoever reaps orphans."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def listening_pids(port: int) -> set[int]:
    """The processes with a TCP socket listening on ``port`` (from /proc: the sockets'
    inodes in /proc/net/tcp and tcp6, then whose descriptors point at them)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if int(cols[1].rpartition(":")[2], 16) == port and cols[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (proc / "fd").iterdir()}
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if links & inodes:
            pids.add(int(proc.name))
    return pids


def wait_until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def held_after_a_free_port() -> Iterator[int]:
    """A port held by a listening socket of this test, whose previous port is free."""
    for _ in range(50):
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            port = held.getsockname()[1]
            with socket.socket() as before:
                try:
                    before.bind(("127.0.0.1", port - 1))
                except OSError:
                    continue
            held.listen()
            yield port
            return
    pytest.fail("no free port just before a free port")


def metrics_urls(router: ServiceProcess) -> dict[int, str]:
    """Each worker's scrape URL, from its ``metrics on URL`` log line: by worker."""
    urls = {}
    for line in router.logs().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if str(entry.get("msg", "")).startswith("metrics on "):
            urls[entry["worker"]] = entry["msg"].removeprefix("metrics on ")
    return urls


def completes_served(url: str) -> float:
    text = httpx.get(url, timeout=5.0).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "rpc_server_call_duration_seconds_count"
        and s.labels.get("rpc_method") == COMPLETE
    )


@pytest.fixture
def config(sim: ProviderSimulator, tmp_path: Path) -> Path:
    path = tmp_path / "quorum.toml"
    path.write_text(CONFIG.format(url=sim.url))
    return path


@pytest.fixture
def cost(service_process: Callable[..., ServiceProcess], config: Path, tmp_path: Path):
    return service_process(
        "services.cost", "--config", str(config), "--address", "127.0.0.1:0",
        env={"QUORUM_DATA_DIR": str(tmp_path)},
    )  # fmt: skip


@pytest.fixture
def start_router(
    service_process: Callable[..., ServiceProcess], config: Path, cost: ServiceProcess, tmp_path
) -> Iterator[Callable[..., ServiceProcess]]:
    """Starts ``python -m services.router`` with ``router.workers=2`` (and ``*sets``); every
    worker still running at the end is killed (the fixture kills the first)."""
    started: list[int] = []

    def start(*sets: str, env: dict[str, str] | None = None) -> ServiceProcess:
        args = ["--config", str(config), "--address", "127.0.0.1:0"]
        for s in ("router.workers=2", f"router.cost_address={cost.address}", *sets):
            args += ["--set", s]
        env = {"QUORUM_DATA_DIR": str(tmp_path), **(env or {})}
        router = service_process("services.router", *args, env=env)
        started.extend(children(router.proc.pid))
        return router

    yield start
    for pid in started:
        if not ended(pid):
            os.kill(pid, signal.SIGKILL)


def test_two_processes_serve_one_port_and_share_the_calls(start_router, cost) -> None:
    router = start_router()
    (child,) = children(router.proc.pid)
    assert parent_of(child) == router.proc.pid
    assert listening_pids(router.port) == {router.proc.pid, child}
    urls = metrics_urls(router)
    assert set(urls) == {0, 1}  # each its own endpoint (port 0: a free one each)
    assert urls[0] != urls[1]

    def calls(i: int) -> list[str]:
        # its own connection: without a local subchannel pool, channels to one address in a
        # process share one connection (and so one worker)
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(router.address, options) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            return [
                stub.Complete(
                    router_pb2.CompleteRequest(prompt=f"hello {i}.{n}", max_tokens=8), timeout=20
                ).text
                for n in range(CALLS_PER_CHANNEL)
            ]

    with ThreadPoolExecutor(8) as pool:
        answers = [a for chunk in pool.map(calls, range(CHANNELS)) for a in chunk]
    assert len(answers) == CHANNELS * CALLS_PER_CHANNEL
    assert all(a for a in answers)
    served = {w: completes_served(url) for w, url in urls.items()}
    assert sum(served.values()) == CHANNELS * CALLS_PER_CHANNEL
    assert min(served.values()) > 0, served  # 40 connections spread over both

    with grpc.insecure_channel(cost.address) as channel:  # each call billed once
        stub = cost_pb2_grpc.CostServiceStub(channel)
        assert wait_until(
            lambda: (
                stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5).requests
                >= len(answers)
            ),
            15,
        )
        summary = stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
    assert summary.requests == len(answers)


def test_each_worker_exports_its_metrics_as_an_instance_of_its_own(start_router) -> None:
    # the same service.name from two processes: without an instance id of its own each, a
    # collector would take their counters for one series
    with OtlpReceiver() as rx:
        router = start_router(
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "200"}
        )

        def resources() -> dict[int, set[str]]:
            out: dict[int, set[str]] = {}
            for (path, _), (_, body) in zip(rx.requests(), rx.bodies(), strict=False):
                if path != "/v1/metrics":
                    continue
                for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics:
                    attrs = {a.key: a.value for a in rm.resource.attributes}
                    assert attrs["service.name"].string_value == "quorum-router"
                    worker = attrs["quorum.worker"].int_value
                    out.setdefault(worker, set()).add(attrs["service.instance.id"].string_value)
            return out

        assert wait_until(lambda: set(resources()) == {0, 1}, 15), resources()
        assert router.stop(signal.SIGTERM, timeout=30) == 0
    ids = resources()
    assert all(len(v) == 1 for v in ids.values()), ids  # one each, for the process's life
    assert ids[0] != ids[1]


def test_a_journal_left_by_a_worker_beyond_workers_is_sent(start_router, cost, tmp_path) -> None:
    # a run with three workers stopped while the cost service was down: the third's journal
    # still holds a record. With two workers now, the first sends it.
    rec = UsageRecord("left-behind:0", "sim-chat", 12, 34, "router", usage.now_us())
    journal = tmp_path / "router-usage-2.journal"
    journal.write_text(json.dumps({"op": "usage", **dataclasses.asdict(rec)}) + "\n")
    router = start_router()
    with grpc.insecure_channel(cost.address) as channel:
        stub = cost_pb2_grpc.CostServiceStub(channel)
        summary = cost_pb2.GetUsageSummaryRequest()
        assert wait_until(lambda: stub.GetUsageSummary(summary, timeout=5).requests == 1, 15)
        total = stub.GetUsageSummary(summary, timeout=5)
    assert (total.usage.input_tokens, total.usage.output_tokens) == (12, 34)
    assert "sending the 1 usage records left in" in router.logs()
    assert router.stop(signal.SIGTERM, timeout=30) == 0
    assert usage.replay(journal) == ({}, {})  # taken: nothing left to send


def test_sigterm_to_the_first_drains_both_and_exits_0(start_router) -> None:
    router = start_router()
    (child,) = children(router.proc.pid)
    assert router.stop(signal.SIGTERM, timeout=30) == 0  # 0 only when the worker exited 0
    assert ended(child)
    logs = [json.loads(line) for line in router.logs().splitlines() if line.startswith("{")]
    stopped = {e.get("worker") for e in logs if e["msg"] == "stopped"}
    assert stopped == {0, 1}
    assert not [e for e in logs if e["level"] == "error"]


def test_sigkill_to_the_first_ends_the_worker_too(start_router) -> None:
    router = start_router()
    (child,) = children(router.proc.pid)
    router.kill()  # SIGKILL: nothing of the first runs
    assert wait_until(lambda: ended(child), 20), f"worker {child} outlived its parent"


def test_a_worker_that_dies_stops_the_first_with_exit_1(start_router) -> None:
    router = start_router()
    (child,) = children(router.proc.pid)
    os.kill(child, signal.SIGKILL)
    assert router.proc.wait(30) == 1
    assert f"worker 1 (pid {child}) exited with code -9 while serving" in router.logs()


def test_a_worker_that_cannot_start_stops_the_first_with_exit_1(
    config: Path, cost: ServiceProcess, run_module, tmp_path
) -> None:
    # the first's metrics on a free port, the worker's (the next one) taken
    with held_after_a_free_port() as taken:
        result = run_module(
            "services.router", "--config", str(config), "--address", "127.0.0.1:0",
            "--set", "router.workers=2", "--set", f"router.cost_address={cost.address}",
            "--set", f"router.metrics_address=127.0.0.1:{taken - 1}",
            env={"QUORUM_DATA_DIR": str(tmp_path)},
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""  # never said it listens
    assert f"cannot bind the metrics endpoint 127.0.0.1:{taken}" in result.stderr
    assert "worker 1 (pid " in result.stderr
    assert "exited with code 1 while starting" in result.stderr


@pytest.mark.parametrize("value", ["0", "65", '"two"'])
def test_a_bad_workers_value_is_a_configuration_error(run_module, value: str) -> None:
    result = run_module("services.router", "--set", f"router.workers={value}")
    assert result.returncode == 2
    assert "configuration error: router.workers: an integer from 1 to 64" in result.stderr


@contextlib.contextmanager
def _held_port() -> Iterator[int]:
    """A loopback port another socket listens on, with SO_REUSEPORT set."""
    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_a_fixed_port_in_use_is_not_shared(config: Path, run_module, tmp_path) -> None:
    # SO_REUSEPORT would let the first share it with another listener that set it too: the
    # first checks that nothing listens there before it binds
    with _held_port() as port:
        result = run_module(
            "services.router", "--config", str(config), "--address", f"127.0.0.1:{port}",
            "--set", "router.workers=2", "--set", "router.metrics_address=",
            env={"QUORUM_DATA_DIR": str(tmp_path)},
        )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot serve: cannot bind 127.0.0.1:{port}" in result.stderr


def test_one_worker_binds_without_so_reuseport(config: Path, run_module, tmp_path) -> None:
    # the default: a port in use is refused even when its listener set SO_REUSEPORT
    with _held_port() as port:
        result = run_module(
            "services.router", "--config", str(config), "--address", f"127.0.0.1:{port}",
            "--set", "router.metrics_address=",
            env={"QUORUM_DATA_DIR": str(tmp_path)},
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"cannot serve: cannot bind 127.0.0.1:{port}" in result.stderr
