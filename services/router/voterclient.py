"""The router's client of the voter service."""

from __future__ import annotations

import grpc

from quorum.grpcerrors import from_rpc_error
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc


class VoterClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = voter_pb2_grpc.VoterServiceStub(channel)

    async def moderate(
        self, text: str, request_id: str, *, tenant: str, timeout_s: float
    ) -> voter_pb2.ModerateResponse:
        """The voter's verdict on ``text``, moderated for ``tenant`` (its judges bill it)."""
        request = voter_pb2.ModerateRequest(text=text, request_id=request_id, tenant=tenant)
        try:
            resp: voter_pb2.ModerateResponse = await self._stub.Moderate(request, timeout=timeout_s)
            return resp
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e, service="voter") from None
