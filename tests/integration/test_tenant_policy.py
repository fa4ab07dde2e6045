"""What the operator sets per tenant at the router: a moderation floor (a tenant's requests
get at least its floor, whatever they ask for; the voter is down here, so a request that is
moderated fails closed with UNAVAILABLE and one that is not goes through) and rate limits.
Real router and cost (in process), the real simulator."""

from __future__ import annotations

import grpc
import pytest

from quorum.registry import ConfigError
from quorum.router.v1 import router_pb2, router_pb2_grpc
from services.router.completion import Moderation, ModerationPolicy
from services.router.config import RouterSettings
from tests.cost.test_cost_service import error_info
from tests.integration.inproc import cost_and_router, free_port, mesh_config, reason, router_for

NONE = router_pb2.MODERATION_MODE_NONE


async def test_a_tenant_below_its_floor_is_raised_to_it(sim, tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port = free_port()
    data = mesh_config(sim.url, cost_port=cost_port, voter_port=free_port(), moderation="none")
    data["router"]["moderation_floors"] = {"acme": "input"}
    async with router_for(data, env) as stub:
        req = router_pb2.CompleteRequest(prompt="hello", moderation=NONE)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Complete(req, metadata=(("quorum-tenant", "acme"),), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # moderated all the same
        assert sim.stats["completions"] == 0
        assert (await stub.Complete(req, timeout=10)).text  # no floor for the default


def test_effective_moderation_is_what_is_asked_joined_with_the_floor() -> None:
    p = ModerationPolicy(
        default=Moderation.NONE, floor=Moderation.OUTPUT, tenant_floors={"acme": Moderation.INPUT}
    )
    assert p.effective(None, "x") is Moderation.OUTPUT
    assert p.effective(Moderation.INPUT, "x") is Moderation.BOTH
    assert p.effective(Moderation.NONE, "acme") is Moderation.INPUT
    assert p.effective(Moderation.OUTPUT, "acme") is Moderation.BOTH
    assert p.may_moderate
    assert not ModerationPolicy(default=Moderation.NONE).may_moderate


@pytest.mark.parametrize(
    ("router", "match"),
    [
        ({"moderation_floor": "some"}, "moderation_floor"),
        ({"moderation_floors": {"acme": "loud"}}, "moderation_floors.acme"),
        ({"moderation_floors": {"a b": "input"}}, "moderation_floors"),
        ({"moderation_floors": "input"}, "moderation_floors"),
    ],
)
def test_bad_floors_are_config_errors(sim, tmp_path, router, match) -> None:
    data = mesh_config(sim.url, cost_port=free_port(), voter_port=free_port(), moderation="none")
    data["router"] |= router
    with pytest.raises(ConfigError, match=match):
        RouterSettings.from_config(data, {"QUORUM_DATA_DIR": str(tmp_path)})


async def test_a_tenant_over_its_rate_limit_is_refused_at_once(sim, tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port = free_port()
    data = mesh_config(sim.url, cost_port=cost_port, voter_port=free_port(), moderation="none")
    data["router"]["limits"] = {"tenants": {"acme": {"requests_per_minute": 2}}}
    async with router_for(data, env) as stub:
        req = router_pb2.CompleteRequest(prompt="hello")
        acme = (("quorum-tenant", "acme"),)
        for _ in range(2):
            await stub.Complete(req, metadata=acme, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Complete(req, metadata=acme, timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(e.value) == "RATE_LIMITED"
        assert 25 < float(error_info(e.value).metadata["retry_after_s"]) <= 30
        await stub.Complete(req, timeout=10)  # the default tenant has no limit
        assert sim.stats["completions"] == 3


async def test_the_briefs_integer_model_id_names_a_model(sim, tmp_path):
    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port = free_port()
    data = mesh_config(sim.url, cost_port=cost_port, voter_port=free_port(), moderation="none")
    data["models"]["sim-chat"]["model_id"] = 7
    async with router_for(data, env) as stub:
        resp = await stub.Complete(router_pb2.CompleteRequest(prompt="hi", model_id=7), timeout=10)
        assert resp.model == "sim-chat" and resp.route_reason == "requested by the client"
        for req, code in (
            (router_pb2.CompleteRequest(prompt="hi", model_id=8), "NOT_FOUND"),
            (router_pb2.CompleteRequest(prompt="hi", model_id=7, model="other"),
             "INVALID_ARGUMENT"),
        ):  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Complete(req, timeout=10)
            assert e.value.code().name == code
            assert error_info(e.value).metadata["field"] == "model_id"


async def test_when_every_model_fails_the_error_names_each_failure(sim, tmp_path):
    from quorum.simulator import Fault

    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port = free_port()
    data = mesh_config(sim.url, cost_port=cost_port, voter_port=free_port(), moderation="none")
    data["models"]["sim-chat"]["tasks"] = ["chat"]
    data["models"]["sim-cheap"] = {
        "provider": "sim", "input_per_mtok": "0.10", "output_per_mtok": "0.20", "tasks": ["chat"],
    }  # fmt: skip
    data["router"] |= {"max_attempts": 1}
    async with cost_and_router(data, env) as (_, router):
        sim.add_fault(Fault(kind="status", status=503))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router[1]}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await router_pb2_grpc.RouterServiceStub(ch).Complete(
                    router_pb2.CompleteRequest(prompt="hi", task="chat"), timeout=10
                )
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(e.value).metadata["failures"] == (
            "sim-cheap: PROVIDER_ERROR; sim-chat: PROVIDER_ERROR"
        )


async def test_a_failing_provider_is_skipped_until_its_breaker_probes_it(sim, tmp_path):
    import asyncio

    from quorum.simulator import Fault

    env = {"QUORUM_DATA_DIR": str(tmp_path)}
    cost_port = free_port()
    data = mesh_config(sim.url, cost_port=cost_port, voter_port=free_port(), moderation="none")
    data["router"] |= {"max_attempts": 1, "breaker_failures": 2, "breaker_cooldown_s": 0.5}
    async with cost_and_router(data, env) as (_, router):
        sim.add_fault(Fault(kind="status", status=503, times=2))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router[1]}") as ch:
            stub = router_pb2_grpc.RouterServiceStub(ch)
            req = router_pb2.CompleteRequest(prompt="hi")
            for expected in ("PROVIDER_ERROR", "PROVIDER_ERROR", "CIRCUIT_OPEN"):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.Complete(req, timeout=10)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
                assert reason(e.value) == expected
            assert sim.stats["completions"] == 0
            await asyncio.sleep(0.6)
            assert (await stub.Complete(req, timeout=10)).text  # the probe: closed again
            assert (await stub.Complete(req, timeout=10)).text
