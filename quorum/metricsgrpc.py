"""The server interceptor that measures every gRPC call (``rpc.server.call.duration``, see
:mod:`quorum.metrics`): its duration and the status it ended with, by method. The
OpenTelemetry gRPC instrumentation at this version makes spans only, no metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from quorum import metrics
from quorum.handlers import HandlerCache

#: not measured: health checks (load balancers poll them) and reflection, as in the traces
UNMEASURED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _code(context: grpc.aio.ServicerContext[Any, Any], default: grpc.StatusCode) -> str:
    code = context.code()  # set by abort, abort_with_status or set_code; None otherwise
    return str(code.name) if isinstance(code, grpc.StatusCode) else default.name


@contextlib.contextmanager
def _measured(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[None]:
    """Time one call and count it under its status: the one the handler set, CANCELLED when
    the client went away, UNKNOWN for an exception that set none."""
    start = time.perf_counter()
    code = grpc.StatusCode.UNKNOWN.name
    try:
        yield
    except (asyncio.CancelledError, GeneratorExit):
        code = grpc.StatusCode.CANCELLED.name
        raise
    except BaseException:
        code = _code(context, grpc.StatusCode.UNKNOWN)
        raise
    else:
        code = _code(context, grpc.StatusCode.OK)
    finally:
        metrics.rpc_served(method, code, time.perf_counter() - start)


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Put first in a server's interceptors, so a call the others refuse (no key, a request
    that does not decode) is measured too. Unknown methods (no handler) are not: their name
    is the caller's string. Each method's measured handler is made once, on its first call."""

    def __init__(self) -> None:
        self._handlers = HandlerCache()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        return self._handlers.get(handler_call_details.method or "", handler, _measure)


def _measure(path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if path.startswith(UNMEASURED_PREFIXES):
        return handler
    method = path.lstrip("/")
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with _measured(method, context):
                return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            with _measured(method, context):
                async for item in inner_stream(request, context):
                    yield item

        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler  # client- and bidirectional streams: none of ours
