"""`quorum up` as a person runs it: no provider key, embedded defaults (ports moved by
environment overrides so tests never collide), grpcurl against it, Ctrl-C stops it all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quorum.ids import free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.triton]

BIN = Path(sys.executable).parent


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_quorum_up_serves_until_ctrl_c_and_leaves_nothing(tmp_path):
    router, voter, cost, t_http, t_grpc, t_metrics, sim = free_ports(7)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env |= {
        "QUORUM_DATA_DIR": str(tmp_path),
        "QUORUM_ROUTER__ADDRESS": f"127.0.0.1:{router}",
        "QUORUM_VOTER__ADDRESS": f"127.0.0.1:{voter}",
        "QUORUM_COST__ADDRESS": f"127.0.0.1:{cost}",
        "QUORUM_TRITON__HTTP_PORT": str(t_http),
        "QUORUM_TRITON__GRPC_PORT": str(t_grpc),
        "QUORUM_TRITON__METRICS_PORT": str(t_metrics),
        "QUORUM_SIMULATOR__PORT": str(sim),
    }
    proc = subprocess.Popen(
        [str(BIN / "quorum"), "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    out = []
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            out.append(line)
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        text = "".join(out)
        assert "Quorum is up" in text, text
        assert re.search(rf"router\s+127\.0\.0\.1:{router}", text)
        assert re.search(rf"triton\s+127\.0\.0\.1:{t_grpc}", text)
        assert "SIMULATOR" in text  # says that completions are simulated
        assert (tmp_path / "ledger.sqlite3").exists()  # the embedded SQLite ledger

        for port, service in (
            (router, "quorum.router.v1.RouterService"),
            (voter, "quorum.voter.v1.VoterService"),
            (cost, "quorum.cost.v1.CostService"),
        ):
            listed = subprocess.run(
                [str(BIN / "grpcurl"), "-plaintext", f"127.0.0.1:{port}", "list"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            assert service in listed

        done = subprocess.run(
            [str(BIN / "quorum"), "complete", "hello there"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert "SIMULATED" in done.stdout
        moderated = subprocess.run(
            [str(BIN / "quorum"), "moderate", "hello there"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert "profanity-check [triton]" in moderated.stdout
        assert "simulated" not in moderated.stdout  # no simulated judge ever votes
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail("quorum up did not stop within 30 s of Ctrl-C")
    assert proc.returncode == 0, "".join(out) + rest
    for port in (router, voter, cost, t_http, t_grpc, t_metrics, sim):
        assert not port_open(port), f"port {port} still open after quorum up stopped"
    leftovers = [p for p in Path("/dev/shm").glob("quorum*") if str(proc.pid) in p.name]
    assert not leftovers
