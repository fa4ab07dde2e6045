"""``[server]`` limits on a real service (the cost service on 127.0.0.1:0): a message over
``max_message_bytes`` and a call beyond ``max_concurrent_calls`` are refused at once with
RESOURCE_EXHAUSTED, and the service goes on serving."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from quorum import config
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.registry import ConfigError
from quorum.server import ServerLimits
from services.cost.config import from_config
from services.cost.server import create


def test_limits_come_from_config_and_are_checked() -> None:
    assert ServerLimits.from_config(config.defaults()) == ServerLimits(4 * 1024 * 1024, 512)
    assert ServerLimits.from_config({}) == ServerLimits()
    got = ServerLimits.from_config(
        {"server": {"max_message_bytes": 4096, "max_concurrent_calls": 2}}
    )
    assert got == ServerLimits(4096, 2)
    for bad in ({"max_message_bytes": 10, "max_concurrent_calls": 2},
                {"max_message_bytes": 4096, "max_concurrent_calls": 0},
                {"max_message_bytes": "4M", "max_concurrent_calls": 2}):  # fmt: skip
        with pytest.raises(ConfigError, match=r"server\.max_"):
            ServerLimits.from_config({"server": bad})


async def test_oversized_messages_and_calls_over_the_limit_are_refused_at_once(
    tmp_path: Path,
) -> None:
    data = config.defaults()
    data["server"] = {"max_message_bytes": 4096, "max_concurrent_calls": 1}
    settings = from_config(data, {"QUORUM_DATA_DIR": str(tmp_path)}, address="127.0.0.1:0")
    server, port, monitor, close = await create(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = cost_pb2_grpc.CostServiceStub(channel)
            await stub.ListPrices(cost_pb2.ListPricesRequest(), timeout=5)  # fits: served

            big = cost_pb2.EstimateCostRequest(model="m" * 5000)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.EstimateCost(big, timeout=5)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            # a budget watch holds the one call allowed; the next is refused, fast
            watch = stub.WatchBudget(cost_pb2.WatchBudgetRequest(tenant="acme"), timeout=20)
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.ListPrices(cost_pb2.ListPricesRequest(), timeout=5)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - t0 < 1.0
            watch.cancel()
            for _ in range(50):  # the slot frees once the server sees the cancel
                try:
                    await stub.ListPrices(cost_pb2.ListPricesRequest(), timeout=5)
                    break
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("the service did not serve again after the watch ended")
    finally:
        await monitor.stop()
        await server.stop(None)
        await close()
