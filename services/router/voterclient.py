"""The router's client of the voter service.

Under load the router asks the voter about many texts at once, and a ``Moderate`` call costs
router and voter alike far more CPU than the judging of one more text in a batch. So, unless
``batch`` is 0, concurrent moderations for one tenant are coalesced
(:class:`quorum.backends.coalesce.Coalescer`): while fewer than ``in_flight`` calls for the
tenant are with the voter, a moderation goes at once (alone, as ``Moderate``); beyond that
the next ones queue, and go together as one ``ModerateBatch`` (at most ``batch`` texts) when a
call returns, each text under its own request id (``request_ids``), so that its judges bill
and reserve exactly as ``Moderate`` would. A lone moderation is never delayed. More than one
call in flight keeps a slow batch (a remote judge taking its time) from holding up all the
others; with the local judges, which are CPU-bound, 1, 2 and 4 gave the same throughput here
(``bench/bench_router.py``).

Each text gets its own answer: its verdict, or the error ``Moderate`` would have given it (a
batch result's status). A batch the voter refuses whole as ``INVALID_ARGUMENT`` (a text over
its limit, a batch over its byte limit) is sent again text by text, so that only the bad text
fails; any other failure of the call (the voter down, the deadline) is every text's. Each
moderation has its own ``voter queue`` span; a call runs in the trace of the first request in
it, under that span, which says how many texts the call carried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import grpc
from google.rpc import status_pb2
from opentelemetry import trace

from quorum.backends.coalesce import Coalescer
from quorum.errors import InvalidArgument, QuorumError
from quorum.grpcerrors import from_rpc_error, from_rpc_status
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc

_tracer = trace.get_tracer(__name__)

#: a text and its request id
Item = tuple[str, str]
Answer = voter_pb2.ModerateResponse | QuorumError


class VoterClient:
    def __init__(self, channel: grpc.aio.Channel, *, batch: int = 64, in_flight: int = 4) -> None:
        if batch < 0 or in_flight < 1:
            raise ValueError("batch must be >= 0 and in_flight >= 1")
        self._stub = voter_pb2_grpc.VoterServiceStub(channel)
        self._batch = batch
        self._coalescer: Coalescer[Item, Answer] = Coalescer(
            max_in_flight=in_flight, max_batch=batch
        )

    async def moderate(
        self, text: str, request_id: str, *, tenant: str, timeout_s: float
    ) -> voter_pb2.ModerateResponse:
        """The voter's verdict on ``text``, moderated for ``tenant`` (its judges bill it)."""
        if self._batch < 2:
            return await self._one(text, request_id, tenant, timeout_s)

        async def call(
            items: Sequence[Item], seconds: float, headers: Mapping[str, str] | None
        ) -> list[Answer]:
            return await self._call(items, tenant, seconds)

        with _tracer.start_as_current_span("voter queue", kind=trace.SpanKind.INTERNAL):
            try:
                async with asyncio.timeout(timeout_s):
                    (answer,) = await self._coalescer.submit(
                        tenant, call, [(text, request_id)], timeout_s
                    )
            except TimeoutError:
                raise _deadline() from None
        if isinstance(answer, QuorumError):
            raise answer
        return answer

    async def _call(self, items: Sequence[Item], tenant: str, timeout_s: float) -> list[Answer]:
        """One answer per item: ``Moderate`` for one, ``ModerateBatch`` for more."""
        trace.get_current_span().set_attribute("quorum.moderation.texts", len(items))
        if len(items) == 1:
            return await self._each(items, tenant, timeout_s)
        request = voter_pb2.ModerateBatchRequest(
            texts=[text for text, _ in items],
            request_ids=[request_id for _, request_id in items],
            tenant=tenant,
        )
        try:
            response: voter_pb2.ModerateBatchResponse = await self._stub.ModerateBatch(
                request, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as e:
            err = from_rpc_error(e, service="voter")
            if isinstance(err, InvalidArgument):  # refused whole for one text: each alone
                return await self._each(items, tenant, timeout_s)
            raise err from None
        if len(response.results) != len(items):
            raise from_rpc_status(
                _status(grpc.StatusCode.INTERNAL, "the voter's batch answer is malformed"),
                service="voter",
            )
        return [
            r.moderated if r.HasField("moderated") else from_rpc_status(r.error, service="voter")
            for r in response.results
        ]

    async def _each(self, items: Sequence[Item], tenant: str, timeout_s: float) -> list[Answer]:
        async def one(item: Item) -> Answer:
            try:
                return await self._one(item[0], item[1], tenant, timeout_s)
            except QuorumError as err:
                return err

        return list(await asyncio.gather(*(one(item) for item in items)))

    async def _one(
        self, text: str, request_id: str, tenant: str, timeout_s: float
    ) -> voter_pb2.ModerateResponse:
        request = voter_pb2.ModerateRequest(text=text, request_id=request_id, tenant=tenant)
        try:
            resp: voter_pb2.ModerateResponse = await self._stub.Moderate(request, timeout=timeout_s)
            return resp
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e, service="voter") from None


def _status(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code.value[0], message=message)


def _deadline() -> QuorumError:
    """What a ``Moderate`` call past its deadline fails with."""
    return from_rpc_status(
        _status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), service="voter"
    )
