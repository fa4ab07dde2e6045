"""What the server interceptors share: each method's wrapped handler, made once."""

from __future__ import annotations

from collections.abc import Callable

import grpc

__all__ = ["HandlerCache"]


class HandlerCache:
    """A server interceptor's wrapped handlers, made once per method: wrapping builds new
    closures and handler objects, which every call would otherwise pay for. Only methods the
    server has (a handler) are kept, so callers' method names cannot grow it."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(
        self,
        method: str,
        handler: grpc.RpcMethodHandler | None,
        wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler],
    ) -> grpc.RpcMethodHandler | None:
        if handler is None:
            return None
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
