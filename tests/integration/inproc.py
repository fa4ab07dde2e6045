"""In-process services for integration tests: real grpc.aio servers on loopback ports, built
by each service's own ``create``; a config that points them at each other and at a provider
simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from quorum import config
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.ids import free_ports
from quorum.router.v1 import router_pb2_grpc

__all__ = [
    "BILLED_SIM_CHAT",
    "Stubs",
    "cost_and_router",
    "error_info",
    "free_port",
    "mesh_config",
    "reason",
    "router_and_cost",
    "router_for",
    "start",
    "stop",
    "wait_for_recorded",
]

#: configuration (a format string: ``url``, the simulator's) for a provider on the simulator that
#: stands in for a real, billed one (a ``simulated = true`` one's calls are kept out of spend
#: and budgets), and one chat model on it, sim-chat
BILLED_SIM_CHAT = """
[providers.sim]
base_url = "{url}"

[models.sim-chat]
provider = "sim"
input_per_mtok = "2.00"
output_per_mtok = "8.00"
tasks = ["chat"]
"""


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a failed call."""
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def reason(err: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call."""
    return str(error_info(err).reason)


def free_port() -> int:
    return free_ports(1)[0]


async def wait_for_recorded(cost_port: int, timeout_s: float = 15.0):
    """Poll the cost service's summary until it holds a record (or the time is up)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cost_port}") as ch:
        stub = cost_pb2_grpc.CostServiceStub(ch)
        deadline = time.monotonic() + timeout_s
        while True:
            summary = await stub.GetUsageSummary(
                cost_pb2.GetUsageSummaryRequest(), timeout=5, wait_for_ready=True
            )
            if summary.requests or time.monotonic() > deadline:
                return summary
            await asyncio.sleep(0.2)


def mesh_config(
    sim_url: str, *, cost_port: int, voter_port: int, moderation: str, simulated: bool = False
) -> dict:
    """The embedded defaults with one chat model, ``sim-chat``, on the provider simulator at
    ``sim_url``. The simulator stands in for a real, billed provider unless ``simulated``:
    then its answers are simulated ones (``simulated = true``), kept out of spend and budgets."""
    data = config.load(env={})
    data["providers"]["sim"] = {"base_url": sim_url, "simulated": simulated}
    data["models"] = {
        "sim-chat": {"provider": "sim", "input_per_mtok": "1.00", "output_per_mtok": "2.00"},
        "profanity-check": {
            "triton_model": "profanity_check",
            "moderation": {"weight": 1.0, "categories": ["harassment", "hate"], "threshold": 0.5},
        },
    }
    data["registry"] = {"default_model": "sim-chat"}
    data["router"] |= {
        "cost_address": f"127.0.0.1:{cost_port}",
        "voter_address": f"127.0.0.1:{voter_port}",
        "moderation": moderation,
    }
    data["voter"] |= {
        "cost_address": f"127.0.0.1:{cost_port}",
        "triton_address": f"127.0.0.1:{free_port()}",  # nothing listens there
    }
    data["cost"]["address"] = f"127.0.0.1:{cost_port}"
    # answers wait until the cost service has their record, so usage_recorded can be checked
    data["usage"]["record_wait_s"] = 2.0
    # never the default ports: a mesh (or another test run) may be using them
    data["router"]["address"] = "127.0.0.1:0"
    data["voter"]["address"] = "127.0.0.1:0"
    return data


async def start(create, settings) -> AsyncIterator:
    server, port, monitor, close = await create(settings)
    await server.start()
    await monitor.update()
    return server, port, monitor, close


async def stop(handle) -> None:
    server, _, monitor, close = handle
    await monitor.stop()
    await server.stop(0.5)
    await close()


async def start_services(stack: AsyncExitStack, data: dict, env: dict) -> int:
    """The cost service, the voter and a router over ``data`` (in process), each stopped when
    ``stack`` closes; the router's port."""
    from services.cost import server as cost_server
    from services.cost.config import from_config as cost_settings
    from services.router import server as router_server
    from services.router.config import RouterSettings
    from services.voter import server as voter_server
    from services.voter.config import VoterSettings

    handle = None
    for create, settings in (
        (cost_server.create, cost_settings(data, env)),
        (voter_server.create, VoterSettings.from_config(data, env)),
        (router_server.create, RouterSettings.from_config(data, env)),
    ):
        handle = await start(create, settings)
        stack.push_async_callback(stop, handle)
    assert handle is not None
    return int(handle[1])


@asynccontextmanager
async def router_for(data: dict, env: dict) -> AsyncIterator[router_pb2_grpc.RouterServiceStub]:
    """The cost service and a router over ``data`` (in process), stopped on exit; yields a
    stub on a channel to the router."""
    async with AsyncExitStack() as stack:
        _, router = await stack.enter_async_context(cost_and_router(data, env))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{router[1]}")
        await stack.enter_async_context(channel)
        yield router_pb2_grpc.RouterServiceStub(channel)


@dataclass(frozen=True)
class Stubs:
    """Stubs on channels to a router and a cost service (and the channels, for raw calls)."""

    router: router_pb2_grpc.RouterServiceStub
    cost: cost_pb2_grpc.CostServiceStub
    router_channel: grpc.aio.Channel
    cost_channel: grpc.aio.Channel


@asynccontextmanager
async def router_and_cost(data: dict, env: dict) -> AsyncIterator[Stubs]:
    """:func:`cost_and_router`, with a channel and a stub to each; all closed on exit."""
    async with (
        cost_and_router(data, env) as (cost, router),
        grpc.aio.insecure_channel(f"127.0.0.1:{router[1]}") as rch,
        grpc.aio.insecure_channel(f"127.0.0.1:{cost[1]}") as cch,
    ):
        yield Stubs(
            router_pb2_grpc.RouterServiceStub(rch), cost_pb2_grpc.CostServiceStub(cch), rch, cch
        )


@asynccontextmanager
async def cost_and_router(data: dict, env: dict) -> AsyncIterator[tuple]:
    """The cost service and a router over ``data`` (in process), stopped on exit; yields
    their (server, port, monitor, close) handles."""
    from services.cost import server as cost_server
    from services.cost.config import from_config as cost_settings
    from services.router import server as router_server
    from services.router.config import RouterSettings

    cost = await start(cost_server.create, cost_settings(data, env))
    try:
        router = await start(router_server.create, RouterSettings.from_config(data, env))
        try:
            yield cost, router
        finally:
            await stop(router)
    finally:
        await stop(cost)
