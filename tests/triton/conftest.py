"""What the Triton tests share: a client to the module's own ``server`` fixture (each module
starts the real tritonserver with the models it tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tritonclient.grpc.aio import InferenceServerClient

from quorum.tritonserver import TritonServer


@pytest.fixture
async def client(server: TritonServer) -> AsyncIterator[InferenceServerClient]:
    c = InferenceServerClient(server.grpc_address)
    try:
        yield c
    finally:
        await c.close()
