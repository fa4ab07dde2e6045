"""The edge of every Quorum server, and API keys on the wire: the server interceptor that
turns a request that does not decode (bad protobuf, invalid UTF-8 in a string) into
``INVALID_ARGUMENT`` with one log line instead of gRPC's ``UNKNOWN`` and a traceback, and
says who each call comes from; and the client interceptor that sends a service's own key.
The rules for keys are in :mod:`quorum.auth`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from quorum import auth, ids
from quorum.auth import Identity, KeyStore, Role
from quorum.errors import InvalidArgument, QuorumError, Unauthenticated
from quorum.grpcerrors import abort
from quorum.handlers import HandlerCache

#: methods anyone may call: health checks (load balancers, `quorum up`) and reflection
#: (grpcurl's `list` and `describe`; it serves the API's shape, no data)
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]


def identify(store: KeyStore | None, metadata: Metadata | None) -> Identity:
    """Who a call with ``metadata`` comes from (keys are off when ``store`` is None).

    With keys, the ``authorization`` key decides; a service or admin key may name the tenant
    it acts for in ``quorum-tenant``, a client key only its own. Without keys, every caller
    is an admin of the tenant in ``quorum-tenant`` (``default`` without it)."""
    named = ""
    for k, v in metadata or ():
        if k == auth.TENANT_METADATA:
            named = ids.tenant(str(v), field=auth.TENANT_METADATA, required=True)
    if store is None:
        return Identity(named or ids.DEFAULT_TENANT, Role.ADMIN)
    token = auth.bearer(metadata)
    if token is None:
        raise Unauthenticated(
            "an API key is required: send 'authorization: Bearer <key>'", reason="NO_CREDENTIALS"
        )
    return store.verify(token).acting_for(named)


@dataclass(frozen=True)
class _Undecodable:
    """What the request deserializer hands on instead of raising (gRPC would answer UNKNOWN
    with the exception's text and log its traceback)."""

    method: str
    problem: str

    def error(self) -> InvalidArgument:
        return InvalidArgument(
            "the request could not be decoded as the method's message (malformed protobuf, "
            "or a string that is not valid UTF-8)",
            reason="MALFORMED_REQUEST",
            metadata={"method": self.method[:128]},
        )


class EdgeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """For every unary and server-streaming call: a request that does not decode ends
    INVALID_ARGUMENT (MALFORMED_REQUEST); then, but for health and reflection, the caller is
    identified before the handler runs, its identity made :func:`quorum.auth.current` for
    the handler, and a call without a valid key ends UNAUTHENTICATED. Each method's guarded
    handler is made once, on its first call."""

    def __init__(self, store: KeyStore | None) -> None:
        self._store = store
        self._handlers = HandlerCache()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        return self._handlers.get(handler_call_details.method or "", handler, self._guard)

    def _guard(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is None and handler.unary_stream is None:
            return handler  # reflection's bidirectional stream
        store, open_ = self._store, method.startswith(OPEN_PREFIXES)
        decode = handler.request_deserializer

        def safe_decode(data: bytes) -> Any:
            try:
                return decode(data) if decode is not None else data
            except Exception as e:  # DecodeError, UnicodeDecodeError, anything a parser raises
                return _Undecodable(method, type(e).__name__)

        async def enter(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if isinstance(request, _Undecodable):
                log.info("%s: undecodable request (%s)", method[:128], request.problem)
                await abort(context, request.error())
            if open_:
                return
            try:
                who = identify(store, context.invocation_metadata())  # type: ignore[arg-type]
            except QuorumError as e:
                await abort(context, e)
            # each call runs in a task of its own: the identity ends with it
            auth.set_current(who)

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await enter(request, context)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=safe_decode,
                response_serializer=handler.response_serializer,
            )
        inner_stream = handler.unary_stream

        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await enter(request, context)
            async for item in inner_stream(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=safe_decode,
            response_serializer=handler.response_serializer,
        )


class _Bearer(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``authorization: Bearer <token>`` to every call on a channel."""

    def __init__(self, token: str) -> None:
        self._entry = (auth.AUTHORIZATION, f"Bearer {token}")

    def _with_key(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self._entry)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_key(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_key(details), request)


def client_interceptors(token: str | None) -> list[Any]:
    return [] if token is None else [_Bearer(token)]


def server_interceptors(settings: auth.AuthSettings) -> list[Any]:
    """The interceptors every Quorum server runs: who is calling (keys on or off)."""
    store = None
    if settings.enabled:
        store = KeyStore(settings.keys_file)
        store.all()  # a broken keys file stops the start, saying so
    return [EdgeInterceptor(store)]
