"""`quorum up` as a person runs it: no provider key, embedded defaults (ports moved by
environment overrides so tests never collide), grpcurl against it, Ctrl-C stops it all."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from quorum.ids import free_ports
from quorum.localmodels import generation

pytestmark = [pytest.mark.e2e, pytest.mark.triton]

BIN = Path(sys.executable).parent


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_up(
    tmp_path: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], dict[str, str], list[int], list[str]]:
    """`quorum up` on free ports, read until it says it is up: (process, its environment,
    ports router voter cost triton-http triton-grpc triton-metrics simulator, then the
    router's, voter's and cost service's metrics, output)."""
    ports = free_ports(10)
    router, voter, cost, t_http, t_grpc, t_metrics, sim, m_router, m_voter, m_cost = ports
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
        "QUORUM_ROUTER__METRICS_ADDRESS": f"127.0.0.1:{m_router}",
        "QUORUM_VOTER__METRICS_ADDRESS": f"127.0.0.1:{m_voter}",
        "QUORUM_COST__METRICS_ADDRESS": f"127.0.0.1:{m_cost}",
        **(extra_env or {}),
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
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        out.append(line)
        if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
            break
    return proc, env, ports, out


def ctrl_c(proc: subprocess.Popen[str], timeout_s: float = 60) -> str:
    """Stop `quorum up` as a person does (SIGINT), killing it all if it does not stop in
    time; its remaining output."""
    proc.send_signal(signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"quorum up did not stop within {timeout_s:g} s of Ctrl-C")
    return str(rest)


def test_quorum_up_serves_until_ctrl_c_and_leaves_nothing(tmp_path):
    proc, env, ports, out = start_up(tmp_path)
    router, voter, cost, t_http, t_grpc, t_metrics, sim, m_router, m_voter, m_cost = ports
    try:
        text = "".join(out)
        assert "Quorum is up" in text, text
        assert re.search(rf"router\s+127\.0\.0\.1:{router}", text)
        assert re.search(rf"triton\s+127\.0\.0\.1:{t_grpc}", text)
        for name, port in (("router", m_router), ("voter", m_voter), ("cost", m_cost),
                           ("triton", t_metrics)):  # fmt: skip
            assert re.search(rf"{name}\s+\S+\s+metrics http://127\.0\.0\.1:{port}/metrics", text)
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
        if generation.missing():  # no key, no local model: the simulator answers
            assert "SIMULATED" in done.stdout
            assert "Local chat model smollm2-135m is off" in text, text
        else:  # no key: a prompt that names nothing goes to the local model
            assert "smollm2-135m" in done.stdout and "SIMULATED" not in done.stdout
            assert "Local chat models (real, on Triton): smollm2-135m" in text, text
        scraped = httpx.get(f"http://127.0.0.1:{m_router}/metrics", timeout=5).text
        complete = 'rpc_method="quorum.router.v1.RouterService/Complete"'
        assert any(
            line.startswith("rpc_server_call_duration_seconds_count{") and complete in line
            and 'rpc_response_status_code="OK"' in line and line.endswith(" 1.0")
            for line in scraped.splitlines()
        ), scraped  # fmt: skip
        # Triton's own metrics, on its metrics port: the queue time of each local judge
        triton = httpx.get(f"http://127.0.0.1:{t_metrics}/metrics", timeout=5).text
        assert 'nv_inference_queue_duration_us{model="profanity_check"' in triton
        moderated = subprocess.run(
            [str(BIN / "quorum"), "moderate", "hello there"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert "profanity-check [triton]" in moderated.stdout
        assert "text-heads [triton]" in moderated.stdout
        assert "nsfw-check [triton]" in moderated.stdout
        assert "simulated" not in moderated.stdout  # no simulated judge ever votes
    finally:
        rest = ctrl_c(proc, 30)
    assert proc.returncode == 0, "".join(out) + rest
    for port in (router, voter, cost, t_http, t_grpc, t_metrics, sim):
        assert not port_open(port), f"port {port} still open after quorum up stopped"
    leftovers = [p for p in Path("/dev/shm").glob("quorum*") if str(proc.pid) in p.name]
    assert not leftovers


def test_quorum_up_stops_the_mesh_when_a_service_dies(tmp_path):
    """A mesh with a dead part must not look alive: kill the router, and `quorum up` stops
    the rest and exits non-zero, saying which part stopped."""
    proc, _, ports, out = start_up(tmp_path)
    try:
        assert "Quorum is up" in "".join(out), "".join(out)
        pids = subprocess.run(
            ["pgrep", "-f", f"services.router --address=127.0.0.1:{ports[0]}"],
            capture_output=True, text=True, timeout=10,
        ).stdout.split()  # fmt: skip
        assert len(pids) == 1, pids
        os.kill(int(pids[0]), signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1
    assert "router (exit code -9) stopped; stopping the mesh" in rest
    for port in ports:
        assert not port_open(port), f"port {port} still open after quorum up stopped"


def test_quorum_up_stops_the_mesh_when_a_service_hangs(tmp_path):
    """A part that is alive but answers nothing is as dead as one that exited: stop the cost
    service's process (SIGSTOP), and `quorum up` kills it once it has not answered its health
    checks for [mesh] hang_after_s, then stops the rest, saying why."""
    proc, _, ports, out = start_up(tmp_path, {"QUORUM_MESH__HANG_AFTER_S": "3"})
    try:
        assert "Quorum is up" in "".join(out), "".join(out)
        pids = subprocess.run(
            ["pgrep", "-f", f"services.cost --address=127.0.0.1:{ports[2]}"],
            capture_output=True, text=True, timeout=10,
        ).stdout.split()  # fmt: skip
        assert len(pids) == 1, pids
        stopped_at = time.monotonic()
        os.kill(int(pids[0]), signal.SIGSTOP)
        rest, _ = proc.communicate(timeout=90)
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 1
    assert "cost has not answered its health checks for 3 s; killed it" in rest, rest
    assert "cost (exit code -9) stopped; stopping the mesh" in rest
    assert 3 <= took < 60
    for port in ports:
        assert not port_open(port), f"port {port} still open after quorum up stopped"


def test_quorum_up_can_restart_a_part_that_died(tmp_path):
    """With [mesh] on_failure = "restart", a killed router comes back on its address and
    completions work again; Ctrl-C still stops everything cleanly."""
    proc, env, ports, out = start_up(tmp_path, {"QUORUM_MESH__ON_FAILURE": "restart"})
    try:
        assert "Quorum is up" in "".join(out), "".join(out)
        pid = subprocess.run(
            ["pgrep", "-f", f"services.router --address=127.0.0.1:{ports[0]}"],
            capture_output=True, text=True, timeout=10,
        ).stdout.split()[0]  # fmt: skip
        os.kill(int(pid), signal.SIGKILL)
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            out.append(line)
            if "router is back" in line or time.monotonic() > deadline:
                break
        text = "".join(out)
        assert "router (exit code -9) stopped; restarting it in 1 s" in text, text
        done = subprocess.run(
            [str(BIN / "quorum"), "complete", "hello again"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    finally:
        ctrl_c(proc)
    assert proc.returncode == 0
    for port in ports:
        assert not port_open(port), f"port {port} still open after quorum up stopped"


def test_quorum_up_with_keys_end_to_end(tmp_path):
    """The whole mesh with [auth] on: keys made with `quorum keys create`, the services call
    each other with the service key, a client's key reaches its own tenant only, and a call
    without a key is UNAUTHENTICATED; health checks (quorum up's own) need none."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["QUORUM_DATA_DIR"] = str(tmp_path)

    def new_key(*args: str) -> str:
        done = subprocess.run(
            [str(BIN / "quorum"), "keys", "create", *args, "--json"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return str(json.loads(done.stdout)["key"])

    service = new_key("--tenant", "quorum", "--role", "service", "--name", "mesh")
    acme, other = new_key("--tenant", "acme"), new_key("--tenant", "globex")
    proc, up_env, _, out = start_up(
        tmp_path,
        {
            "QUORUM_AUTH__ENABLED": "true",
            "QUORUM_SERVICE_KEY": service,
            # answers wait for the cost service, to show the service key reached it
            "QUORUM_USAGE__RECORD_WAIT_S": "2.0",
        },
    )
    try:
        assert "Quorum is up" in "".join(out), "".join(out)

        def cli(*args: str, key: str | None) -> subprocess.CompletedProcess[str]:
            call_env = {k: v for k, v in up_env.items() if k != "QUORUM_API_KEY"}
            if key is not None:
                call_env["QUORUM_API_KEY"] = key
            return subprocess.run(
                [str(BIN / "quorum"), *args], capture_output=True, text=True, timeout=60,
                env=call_env,
            )  # fmt: skip

        done = cli("complete", "hello from acme", "--json", key=acme)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["usageRecorded"] is True  # the router's service key reached the cost service
        assert answer["inputModeration"]["isSafe"] is True  # and the voter
        anonymous = cli("complete", "hello", key=None)
        assert anonymous.returncode != 0 and "UNAUTHENTICATED" in anonymous.stderr
        # acme sees its own call (simulated: no provider key is set, so apart from real spend)
        usage = json.loads(cli("usage", "--json", key=acme).stdout)
        assert int(usage["simulatedRequests"]) >= 1 and int(usage["requests"]) == 0
        theirs = json.loads(cli("usage", "--json", key=other).stdout)
        assert int(theirs["simulatedRequests"]) == 0  # globex sees none of acme's
    finally:
        ctrl_c(proc)
    assert proc.returncode == 0


def test_quorum_up_with_mutual_tls_end_to_end(tmp_path):
    """The whole mesh with [tls] on and client_auth: the services call each other over
    mutual TLS, `quorum up` checks their health over it, the CLI completes and moderates
    with the same settings, and a plaintext client cannot connect."""
    from tests.tlscerts import TestCA

    ca = TestCA(tmp_path / "pki")
    pem = ca.issue("mesh")
    tls = {
        "QUORUM_TLS__ENABLED": "true",
        "QUORUM_TLS__CLIENT_AUTH": "true",
        "QUORUM_TLS__CERT_FILE": str(pem.cert),
        "QUORUM_TLS__KEY_FILE": str(pem.key),
        "QUORUM_TLS__CA_FILE": str(ca.ca_file),
    }
    proc, env, ports, out = start_up(tmp_path, tls)
    try:
        assert "Quorum is up" in "".join(out), "".join(out)
        for argv in (["complete", "hello over tls"], ["moderate", "hello over tls"]):
            done = subprocess.run(
                [str(BIN / "quorum"), *argv], capture_output=True, text=True, timeout=60, env=env
            )
            assert done.returncode == 0, done.stderr
        assert "input moderation: safe (4 votes" in subprocess.run(
            [str(BIN / "quorum"), "complete", "hi"], capture_output=True, text=True,
            timeout=60, env=env,
        ).stdout  # router -> voter -> cost, all over mutual TLS  # fmt: skip
        plain = subprocess.run(
            [str(BIN / "grpcurl"), "-plaintext", f"127.0.0.1:{ports[0]}", "list"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert plain.returncode != 0
    finally:
        ctrl_c(proc)
    assert proc.returncode == 0
