"""The client examples in examples/ against the whole mesh, as `quorum up` runs it on the
embedded defaults (real Triton judges, the provider simulator for completions): each must
moderate, complete, stream, read the usage summary, and decode the ErrorInfo of a call for
an unknown model. Their output is checked against what the mesh itself says."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.mesh import Mesh, MeshOptions
from tests.conftest import REPO_ROOT, child_env

pytestmark = [pytest.mark.e2e, pytest.mark.triton]

NODE_EXAMPLE = REPO_ROOT / "examples" / "node"
GO_EXAMPLE = REPO_ROOT / "examples" / "go" / "bin" / "quorum-example"
BAD_MODEL = "no-such-model"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("examples")
    with Mesh(MeshOptions(data_dir=tmp / "data", ephemeral_ports=True, env=child_env())) as m:
        yield m


def run_example(cmd: list[str], mesh: Mesh, cwd: Path) -> dict[str, dict[str, Any]]:
    """Run an example client against ``mesh``; its JSON lines by call name."""
    a = mesh.addresses
    done = subprocess.run(
        [*cmd, "--router", a["router"], "--voter", a["voter"], "--cost", a["cost"]],
        cwd=cwd,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return {line["call"]: line for line in lines}


def ledger_requests(mesh: Mesh, want: int = 0, timeout_s: float = 15.0) -> int:
    """How many calls the ledger holds (real and simulated), once it holds ``want`` or the time
    is up."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(mesh.addresses["cost"]) as ch:
        stub = cost_pb2_grpc.CostServiceStub(ch)
        while True:
            summary = stub.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(), timeout=5)
            held = int(summary.requests + summary.simulated_requests)
            if held >= want or time.monotonic() > deadline:
                return held
            time.sleep(0.2)


def check_output(out: dict[str, dict[str, Any]], mesh: Mesh, before: int) -> None:
    """``before``: the calls the ledger held when the example started."""
    assert list(out) == [
        "Moderate",
        "Complete",
        "CompleteStream",
        "GetUsageSummary",
        "Complete (unknown model)",
    ]

    mod = out["Moderate"]
    assert mod["is_safe"] is False and mod["confidence"] > 0.5
    votes = {v["model"]: v for v in mod["votes"]}
    assert votes["profanity-check"] == {
        "model": "profanity-check",
        "status": "VOTE_STATUS_OK",
        "is_safe": False,
    }

    done = out["Complete"]
    assert done["model"] in mesh.simulated_models
    assert done["simulated"] is True and done["provider"]
    assert done["text"].startswith("[simulated ")
    assert done["route_reason"]
    assert int(done["usage"]["input_tokens"]) > 0 and int(done["usage"]["output_tokens"]) > 0
    assert int(done["cost"]["micros"]) > 0 and done["cost"]["currency"] == "USD"
    assert done["input_moderation_is_safe"] is True  # the default policy moderates the input

    stream = out["CompleteStream"]
    assert stream["model"] == done["model"]  # the same prompt routes the same way
    assert stream["deltas"] > 1 and stream["text"].startswith("[simulated ")
    assert stream["finish_reason"] == "stop"

    # the summary the example read holds at least the calls the router said were recorded
    # (the rest wait in its journal for a moment), and the ledger then gets both; only the
    # examples call models on this mesh (the local judges are not billed). No API key is set:
    # every call is simulated, summed apart from real spend
    recorded = sum(bool(out[c]["usage_recorded"]) for c in ("Complete", "CompleteStream"))
    summary = out["GetUsageSummary"]
    assert int(summary["requests"]) == 0 and summary["models"] == [] and summary["totals"] == []
    assert before + recorded <= int(summary["simulated_requests"]) <= before + 2
    assert {m["model"] for m in summary["simulated_models"]} == {done["model"]}
    assert [t["currency"] for t in summary["simulated_totals"]] == ["USD"]
    assert ledger_requests(mesh, want=before + 2) == before + 2

    err = out["Complete (unknown model)"]
    assert err["code"] == "NOT_FOUND"
    assert BAD_MODEL in err["message"]
    assert err["error_info"] == {
        "reason": "MODEL_NOT_FOUND",
        "domain": "quorum",
        "metadata": {"model": BAD_MODEL},
    }


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with the example's packages installed (else the test skips
    before any mesh starts)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node example cannot run")
    if not (NODE_EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("examples/node/node_modules is missing: `make examples` installs it (npm ci)")
    return node


def test_node_example(node: str, mesh: Mesh) -> None:
    before = ledger_requests(mesh)
    out = run_example([node, "client.js", "--bad-model", BAD_MODEL], mesh, NODE_EXAMPLE)
    check_output(out, mesh, before)


@pytest.fixture(scope="module")
def go_example() -> Path:
    """The Go example's binary (else the test skips before any mesh starts)."""
    if not GO_EXAMPLE.is_file():
        pytest.skip(
            "examples/go/bin/quorum-example is missing: `make examples` builds it when Go and "
            "Debian's Go gRPC packages are installed (examples/go/build.sh says what is missing)"
        )
    return GO_EXAMPLE


def test_go_example(go_example: Path, mesh: Mesh) -> None:
    before = ledger_requests(mesh)
    out = run_example([str(go_example), "-bad-model", BAD_MODEL], mesh, go_example.parent)
    check_output(out, mesh, before)
