"""The router's prompt classifier on the real tritonserver binary (``triton/prompt_task``), and
a real router (in process) that routes with it, answered by the provider simulator; with Triton
stopped the rules route and nothing fails."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from tritonclient.grpc.aio import InferenceServerClient

from quorum import config
from quorum.backends.triton import TritonScorer
from quorum.datasets import ROUTING_TASKS
from quorum.ids import free_ports
from quorum.localmodels.prompttask import TaskHead
from quorum.router.v1 import router_pb2
from quorum.simulator import ProviderSimulator
from quorum.tritonserver import TritonOptions, TritonServer, default_model_repository
from tests.integration.inproc import router_for

pytestmark = pytest.mark.triton

HEAD = Path(__file__).resolve().parents[2] / "triton" / "prompt_task" / "1" / "head.json"
KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY")

#: prompts the keyword rules get wrong (none is in data/routing_prompts.csv), and their task
HARD = [
    ("Why does my Flask route return a 405 Method Not Allowed on POST?", "code"),
    ("Write a SQL query listing the employees hired in the last 30 days", "code"),
    ("My son's class is putting on a play; help me write a funny script for it", "complex"),
    ("What's the function of the pancreas?", "quick"),
    ("What are the advantages and drawbacks of leasing a car instead of buying one?", "analysis"),
]
# Known miss of the committed head (README "Routing"): "Give me a quick rundown of today's tech
# news" reads as analysis to it (0.62), over the rules' right answer, quick.


@pytest.fixture(scope="module")
def server() -> Iterator[TritonServer]:
    srv = TritonServer(
        TritonOptions(model_repository=default_model_repository(), models=("prompt_task",))
    )
    t0 = time.monotonic()
    srv.start(timeout_s=120)
    print(f"prompt_task ready in {time.monotonic() - t0:.1f}s")
    try:
        yield srv
    finally:
        srv.stop()


async def test_loads_with_one_output_per_task(server: TritonServer) -> None:
    base = f"http://{server.http_address}/v2/models/prompt_task"
    assert httpx.get(f"{base}/ready", timeout=5).status_code == 200
    cfg = httpx.get(f"{base}/config", timeout=5).json()
    assert [g["kind"] for g in cfg["instance_group"]] == ["KIND_CPU"]  # KIND_AUTO, no GPU
    assert "dynamic_batching" in cfg
    assert [o["name"] for o in cfg["output"]] == [f"SCORE_{t.upper()}" for t in ROUTING_TASKS]


async def test_scores_are_the_pure_modules_and_the_hard_cases_come_out_right(
    client: InferenceServerClient,
) -> None:
    head = TaskHead.load(HEAD)
    texts = [t for t, _ in HARD]
    rows = await TritonScorer(client).score_categories(
        "prompt_task", texts, ROUTING_TASKS, timeout_s=30
    )
    served = np.array([[r[t] for t in ROUTING_TASKS] for r in rows], dtype=np.float32)
    np.testing.assert_allclose(served, head.score_texts(texts), atol=1e-4)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-4)
    got = [ROUTING_TASKS[i] for i in served.argmax(axis=1)]
    assert got == [task for _, task in HARD]
    # confident enough on each to overrule the rules
    assert (served.max(axis=1) >= head.min_confidence).all(), served.max(axis=1)


def _router_config(sim: ProviderSimulator, triton_address: str) -> dict[str, object]:
    data = config.load(env={})
    # the router's test, not the latency's (bench/bench_router.py): a loaded 2-core machine
    # may take longer than the default 50 ms
    data["routing"] |= {"classifier": True, "classifier_timeout_s": 2.0}
    cost_port, voter_port = free_ports(2)
    data["router"] |= {
        "address": "127.0.0.1:0",
        "cost_address": f"127.0.0.1:{cost_port}",
        "voter_address": f"127.0.0.1:{voter_port}",
        "moderation": "none",
        "simulator_url": sim.url,  # no key: every model answers from the simulator
        "triton_address": triton_address,
    }
    data["cost"]["address"] = f"127.0.0.1:{cost_port}"
    return data


async def test_the_router_sends_a_code_prompt_without_keywords_to_deepseek(
    server: TritonServer, tmp_path: Path
) -> None:
    env = {"QUORUM_DATA_DIR": str(tmp_path)} | dict.fromkeys(KEYS, "")
    prompt = "Implement a min-heap in Rust with push and pop"  # the rules: complex (gpt-4.1)
    with ProviderSimulator() as sim:
        async with router_for(_router_config(sim, server.grpc_address), env) as stub:
            resp = await stub.Complete(router_pb2.CompleteRequest(prompt=prompt), timeout=10)
            assert resp.model == "deepseek-v3.2"
            assert re.fullmatch(
                r"automatic: the classifier chose 'code' \((0\.\d\d|1\.00)\), so task 'code'; "
                r"cheapest usable model for task 'code'",
                resp.route_reason,
            ), resp.route_reason
            assert sim.requests[-1].body["model"] == "deepseek-chat"
            # a named task is routed as named: the classifier is not asked
            named = await stub.Complete(
                router_pb2.CompleteRequest(prompt=prompt, task="quick"), timeout=10
            )
            assert named.model == "gemini-2.5-flash" and "classifier" not in named.route_reason


async def test_without_triton_the_rules_route_and_nothing_fails(tmp_path: Path, caplog) -> None:
    env = {"QUORUM_DATA_DIR": str(tmp_path)} | dict.fromkeys(KEYS, "")
    nowhere = f"127.0.0.1:{free_ports(1)[0]}"  # a Triton that is stopped: nothing listens
    with ProviderSimulator() as sim:
        async with router_for(_router_config(sim, nowhere), env) as stub:
            for _ in range(3):
                resp = await stub.Complete(
                    router_pb2.CompleteRequest(prompt="Implement a min-heap in Rust"), timeout=10
                )
                assert resp.model == "gpt-4.1"  # no keyword rule matched: complex
                assert resp.route_reason.startswith(
                    "automatic: no keyword rule matched (the classifier did not answer)"
                )
            quick = await stub.Complete(
                router_pb2.CompleteRequest(prompt="a quick question: what is 2+2?"), timeout=10
            )
            assert quick.model == "gemini-2.5-flash"
    assert sim.stats["completions"] == 4
    warned = [r for r in caplog.records if r.name == "services.router.classifier"]
    assert len(warned) == 1  # once for the outage (at start-up), not once a request
    assert "does not answer at start-up (TRITON_UNAVAILABLE)" in warned[0].getMessage()
