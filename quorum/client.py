"""A small Python client for the router, over the generated stubs (the brief's
``MultiModelClient``): text and the brief's model id in; answer, latency and model out.

    async with MultiModelClient("127.0.0.1:50051") as client:
        result = await client.infer("Write a python function", model_id=3)
        print(result.model, result.latency_ms, result.text)
        streamed = await client.infer_stream("Write a haiku", model_id=1)
        print(streamed.ttft_ms)

``model_id`` is the brief's integer id (0 = gpt-4.1, 1 = claude-sonnet-4.5,
2 = gemini-2.5-flash, 3 = deepseek-v3.2 with the embedded registry); ``None`` lets the router
choose from the prompt. A failed call raises the typed error of :mod:`quorum.errors` the
router answered with (an unknown id is :class:`~quorum.errors.NotFound`, reason kept).
``latency_ms`` is measured here, around the call: what a caller waits, network included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType

import grpc

from quorum.channels import connect
from quorum.grpcerrors import from_rpc_error
from quorum.router.v1 import router_pb2, router_pb2_grpc
from quorum.tls import TlsSettings

__all__ = ["InferResult", "MultiModelClient", "StreamResult"]

_MODERATION = {
    None: router_pb2.MODERATION_MODE_UNSPECIFIED,
    "none": router_pb2.MODERATION_MODE_NONE,
    "input": router_pb2.MODERATION_MODE_INPUT,
    "output": router_pb2.MODERATION_MODE_OUTPUT,
    "both": router_pb2.MODERATION_MODE_BOTH,
}


@dataclass(frozen=True)
class InferResult:
    text: str
    #: the caller's wall time for the whole call, in milliseconds
    latency_ms: float
    #: the id asked for (None: the router chose)
    model_id: int | None
    #: the registry model that answered
    model: str
    input_tokens: int
    output_tokens: int
    #: the answer came from the provider simulator (no API key for the model)
    simulated: bool
    request_id: str


@dataclass(frozen=True)
class StreamResult(InferResult):
    #: time to the first piece of text, in milliseconds
    ttft_ms: float


class MultiModelClient:
    """One long-lived channel to a router; use ``async with`` or call :meth:`close`.

    ``api_key`` is sent as ``authorization: Bearer`` (only needed when the mesh has
    ``[auth] enabled``); ``moderation`` is the policy asked for (None: the router's default).
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        timeout_s: float = 30.0,
        api_key: str | None = None,
        tls: TlsSettings | None = None,
        moderation: str | None = None,
        max_tokens: int = 0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if moderation not in _MODERATION:
            raise ValueError(
                f"moderation must be one of none, input, output, both, not {moderation!r}"
            )
        self.timeout_s = timeout_s
        self._moderation = _MODERATION[moderation]
        self._max_tokens = max_tokens
        self._channel = connect(address, api_key, tls)
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)

    def _request(self, text: str, model_id: int | None) -> router_pb2.CompleteRequest:
        req = router_pb2.CompleteRequest(
            prompt=text, moderation=self._moderation, max_tokens=self._max_tokens
        )
        if model_id is not None:
            req.model_id = model_id
        return req

    async def infer(
        self, text: str, model_id: int | None = None, *, timeout_s: float | None = None
    ) -> InferResult:
        """One completion (``Complete``)."""
        start = time.perf_counter()
        try:
            resp = await self._stub.Complete(
                self._request(text, model_id), timeout=timeout_s or self.timeout_s
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, service="router") from None
        return _result(resp, text=resp.text, model_id=model_id, start=start)

    async def infer_stream(
        self, text: str, model_id: int | None = None, *, timeout_s: float | None = None
    ) -> StreamResult:
        """One streamed completion (``CompleteStream``): the same result, and the time to the
        first piece of text."""
        start = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        summary: router_pb2.CompleteResponse | None = None
        call = self._stub.CompleteStream(
            router_pb2.CompleteStreamRequest(request=self._request(text, model_id)),
            timeout=timeout_s or self.timeout_s,
        )
        try:
            async for event in call:
                if event.WhichOneof("event") == "delta":
                    if first is None:
                        first = time.perf_counter()
                    pieces.append(event.delta)
                elif event.WhichOneof("event") == "summary":
                    summary = event.summary
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, service="router") from None
        if summary is None:
            raise RuntimeError("the router's stream ended without its summary")
        base = _result(summary, text="".join(pieces), model_id=model_id, start=start)
        ttft = (first if first is not None else time.perf_counter()) - start
        return StreamResult(**vars(base), ttft_ms=ttft * 1000)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> MultiModelClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _result(
    resp: router_pb2.CompleteResponse, *, text: str, model_id: int | None, start: float
) -> InferResult:
    return InferResult(
        text=text,
        latency_ms=(time.perf_counter() - start) * 1000,
        model_id=model_id,
        model=resp.model,
        input_tokens=resp.usage.input_tokens,
        output_tokens=resp.usage.output_tokens,
        simulated=resp.simulated,
        request_id=resp.request_id,
    )
