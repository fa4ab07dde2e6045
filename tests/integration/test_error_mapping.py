"""The error decorators on a real in-process gRPC server: typed errors keep their code and
reason; anything else is INTERNAL with a generic message (the exception text never leaks)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from quorum import errors
from quorum.grpcerrors import from_rpc_error, map_errors, map_stream_errors
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.server import create_server


class Failing(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    @map_errors
    async def Complete(self, request, context):
        raise self.exc

    @map_stream_errors
    async def CompleteStream(self, request, context):
        yield router_pb2.CompleteStreamResponse(delta="partial ")
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "code", "reason", "details"),
    [
        (
            errors.ResourceExhausted("slow down", reason="PROVIDER_RATE_LIMITED", retry_after=2.5),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "PROVIDER_RATE_LIMITED",
            "slow down",
        ),
        (errors.NotFound("no such model"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND", "no such model"),
        (
            RuntimeError("boom with sk-secret-123"),
            grpc.StatusCode.INTERNAL,
            "INTERNAL",
            "internal error",
        ),
    ],
)
async def test_errors_reach_the_client_typed(exc, code, reason, details):
    server, port, _ = create_server(
        "127.0.0.1:0",
        lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(Failing(exc), s),
        ["quorum.router.v1.RouterService"],
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = router_pb2_grpc.RouterServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Complete(router_pb2.CompleteRequest(prompt="x"), timeout=5)
            assert e.value.code() == code
            assert e.value.details() == details
            status = rpc_status.from_call(e.value)
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info)
            assert info.reason == reason and info.domain == "quorum"
            back = from_rpc_error(e.value, service="router")
            assert back.reason == reason
            if isinstance(exc, errors.ResourceExhausted):
                assert isinstance(back, errors.ResourceExhausted) and back.retry_after == 2.5

            call = stub.CompleteStream(router_pb2.CompleteStreamRequest(), timeout=5)
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as e2:
                async for item in call:
                    got.append(item.delta)
            assert got == ["partial "]
            assert e2.value.code() == code and "sk-secret" not in (e2.value.details() or "")
    finally:
        await server.stop(0)
