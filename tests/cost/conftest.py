"""Fixtures for the cost service tests: a real cost server in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from quorum import config
from quorum.cost.v1 import cost_pb2_grpc
from quorum.server import HealthMonitor
from services.cost.config import CostSettings, from_config
from services.cost.server import Close, create

# --- the cost service in process -----------------------------------------------------------


def make_settings(tmp_path: Path) -> CostSettings:
    """Settings from the embedded defaults only (no file, no QUORUM_* variables): the real
    registry and prices, a ledger in ``tmp_path``, any free loopback port."""
    return from_config(
        config.defaults(),
        {"QUORUM_DATA_DIR": str(tmp_path)},
        address="127.0.0.1:0",
        database="ledger.sqlite3",
    )


@pytest.fixture
def settings(tmp_path: Path) -> CostSettings:
    return make_settings(tmp_path)


@dataclass
class CostHarness:
    address: str
    channel: grpc.aio.Channel
    stub: cost_pb2_grpc.CostServiceStub
    monitor: HealthMonitor
    close_ledger: Close
    settings: CostSettings


@pytest.fixture
async def cost(settings: CostSettings) -> AsyncIterator[CostHarness]:
    """A real cost server on 127.0.0.1:0 over a SQLite ledger in tmp_path, and a channel."""
    server, port, monitor, close = await create(settings)
    await server.start()
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(address)
    try:
        yield CostHarness(
            address, channel, cost_pb2_grpc.CostServiceStub(channel), monitor, close, settings
        )
    finally:
        await channel.close()
        await monitor.stop()
        await server.stop(None)
        await close()
