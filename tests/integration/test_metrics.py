"""Metrics end to end: cost, voter and router as real processes on loopback, the provider
simulator as the router's model and the voter's paid judge (the embedded Triton judges have no
Triton to ask: they abstain). After a few calls each service's Prometheus endpoint is fetched
over HTTP and its text parsed: the counts moved by exactly what the calls did. And the
endpoint's failures at start-up, and OTLP export."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.ids import free_ports
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.simulator import ProviderSimulator
from quorum.voter.v1 import voter_pb2
from tests.conftest import ServiceProcess
from tests.integration.inproc import BILLED_SIM_CHAT
from tests.otlp_receiver import OtlpReceiver

CONFIG = (
    """
[registry]
default_model = "sim-chat"

[router]
moderation = "input"

[usage]
retry_interval_s = 0.2

"""
    + BILLED_SIM_CHAT
    + """
[models.sim-judge]
provider = "sim"
input_per_mtok = "0.10"
output_per_mtok = "0.40"
moderation = {{ weight = 1.0, categories = ["violence", "adult", "hate", "spam", "harassment"] }}
"""
)

COMPLETE = "quorum.router.v1.RouterService/Complete"
STREAM = "quorum.router.v1.RouterService/CompleteStream"
MODERATE = "quorum.voter.v1.VoterService/Moderate"
VOTE_STATUS = {
    voter_pb2.VOTE_STATUS_OK: "ok",
    voter_pb2.VOTE_STATUS_ERROR: "error",
    voter_pb2.VOTE_STATUS_TIMEOUT: "timeout",
    voter_pb2.VOTE_STATUS_SKIPPED: "skipped",
}

Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> Samples:
    """Every sample of a Prometheus text page: (name, labels, value)."""
    resp = httpx.get(url, timeout=5.0)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(v for n, ls, v in samples if n == name and labels.items() <= ls.items())


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.1)


@pytest.fixture
def services(
    sim: ProviderSimulator, service_process: Callable[..., ServiceProcess], tmp_path
) -> dict[str, tuple[ServiceProcess, str]]:
    """cost, voter and router: each (process, its metrics URL)."""
    cfg = tmp_path / "quorum.toml"
    cfg.write_text(CONFIG.format(url=sim.url))
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    m_cost, m_voter, m_router, triton = free_ports(4)

    def start(name: str, port: int, *sets: str) -> tuple[ServiceProcess, str]:
        args = ["--config", str(cfg), "--address", "127.0.0.1:0"]
        for s in (f"{name}.metrics_address=127.0.0.1:{port}", *sets):
            args += ["--set", s]
        url = f"http://127.0.0.1:{port}/metrics"
        return service_process(f"services.{name}", *args, env=env), url

    cost = start("cost", m_cost)
    voter = start(
        "voter", m_voter,
        f"voter.cost_address={cost[0].address}",
        f"voter.triton_address=127.0.0.1:{triton}",  # nothing listens there
    )  # fmt: skip
    router = start(
        "router", m_router,
        f"router.cost_address={cost[0].address}",
        f"router.voter_address={voter[0].address}",
    )  # fmt: skip
    for process, url in (cost, voter, router):
        assert f"metrics on {url}" in process.logs()  # said once it is there
    return {"cost": cost, "voter": voter, "router": router}


def test_scraped_metrics_count_the_calls_tokens_costs_and_votes(services) -> None:
    router_url, voter_url, cost_url = (services[n][1] for n in ("router", "voter", "cost"))
    r0, v0 = scrape(router_url), scrape(voter_url)

    with grpc.insecure_channel(services["router"][0].address) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        request = router_pb2.CompleteRequest(model="sim-chat", prompt="hello there", max_tokens=20)
        answers = [stub.Complete(request, timeout=10) for _ in range(2)]
        events = list(
            stub.CompleteStream(router_pb2.CompleteStreamRequest(request=request), timeout=10)
        )
        answers.append(events[-1].summary)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Complete(router_pb2.CompleteRequest(model="sim-chat"), timeout=10)  # no prompt
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    r1, v1 = scrape(router_url), scrape(voter_url)
    duration = "rpc_server_call_duration_seconds"
    # requests and latency by method and status: the histogram's count, every bucket
    assert moved(r0, r1, f"{duration}_count", rpc_method=COMPLETE,
                 rpc_response_status_code="OK") == 2  # fmt: skip
    assert moved(r0, r1, f"{duration}_count", rpc_method=STREAM,
                 rpc_response_status_code="OK") == 1  # fmt: skip
    assert moved(r0, r1, f"{duration}_count", rpc_method=COMPLETE,
                 rpc_response_status_code="INVALID_ARGUMENT") == 1  # fmt: skip
    assert moved(r0, r1, f"{duration}_bucket", rpc_method=COMPLETE,
                 rpc_response_status_code="OK", le="+Inf") == 2  # fmt: skip
    assert moved(r0, r1, f"{duration}_sum", rpc_method=COMPLETE) > 0
    assert value(r1, f"{duration}_count", rpc_method="grpc.health.v1.Health/Check") == 0

    # tokens and cost by model: what the answers say they used and cost
    tokens = "gen_ai_client_token_usage_sum"
    assert moved(r0, r1, tokens, gen_ai_request_model="sim-chat", gen_ai_token_type="input") == (
        sum(a.usage.input_tokens for a in answers)
    )
    assert moved(r0, r1, tokens, gen_ai_request_model="sim-chat", gen_ai_token_type="output") == (
        sum(a.usage.output_tokens for a in answers)
    )
    assert moved(r0, r1, "gen_ai_client_token_usage_count", gen_ai_request_model="sim-chat",
                 gen_ai_token_type="input", gen_ai_provider_name="sim") == 3  # fmt: skip
    assert {a.cost.currency for a in answers} == {"USD"}
    assert sum(a.cost.micros for a in answers) > 0
    assert moved(r0, r1, "quorum_cost_micros_total", gen_ai_request_model="sim-chat",
                 quorum_cost_currency="USD") == sum(a.cost.micros for a in answers)  # fmt: skip

    # the voter: one Moderate per completion, each judge's vote by status and verdict
    assert moved(v0, v1, f"{duration}_count", rpc_method=MODERATE,
                 rpc_response_status_code="OK") == 3  # fmt: skip
    votes = [v for a in answers for v in a.input_moderation.votes]
    assert any(v.model == "sim-judge" and v.status == voter_pb2.VOTE_STATUS_OK for v in votes)
    assert any(v.status != voter_pb2.VOTE_STATUS_OK for v in votes)  # the Triton judges
    for judge in {v.model for v in votes}:
        for code, status in VOTE_STATUS.items():
            want = sum(1 for v in votes if v.model == judge and v.status == code)
            got = moved(v0, v1, "quorum_voter_votes_total", quorum_judge=judge,
                        quorum_vote_status=status)  # fmt: skip
            assert got == want, (judge, status)
    safe_ok = sum(1 for v in votes if v.model == "sim-judge" and v.is_safe)
    assert moved(v0, v1, "quorum_voter_votes_total", quorum_judge="sim-judge",
                 quorum_vote_verdict="safe") == safe_ok  # fmt: skip
    assert moved(v0, v1, "quorum_voter_verdicts_total") == 3
    judged = [v for v in votes if v.model == "sim-judge"]
    assert moved(v0, v1, "gen_ai_client_token_usage_sum", gen_ai_request_model="sim-judge",
                 gen_ai_token_type="input") == sum(v.usage.input_tokens for v in judged)  # fmt: skip

    # the usage spool drains to the cost service, which served the records
    eventually(
        lambda: value(scrape(router_url), "quorum_usage_backlog", quorum_source="router") == 0
    )
    eventually(
        lambda: value(
            scrape(cost_url), f"{duration}_count", rpc_response_status_code="OK",
            rpc_method="quorum.cost.v1.CostService/RecordUsageBatch",
        ) >= 1
    )  # fmt: skip
    assert value(scrape(voter_url), "target_info", service_name="quorum-voter") == 1


def test_a_busy_metrics_port_stops_the_start_saying_which(run_module) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_module(
            "services.cost", "--address", "127.0.0.1:0",
            "--set", f"cost.metrics_address=127.0.0.1:{port}",
        )  # fmt: skip
    assert done.returncode == 1
    assert f"cannot bind the metrics endpoint 127.0.0.1:{port}" in done.stderr


def test_a_metrics_address_beyond_loopback_is_a_configuration_error(run_module) -> None:
    done = run_module(
        "services.cost", "--address", "127.0.0.1:0", "--set", "cost.metrics_address=0.0.0.0:9464"
    )
    assert done.returncode == 2
    assert "cost.metrics_address" in done.stderr and "allow_remote" in done.stderr


def test_metrics_go_out_over_otlp_when_the_standard_variables_say(service_process) -> None:
    with OtlpReceiver() as rx:
        cost = service_process(
            "services.cost", "--address", "127.0.0.1:0",
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "200"},
        )  # fmt: skip
        with grpc.insecure_channel(cost.address) as ch:  # something to report
            cost_pb2_grpc.CostServiceStub(ch).GetUsageSummary(
                cost_pb2.GetUsageSummaryRequest(), timeout=5
            )
        eventually(lambda: any(path == "/v1/metrics" for path, _ in rx.requests()))
        assert cost.stop() == 0
        sent = {ctype for path, ctype in rx.requests() if path == "/v1/metrics"}
        assert sent == {"application/x-protobuf"}
