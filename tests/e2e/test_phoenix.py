"""The mesh's traces in a real Arize Phoenix: what a user sees in the dashboard.

Phoenix (its own venv, ``make phoenix-test``) runs as its own process on loopback;
the mesh exports to it with ``OTEL_EXPORTER_OTLP_ENDPOINT``, Triton's spans through the
mesh's relay (Phoenix refuses Triton's JSON). The spans are read back through Phoenix's REST
and GraphQL APIs. Phoenix keeps no resource attributes, so each process's spans are known by
their names.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from quorum.mesh import Mesh, MeshOptions
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.simulator import ProviderSimulator
from tests import phoenix_server

pytestmark = [
    pytest.mark.phoenix,
    pytest.mark.e2e,
    pytest.mark.triton,
    pytest.mark.skipif(
        phoenix_server.python() is None,
        reason="Arize Phoenix is not installed: `make phoenix-setup` makes .quorum/phoenix-venv",
    ),
    pytest.mark.timeout(420),
]

# input moderation by the local Triton models only: the completion is the trace's one LLM
# call, so the trace's token total must be exactly the call's usage
CONFIG = """
[registry]
default_model = "sim-chat"

[router]
moderation = "input"

[providers.sim]
base_url = "{url}"
simulated = true

[models.sim-chat]
provider = "sim"
provider_model = "sim-chat-1"
input_per_mtok = "2.00"
output_per_mtok = "8.00"
tasks = ["chat"]
"""

ROUTER_COMPLETE = "/quorum.router.v1.RouterService/Complete"
VOTER_MODERATE = "/quorum.voter.v1.VoterService/Moderate"
TRITON_REQUEST = "InferRequest"  # Triton's root span of one inference (via the relay)
#: the server spans of each process begin with its gRPC service's name
SERVER_PREFIXES = {
    "quorum-router": "/quorum.router.v1.RouterService/",
    "quorum-voter": "/quorum.voter.v1.VoterService/",
    "quorum-cost": "/quorum.cost.v1.CostService/",
}


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    python = phoenix_server.python()
    assert python is not None
    with phoenix_server.PhoenixServer(python, tmp_path_factory.mktemp("phoenix")) as px:
        yield px


@pytest.fixture(scope="module")
def router(tmp_path_factory, phoenix):
    tmp = tmp_path_factory.mktemp("mesh")
    with ProviderSimulator() as sim:
        cfg = tmp / "quorum.toml"
        cfg.write_text(CONFIG.format(url=sim.url))
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.endswith("_API_KEY") and not k.startswith("OTEL_")
        }
        env |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_METRICS_EXPORTER": "none",  # Phoenix takes traces only
        }
        options = MeshOptions(
            data_dir=tmp / "data", config_path=cfg, ephemeral_ports=True, simulator="off", env=env
        )
        with Mesh(options) as mesh, grpc.insecure_channel(mesh.addresses["router"]) as ch:
            yield router_pb2_grpc.RouterServiceStub(ch), mesh


def _wait(read: Callable[[], Any], ok: Callable[[Any], bool], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def _names(spans: list[dict[str, Any]]) -> set[str]:
    return {s["name"] for s in spans}


def _services(spans: list[dict[str, Any]]) -> set[str]:
    """The processes that made these spans, known by the server spans' names."""
    names = _names(spans)
    found = {
        svc for svc, prefix in SERVER_PREFIXES.items() if any(n.startswith(prefix) for n in names)
    }
    return found | ({"triton"} if TRITON_REQUEST in names else set())


def _whole(spans: list[dict[str, Any]], parent: str) -> bool:
    """Every process's spans are there and each hangs from a span of the trace."""
    known = {parent} | {s["context"]["span_id"] for s in spans}
    want = {*SERVER_PREFIXES, "triton"}
    return want <= _services(spans) and all(s["parent_id"] in known for s in spans)


def _call(stub: Any, prompt: str) -> tuple[str, str, Any]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    call = stub.Complete.with_call(
        router_pb2.CompleteRequest(prompt=prompt, model="sim-chat"),
        timeout=30,
        metadata=[("traceparent", f"00-{trace_id}-{parent}-01")],
    )
    return trace_id, parent, call[0]


def test_one_complete_is_one_trace_with_its_tokens_once(router, phoenix):
    stub, mesh = router
    # Triton 2.51 now and then starts a trace of its own instead of continuing the caller's
    # (tests/triton): up to three calls, and one must show the whole chain
    for _ in range(3):
        trace_id, parent, resp = _call(stub, "What is a quorum?")
        spans = _wait(lambda t=trace_id: phoenix.spans(t), lambda s, p=parent: _whole(s, p))
        if TRITON_REQUEST in _names(spans):
            break
    assert _whole(spans, parent), sorted(_names(spans))
    assert _services(spans) == {"quorum-router", "quorum-voter", "quorum-cost", "triton"}

    # one tree: the router's server span hangs from the caller; every span in the tree
    by_id = {s["context"]["span_id"]: s for s in spans}
    (root,) = [s for s in spans if s["parent_id"] == parent]
    assert root["name"] == ROUTER_COMPLETE and root["status_code"] != "ERROR"

    def ancestors(span: dict[str, Any]) -> list[str]:
        out = []
        while span["parent_id"] in by_id:
            span = by_id[span["parent_id"]]
            out.append(span["name"])
        return out

    triton = [s for s in spans if s["name"] == TRITON_REQUEST]
    assert triton and all(VOTER_MODERATE in ancestors(s) for s in triton)
    assert all(ROUTER_COMPLETE in ancestors(s) for s in spans if s is not root)

    # tokens: on the model call's span only, and Phoenix's trace total equals the usage
    usage = resp.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    with_tokens = [s for s in spans if "llm.token_count.prompt" in s["attributes"]]
    assert [s["name"] for s in with_tokens] == ["chat sim-chat"]  # the registry's name
    (chat,) = with_tokens
    assert chat["span_kind"] == "LLM"  # Phoenix read the GenAI attributes as a model call
    counts = (
        chat["attributes"]["llm.token_count.prompt"],
        chat["attributes"]["llm.token_count.completion"],
    )
    assert counts == (usage.input_tokens, usage.output_tokens)
    summary = phoenix.trace_summary(trace_id)
    assert summary is not None and summary["numSpans"] == len(spans)
    root_span = summary["rootSpan"]
    assert root_span["name"] == ROUTER_COMPLETE
    assert root_span["cumulativeTokenCountPrompt"] == usage.input_tokens
    assert root_span["cumulativeTokenCountCompletion"] == usage.output_tokens
    assert mesh.relay is not None and mesh.relay.stats.forwarded >= 1
    assert (mesh.relay.stats.rejected, mesh.relay.stats.failed) == (0, 0)


def test_a_blocked_prompt_is_an_error_in_phoenix(router, phoenix):
    stub, _ = router
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    with pytest.raises(grpc.RpcError) as e:
        stub.Complete(
            router_pb2.CompleteRequest(prompt="you stupid idiot, shut up you worthless moron"),
            timeout=30,
            metadata=[("traceparent", f"00-{trace_id}-{parent}-01")],
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def has_root(spans: list[dict[str, Any]]) -> bool:
        return any(s["parent_id"] == parent and s["name"] == ROUTER_COMPLETE for s in spans)

    spans = _wait(lambda: phoenix.spans(trace_id), has_root)
    (root,) = [s for s in spans if s["parent_id"] == parent]
    assert root["status_code"] == "ERROR"
    assert root["status_message"] == "INVALID_ARGUMENT: INPUT_BLOCKED"
    assert root["attributes"]["error.type"] == "INPUT_BLOCKED"
    # the moderation that decided it is in the same trace
    assert VOTER_MODERATE in _wait(
        lambda: _names(phoenix.spans(trace_id)), lambda n: VOTER_MODERATE in n
    )
