"""RouterService: proto in, Completer call, proto out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from quorum import auth, protoconv
from quorum.deadline import Deadline
from quorum.grpcerrors import map_errors, map_stream_errors
from quorum.router.v1 import router_pb2, router_pb2_grpc
from services.router.completion import Completer, Completion, Moderation, Prompt, validate

_MODES = {
    router_pb2.MODERATION_MODE_NONE: Moderation.NONE,
    router_pb2.MODERATION_MODE_INPUT: Moderation.INPUT,
    router_pb2.MODERATION_MODE_OUTPUT: Moderation.OUTPUT,
    router_pb2.MODERATION_MODE_BOTH: Moderation.BOTH,
}


def to_response(done: Completion) -> router_pb2.CompleteResponse:
    resp = router_pb2.CompleteResponse(
        request_id=done.request_id,
        model=done.spec.name,
        provider=done.provider,
        simulated=done.simulated,
        route_reason=done.route_reason,
        text=done.text,
        finish_reason=done.finish_reason,
        usage=protoconv.usage(done.usage),
        latency_ms=done.latency_ms,
        usage_recorded=done.usage_recorded,
        usage_estimated=done.usage_estimated,
        replayed=done.replayed,
    )
    if done.cost is not None:
        resp.cost.CopyFrom(protoconv.money(done.cost))
    if done.input_moderation is not None:
        resp.input_moderation.CopyFrom(done.input_moderation)
    if done.output_moderation is not None:
        resp.output_moderation.CopyFrom(done.output_moderation)
    return resp


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(
        self,
        completer: Completer,
        *,
        default_timeout_s: float,
        max_timeout_s: float,
        max_prompt_chars: int,
        max_messages: int,
    ) -> None:
        self._completer = completer
        self._default_timeout = default_timeout_s
        self._max_timeout = max_timeout_s
        self._max_chars = max_prompt_chars
        self._max_messages = max_messages

    def _prompt(self, req: router_pb2.CompleteRequest) -> Prompt:
        temperature = req.temperature if req.HasField("temperature") else None
        request_id, messages = validate(
            request_id=req.request_id,
            prompt=req.prompt,
            messages=[(m.role, m.content) for m in req.messages],
            max_chars=self._max_chars,
            max_messages=self._max_messages,
            max_tokens=req.max_tokens,
            temperature=temperature,
        )
        return Prompt(
            request_id=request_id,
            messages=messages,
            model=req.model,
            task=req.task,
            max_tokens=req.max_tokens,
            temperature=temperature,
            moderation=_MODES.get(req.moderation),
            client_id=bool(req.request_id),
            tenant=auth.current().tenant,
            model_id=req.model_id if req.HasField("model_id") else None,
        )

    def _deadline(self, context: grpc.aio.ServicerContext[Any, Any]) -> Deadline:
        return Deadline.from_grpc(
            context.time_remaining(), default_s=self._default_timeout, max_s=self._max_timeout
        )

    @map_errors
    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.CompleteResponse:
        deadline = self._deadline(context)
        done = await self._completer.complete(self._prompt(request), deadline)
        return to_response(done)

    @map_stream_errors
    async def CompleteStream(
        self,
        request: router_pb2.CompleteStreamRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[router_pb2.CompleteStreamResponse]:
        deadline = self._deadline(context)
        events = self._completer.stream(self._prompt(request.request), deadline)
        # closed at once when the client goes away, so the call is settled (billed) now
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, str):
                    yield router_pb2.CompleteStreamResponse(delta=event)
                else:
                    yield router_pb2.CompleteStreamResponse(summary=to_response(event))
