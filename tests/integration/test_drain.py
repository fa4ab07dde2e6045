"""SIGTERM drains: health turns NOT_SERVING, calls in flight finish, the process exits 0."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest

from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.simulator import ProviderSimulator

CONFIG = """
[registry]
default_model = "slow"
[router]
moderation = "none"
[providers.sim]
base_url = "{url}"
simulated = true
[models.slow]
provider = "sim"
input_per_mtok = "1.00"
output_per_mtok = "2.00"
"""


@pytest.fixture(params=[1.0, 6.0], ids=["1s", "6s"])
def slow_sim(request):
    """A provider that takes 1 s, or 6 s: longer than a fixed few seconds of drain would
    allow (the drain follows the longest deadline the router allows, 120 s by default)."""
    with ProviderSimulator(latency_s=request.param) as s:
        yield s


def test_router_finishes_calls_in_flight_on_sigterm(service_process, slow_sim, tmp_path):
    cfg = tmp_path / "q.toml"
    cfg.write_text(CONFIG.format(url=slow_sim.url))
    router = service_process(
        "services.router", "--config", str(cfg), "--address", "127.0.0.1:0",
        env={"QUORUM_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    result: dict[str, object] = {}

    def call() -> None:
        with grpc.insecure_channel(router.address) as ch:
            try:
                result["resp"] = router_pb2_grpc.RouterServiceStub(ch).Complete(
                    router_pb2.CompleteRequest(prompt="take your time"), timeout=15
                )
            except grpc.RpcError as e:
                result["err"] = e

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.4)  # the call is now waiting on the slow provider
    start = time.monotonic()
    assert router.stop(signal.SIGTERM, timeout=20) == 0
    t.join(10)
    assert "err" not in result, result.get("err")
    assert result["resp"].text.startswith("[simulated")
    assert time.monotonic() - start < slow_sim.latency_s + 8
    assert '"msg": "draining' in router.logs()  # JSON logs on stderr
