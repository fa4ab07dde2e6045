"""Errors stay ours at the edge of every server: a request that does not decode gets
INVALID_ARGUMENT with an ErrorInfo (not UNKNOWN with a Python exception text), and what a
client sent is clipped before it is quoted in an error, so the trailers never overflow."""

from __future__ import annotations

import asyncio
import sys

import grpc
import pytest

from quorum.router.v1 import router_pb2
from tests.integration.inproc import reason
from tests.integration.test_billing import mesh

__all__ = ["mesh"]

METHODS = (
    "/quorum.router.v1.RouterService/Complete",
    "/quorum.router.v1.RouterService/CompleteStream",
    "/quorum.cost.v1.CostService/RecordUsage",
    "/quorum.cost.v1.CostService/WatchBudget",
)


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xff\xff", b"\x0a\x03\xff\xfe\xfd", b"\x12\x80"],
    ids=["garbage", "invalid-utf8-string", "truncated"],
)
async def test_undecodable_requests_are_invalid_argument(mesh, payload, caplog):
    _, _, data = mesh
    for method in METHODS:
        service = "router" if "router" in method else "cost"
        async with grpc.aio.insecure_channel(data[service]["address"]) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                if method.endswith(("Stream", "WatchBudget")):
                    await channel.unary_stream(method)(payload, timeout=5).read()
                else:
                    await channel.unary_unary(method)(payload, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert reason(e.value) == "MALFORMED_REQUEST"
        assert "Traceback" not in caplog.text


async def test_a_huge_model_name_is_clipped_in_the_error(mesh):
    router, _, _ = mesh
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await router.Complete(router_pb2.CompleteRequest(prompt="hi", model="m" * 9000), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(e.value) == "MODEL_NOT_FOUND"
    assert len(e.value.details() or "") <= 1000


async def test_the_cli_reports_a_huge_model_name_without_a_traceback(mesh):
    _, _, data = mesh
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quorum.cli", "complete", "hi", "--model", "m" * 9000,
        "--router", data["router"]["address"],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert b"NOT_FOUND" in err and b"Traceback" not in err
    assert len(err) < 2000
