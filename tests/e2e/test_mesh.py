"""The whole mesh as separate processes: the real Triton binary, cost, voter and router, a
provider simulator on loopback standing in for remote LLMs, and an OTLP receiver."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.mesh import Mesh, MeshOptions
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.simulator import LEAK_MARKER, Fault, ProviderSimulator
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc
from tests.otlp_receiver import OtlpReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.triton]

BIN = Path(sys.executable).parent

CONFIG = """
[registry]
default_model = "sim-chat"

[router]
moderation = "input"

[voter]
model_timeout_s = 2.0

[usage]
# answers wait until the cost service has the record, so usage_recorded can be checked
record_wait_s = 2.0

[providers.sim]
base_url = "{url}"
simulated = true

[models.sim-chat]
provider = "sim"
provider_model = "sim-chat-1"
input_per_mtok = "2.00"
output_per_mtok = "8.00"
tasks = ["chat"]

[models.sim-cheap]
provider = "sim"
provider_model = "sim-cheap-1"
input_per_mtok = "0.10"
output_per_mtok = "0.20"
tasks = ["chat", "summarize"]

[models.sim-judge]
provider = "sim"
provider_model = "sim-judge-1"
input_per_mtok = "0"
output_per_mtok = "0"
moderation = {{ weight = 1.0, categories = ["violence", "adult", "hate", "spam", "harassment"] }}
"""


@pytest.fixture(scope="module")
def sim():
    with ProviderSimulator() as s:
        yield s


@pytest.fixture(scope="module")
def rx():
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, sim, rx):
    tmp = tmp_path_factory.mktemp("mesh")
    cfg = tmp / "quorum.toml"
    cfg.write_text(CONFIG.format(url=sim.url))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and not k.startswith("OTEL_")
    }
    env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    m = Mesh(
        MeshOptions(
            data_dir=tmp / "data", config_path=cfg, ephemeral_ports=True, simulator="off", env=env
        )
    )
    m.start()
    yield m
    m.stop()


@pytest.fixture(autouse=True)
def _clean_faults(sim):
    sim.clear_faults()
    yield
    sim.clear_faults()


@pytest.fixture(scope="module")
def router(mesh):
    with grpc.insecure_channel(mesh.addresses["router"]) as ch:
        yield router_pb2_grpc.RouterServiceStub(ch)


@pytest.fixture(scope="module")
def voter(mesh):
    with grpc.insecure_channel(mesh.addresses["voter"]) as ch:
        yield voter_pb2_grpc.VoterServiceStub(ch)


@pytest.fixture(scope="module")
def cost(mesh):
    with grpc.insecure_channel(mesh.addresses["cost"]) as ch:
        yield cost_pb2_grpc.CostServiceStub(ch)


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


# -- the minimal real flow ----------------------------------------------------------------------


def test_complete_routes_moderates_prices_and_records(router, cost, sim):
    rid = "e2e-" + secrets.token_hex(4)
    resp = router.Complete(
        router_pb2.CompleteRequest(request_id=rid, prompt="Tell me about tea.", task="summarize"),
        timeout=20,
    )
    assert resp.model == "sim-cheap" and resp.route_reason.startswith("cheapest")
    assert resp.simulated and resp.provider == "sim"
    assert resp.text.startswith("[simulated sim-cheap-1]")
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    expected = round(resp.usage.input_tokens * 0.10 + resp.usage.output_tokens * 0.20)
    assert resp.cost.micros == expected and resp.cost.currency == "USD"
    assert resp.usage_recorded
    # moderation of the input ran with the local Triton models and the HTTP judge
    votes = {v.model: v for v in resp.input_moderation.votes}
    assert set(votes) == {"ngram-heads", "nsfw-check", "profanity-check", "text-heads", "sim-judge"}
    assert all(v.status == voter_pb2.VOTE_STATUS_OK for v in votes.values())
    for local in ("ngram-heads", "nsfw-check", "profanity-check", "text-heads"):
        assert votes[local].provider == "triton" and not votes[local].simulated
    assert votes["sim-judge"].simulated
    # recorded once in the ledger, under the request id, as a simulated call: apart from real
    # spend
    summary = cost.GetUsageSummary(cost_pb2.GetUsageSummaryRequest(model="sim-cheap"), timeout=5)
    assert summary.simulated_requests >= 1 and summary.requests == 0
    judge_usage = cost.GetUsageSummary(
        cost_pb2.GetUsageSummaryRequest(model="sim-judge"), timeout=5
    )
    # the voter records what its LLM judges used, marked simulated too
    assert judge_usage.simulated_requests >= 1 and judge_usage.requests == 0


def test_moderate_fans_out_and_returns_every_vote(voter):
    resp = voter.Moderate(
        voter_pb2.ModerateRequest(text="You are a stupid worthless idiot and I hate you"),
        timeout=10,
    )
    assert not resp.is_safe
    assert {v.model for v in resp.votes} == {
        "ngram-heads",
        "nsfw-check",
        "profanity-check",
        "text-heads",
        "sim-judge",
    }
    tri = next(v for v in resp.votes if v.model == "profanity-check")
    assert not tri.is_safe and tri.confidence > 0.5
    assert {c.category for c in tri.categories} == {5}  # harassment
    nsfw = next(v for v in resp.votes if v.model == "nsfw-check")
    assert nsfw.is_safe and {c.category for c in nsfw.categories} == {2}  # adult only
    heads = next(v for v in resp.votes if v.model == "text-heads")
    assert not heads.is_safe
    # one score per category it judges: all seven
    assert {c.category for c in heads.categories} == {1, 2, 3, 4, 5, 6, 7}
    calm = voter.Moderate(
        voter_pb2.ModerateRequest(text="The weather is lovely today."), timeout=10
    )
    assert calm.is_safe and len(calm.votes) == 5


def test_stream_deltas_join_to_the_unary_answer(router):
    req = router_pb2.CompleteRequest(prompt="Explain photosynthesis briefly.", model="sim-chat")
    unary = router.Complete(req, timeout=20)
    events = list(router.CompleteStream(router_pb2.CompleteStreamRequest(request=req), timeout=20))
    deltas = [e.delta for e in events if e.WhichOneof("event") == "delta"]
    summaries = [e.summary for e in events if e.WhichOneof("event") == "summary"]
    assert len(deltas) > 1 and len(summaries) == 1
    assert "".join(deltas) == unary.text
    assert events[-1].WhichOneof("event") == "summary"
    assert summaries[0].usage == unary.usage and summaries[0].cost == unary.cost


def test_input_blocked_by_moderation(router):
    with pytest.raises(grpc.RpcError) as e:
        router.Complete(
            router_pb2.CompleteRequest(prompt="you stupid idiot, shut up you worthless moron"),
            timeout=20,
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(e.value).reason == "INPUT_BLOCKED"


# -- one trace across every process --------------------------------------------------------------


def test_one_trace_across_router_voter_triton_http_and_cost(router, rx):
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    router.Complete(
        router_pb2.CompleteRequest(prompt="What is a quorum?", model="sim-chat"),
        timeout=20,
        metadata=[("traceparent", f"00-{trace_id}-{parent}-01")],
    )
    want = {"quorum-router", "quorum-voter", "quorum-cost", "triton"}

    def complete(spans):
        mine = [s for s in spans if s["trace_id"] == trace_id]
        services = {s["service_name"] for s in mine}
        http = [s for s in mine if s["name"].startswith("chat ")]
        # each process exports in batches of its own: wait until every parent has arrived
        known = {parent} | {s["span_id"] for s in mine}
        whole = all(s["parent_span_id"] in known for s in mine)
        return want <= services and len(http) >= 2 and whole  # judge call + completion

    spans = [s for s in rx.wait_for_spans(complete, timeout_s=30) if s["trace_id"] == trace_id]
    ids = {s["span_id"]: s for s in spans}
    # correctly parented: one tree hanging from the client's span, no orphans
    for s in spans:
        assert s["parent_span_id"] == parent or s["parent_span_id"] in ids, s
    roots = [s for s in spans if s["parent_span_id"] == parent]
    assert {s["service_name"] for s in roots} == {"quorum-router"}

    def ancestors(s):
        out = []
        while s["parent_span_id"] in ids:
            s = ids[s["parent_span_id"]]
            out.append(s["service_name"])
        return out

    for s in spans:
        if s["service_name"] == "triton":
            assert "quorum-voter" in ancestors(s) and "quorum-router" in ancestors(s)
        if s["service_name"] == "quorum-cost":
            assert ancestors(s)[0] in {"quorum-router", "quorum-voter"}
    chat = [s for s in spans if s["name"].startswith("chat ")]
    assert {s["service_name"] for s in chat} == {"quorum-router", "quorum-voter"}
    for s in chat:
        assert s["attributes"]["gen_ai.operation.name"] == "chat"
        assert "gen_ai.usage.input_tokens" in s["attributes"]
    # tokens once per model call: on its chat span and nowhere else (dashboards sum them)
    with_usage = [s for s in spans if "gen_ai.usage.input_tokens" in s["attributes"]]
    assert {id(s) for s in with_usage} == {id(s) for s in chat}
    assert not [s for s in spans if "Health" in s["name"] or "ModelReady" in s["name"]]
    # the HTTP request itself carried the trace to the provider
    assert any(r.traceparent and trace_id in r.traceparent for r in _sim_requests(router))
    # Triton's JSON went through the mesh's relay: the receiver got protobuf only
    assert {ctype for path, ctype in rx.requests()} == {"application/x-protobuf"}


def _sim_requests(router):
    # the simulator fixture is module-scoped; reach it through pytest's request-less path
    return _SIM_HOLDER[0].requests


_SIM_HOLDER: list[ProviderSimulator] = []


@pytest.fixture(autouse=True, scope="module")
def _hold_sim(sim):
    _SIM_HOLDER[:] = [sim]
    yield


# -- bad input and faults ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_kwargs", "code", "reason"),
    [
        ({"prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT, "PROMPT_EMPTY"),
        ({"prompt": "x" * 16001}, grpc.StatusCode.INVALID_ARGUMENT, "PROMPT_TOO_LONG"),
        ({"prompt": "hi", "model": "gpt-9"}, grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"),
        (
            {"prompt": "hi", "model": "gpt-4.1"},
            grpc.StatusCode.FAILED_PRECONDITION,
            "MODEL_NOT_CONFIGURED",
        ),
        ({"prompt": "hi", "task": "juggling"}, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_TASK"),
        (
            {"messages": [router_pb2.Message(role="wizard", content="hi")]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "BAD_ROLE",
        ),
        ({"prompt": "hi", "max_tokens": -1}, grpc.StatusCode.INVALID_ARGUMENT, "BAD_MAX_TOKENS"),
    ],
)
def test_router_bad_input(router, request_kwargs, code, reason):
    with pytest.raises(grpc.RpcError) as e:
        router.Complete(router_pb2.CompleteRequest(**request_kwargs), timeout=10)
    assert e.value.code() == code
    assert error_info(e.value).reason == reason
    assert e.value.details()


@pytest.mark.parametrize(
    ("text", "models", "code", "reason"),
    [
        ("", [], grpc.StatusCode.INVALID_ARGUMENT, "TEXT_EMPTY"),
        ("y" * 16001, [], grpc.StatusCode.INVALID_ARGUMENT, "TEXT_TOO_LONG"),
        ("hello", ["nope"], grpc.StatusCode.NOT_FOUND, "JUDGE_NOT_FOUND"),
    ],
)
def test_voter_bad_input(voter, text, models, code, reason):
    with pytest.raises(grpc.RpcError) as e:
        voter.Moderate(voter_pb2.ModerateRequest(text=text, models=models), timeout=10)
    assert e.value.code() == code
    assert error_info(e.value).reason == reason


def test_provider_401_maps_to_unauthenticated_and_leaks_nothing(router, sim):
    sim.add_fault(Fault(kind="status", status=401, model="sim-chat-1"))
    with pytest.raises(grpc.RpcError) as e:
        router.Complete(router_pb2.CompleteRequest(prompt="hi", model="sim-chat"), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    text = f"{e.value.details()} {e.value.trailing_metadata()}"
    assert LEAK_MARKER not in text


def test_429_with_retry_after_is_retried(router, sim):
    sim.add_fault(Fault(kind="rate_limit", retry_after=0.3, times=1, model="sim-chat-1"))
    start = time.monotonic()
    resp = router.Complete(router_pb2.CompleteRequest(prompt="hi", model="sim-chat"), timeout=10)
    assert resp.text and time.monotonic() - start >= 0.3


def test_5xx_on_every_attempt_is_unavailable(router, sim):
    sim.add_fault(Fault(kind="status", status=503, model="sim-chat-1"))
    with pytest.raises(grpc.RpcError) as e:
        router.Complete(router_pb2.CompleteRequest(prompt="hi", model="sim-chat"), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert LEAK_MARKER not in e.value.details()


def test_hanging_provider_gives_deadline_exceeded_within_the_deadline(router, sim):
    sim.add_fault(Fault(kind="hang", seconds=30, model="sim-chat-1"))
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        router.Complete(
            router_pb2.CompleteRequest(
                prompt="hi", model="sim-chat", moderation=router_pb2.MODERATION_MODE_NONE
            ),
            timeout=1.5,
        )
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 3.0


def test_judge_failures_abstain_and_never_count_as_safe(voter, sim):
    sim.add_fault(Fault(kind="malformed_json", model="sim-judge-1"))
    resp = voter.Moderate(
        voter_pb2.ModerateRequest(text="The weather is lovely today."), timeout=10
    )
    judge = next(v for v in resp.votes if v.model == "sim-judge")
    assert judge.status == voter_pb2.VOTE_STATUS_ERROR and "UNPARSEABLE_VERDICT" in judge.error
    assert resp.is_safe  # the Triton models still voted
    sim.clear_faults()
    sim.add_fault(Fault(kind="hang", seconds=30, model="sim-judge-1"))
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:  # its only judge timed out: no quorum
        voter.Moderate(voter_pb2.ModerateRequest(text="hello", models=["sim-judge"]), timeout=10)
    assert time.monotonic() - start < 4.0  # model_timeout_s = 2
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(e.value).reason == "NO_QUORUM"


def test_code_fenced_verdicts_are_parsed(voter, sim):
    sim.add_fault(Fault(kind="code_fenced_json", model="sim-judge-1"))
    resp = voter.Moderate(
        voter_pb2.ModerateRequest(text="hello there", models=["sim-judge"]), timeout=10
    )
    assert resp.votes[0].status == voter_pb2.VOTE_STATUS_OK


# -- CLI and grpcurl against the running mesh ------------------------------------------------------


def test_cli_moderate_complete_usage_json(mesh):
    a = mesh.addresses
    out = subprocess.run(
        [str(BIN / "quorum"), "moderate", "have a nice day", "--voter", a["voter"], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    doc = json.loads(out.stdout)
    assert doc["isSafe"] is True and len(doc["votes"]) == 5  # four local judges, one LLM
    out = subprocess.run(
        [str(BIN / "quorum"), "complete", "hello", "--router", a["router"]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "model: sim-chat [sim]" in out.stdout and "SIMULATED" in out.stdout
    out = subprocess.run(
        [str(BIN / "quorum"), "usage", "--cost", a["cost"], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    usage = json.loads(out.stdout)  # sim-chat is simulated: its calls are summed apart
    assert int(usage["simulatedRequests"]) >= 1 and usage.get("requests", "0") == "0"
    bad = subprocess.run(
        [str(BIN / "quorum"), "complete", "hello", "--model", "gpt-9", "--router", a["router"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "NOT_FOUND" in bad.stderr


@pytest.mark.parametrize(
    ("name", "service"),
    [
        ("router", "quorum.router.v1.RouterService"),
        ("voter", "quorum.voter.v1.VoterService"),
        ("cost", "quorum.cost.v1.CostService"),
    ],
)
def test_grpcurl_lists_and_describes_every_service(mesh, name, service):
    grpcurl = BIN / "grpcurl"
    listed = subprocess.run(
        [str(grpcurl), "-plaintext", mesh.addresses[name], "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert service in listed and "grpc.health.v1.Health" in listed
    described = subprocess.run(
        [str(grpcurl), "-plaintext", mesh.addresses[name], "describe", service],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "rpc " in described
    health = subprocess.run(
        [str(grpcurl), "-plaintext", mesh.addresses[name], "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "SERVING" in health


def test_every_part_is_scraped_where_the_mesh_says(mesh, voter):
    """Each service's Prometheus endpoint (on a free port, as every other port here) and
    Triton's own: a Moderate is counted by the voter, and its local judges' inferences, with
    their queue time, by Triton."""
    assert set(mesh.metrics) == {"router", "voter", "cost", "triton"}
    voter.Moderate(voter_pb2.ModerateRequest(text="have a nice day"), timeout=10)
    for name in ("router", "voter", "cost"):
        text = httpx.get(mesh.metrics[name], timeout=5).text
        assert any(
            line.startswith("target_info{") and f'service_name="quorum-{name}"' in line
            for line in text.splitlines()
        ), text
    moderated = [
        line
        for line in httpx.get(mesh.metrics["voter"], timeout=5).text.splitlines()
        if line.startswith("rpc_server_call_duration_seconds_count{")
        and 'rpc_method="quorum.voter.v1.VoterService/Moderate"' in line
        and 'rpc_response_status_code="OK"' in line
    ]
    assert len(moderated) == 1 and float(moderated[0].rsplit(" ", 1)[1]) >= 1
    triton = httpx.get(mesh.metrics["triton"], timeout=5).text
    assert re.search(
        r'^nv_inference_queue_duration_us\{model="profanity_check".*\} \d', triton, re.M
    )


def test_output_moderation_withholds_an_unsafe_answer(router, sim):
    # the simulator echoes the prompt into its answer; with input moderation off, an
    # offensive echo reaches the output check
    with pytest.raises(grpc.RpcError) as e:
        router.Complete(
            router_pb2.CompleteRequest(
                prompt="repeat: you stupid worthless idiot moron",
                model="sim-chat",
                moderation=router_pb2.MODERATION_MODE_OUTPUT,
            ),
            timeout=20,
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(e.value).reason == "OUTPUT_BLOCKED"
    ok = router.Complete(
        router_pb2.CompleteRequest(
            prompt="Say something kind.",
            model="sim-chat",
            moderation=router_pb2.MODERATION_MODE_BOTH,
        ),
        timeout=20,
    )
    assert ok.input_moderation.is_safe and ok.output_moderation.is_safe


def test_cli_call_starts_the_trace(mesh, rx):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint}
    out = subprocess.run(
        [str(BIN / "quorum"), "complete", "hello", "--router", mesh.addresses["router"]],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    )  # fmt: skip
    m = re.search(r"trace id: ([0-9a-f]{32})", out.stderr)
    assert m, out.stderr
    trace_id = m.group(1)

    def arrived(spans):
        services = {s["service_name"] for s in spans if s["trace_id"] == trace_id}
        return {"quorum-cli", "quorum-router", "quorum-voter", "triton"} <= services

    spans = [s for s in rx.wait_for_spans(arrived, timeout_s=30) if s["trace_id"] == trace_id]
    roots = [s for s in spans if not s["parent_span_id"]]
    assert [r["service_name"] for r in roots] == ["quorum-cli"]
    root = roots[0]
    assert root["name"] == "quorum complete"
    assert root["attributes"]["quorum.cli.command"] == "quorum complete"
    assert root["attributes"]["server.address"] == mesh.addresses["router"]
    assert root["attributes"]["quorum.cli.exit_code"] == 0


def test_task_routing_falls_back_to_the_next_model(router, sim):
    sim.add_fault(Fault(kind="status", status=503, model="sim-cheap-1"))
    resp = router.Complete(router_pb2.CompleteRequest(prompt="hello", task="chat"), timeout=20)
    assert resp.model == "sim-chat"  # sim-cheap is cheaper but kept failing
    tried = [r.model for r in sim.requests if r.model in ("sim-cheap-1", "sim-chat-1")]
    assert tried[-4:] == ["sim-cheap-1", "sim-cheap-1", "sim-cheap-1", "sim-chat-1"]


def test_cli_budget_set_status_watch_delete(mesh):
    a = mesh.addresses

    def quorum(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "quorum"), "budget", *argv, "--cost", a["cost"]],
            capture_output=True, text=True, timeout=60, check=check,
        )  # fmt: skip

    out = quorum("set", "--tenant", "cli-t", "--limit", "12.50", "--time-zone", "Asia/Tokyo")
    assert "cli-t (every model): 0.000000 USD of 12.500000 USD" in out.stdout
    assert "(Asia/Tokyo), hard limit" in out.stdout
    doc = json.loads(quorum("status", "--tenant", "cli-t", "--json").stdout)
    (status,) = doc["budgets"]
    # false and zero fields are printed, not left out
    assert status["budget"]["alertOnly"] is False and status["exceeded"] is False
    assert status["spent"] == {"micros": "0", "currency": "USD"}
    assert status["budget"]["limit"]["micros"] == "12500000"
    watched = quorum("watch", "--tenant", "cli-t", "--timeout", "1")
    assert watched.stdout.count("cli-t (every model)") == 1
    assert quorum("delete", "--tenant", "cli-t").stdout.strip() == "deleted"
    gone = quorum("delete", "--tenant", "cli-t", check=False)
    assert gone.returncode == 1 and "BUDGET_NOT_FOUND" in gone.stderr
    bad = quorum("set", "--tenant", "cli-t", "--limit", "1", "--currency", "usd", check=False)
    assert bad.returncode == 1 and "budget.limit.currency" in bad.stderr


def test_cli_cost_report_csv_and_json(mesh):
    a = mesh.addresses

    def report(*argv: str) -> str:
        return subprocess.run(
            [str(BIN / "quorum"), "cost", "report", *argv, "--cost", a["cost"]],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip

    subprocess.run(
        [str(BIN / "quorum"), "complete", "hello", "--router", a["router"]],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    rows = list(csv.reader(io.StringIO(report("--by", "day", "--csv", "--since", "2026-01-01"))))
    assert rows[0] == ["day", "currency", "requests", "input_tokens", "output_tokens", "cost",
                       "estimated_requests", "official_cost", "saving",
                       "requests_without_official_cost", "simulated"]  # fmt: skip
    assert len(rows) >= 2 and all(len(r) == 11 for r in rows)
    # every model of this mesh is simulated: each row says so
    assert {r[-1] for r in rows[1:]} == {"true"}
    doc = json.loads(report("--by", "tenant", "--json"))
    assert doc["groupBy"] == "REPORT_GROUPING_TENANT"
    assert doc["rows"] == [] and doc["totals"] == []
    assert "default" in [r["key"] for r in doc["simulatedRows"]]
    text = report("--by", "model")
    assert "(no real calls in that range)" in text and "simulated calls" in text


def test_cli_stream_json_is_json_lines(mesh):
    out = subprocess.run(
        [str(BIN / "quorum"), "complete", "hello there", "--stream", "--json",
         "--router", mesh.addresses["router"]],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) >= 2 and all("delta" in e for e in events[:-1])
    summary = events[-1]["summary"]
    assert summary["text"] == "" and summary["replayed"] is False  # false fields are there
    assert "".join(e["delta"] for e in events[:-1]).startswith("[simulated")
