"""The one table from :mod:`quorum.errors` to gRPC status codes, both ways.

Servers call :func:`abort` (or use :func:`map_errors`) so every failure reaches the client
as a status code plus a ``google.rpc.Status`` carrying a ``google.rpc.ErrorInfo`` (reason in
UPPER_SNAKE, domain ``quorum``). Clients call :func:`from_rpc_error` to get the typed error
back, e.g. when the router relays a voter failure. A response that carries a status per item
(``RecordUsageBatch``) holds :func:`rpc_status_of` each failed item, read back with
:func:`from_rpc_status`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from quorum import errors

log = logging.getLogger(__name__)

DOMAIN = "quorum"

_TO_CODE: tuple[tuple[type[errors.QuorumError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Internal, grpc.StatusCode.INTERNAL),
)

_FROM_CODE: dict[grpc.StatusCode, type[errors.QuorumError]] = {code: cls for cls, code in _TO_CODE}
_FROM_CODE[grpc.StatusCode.CANCELLED] = errors.Unavailable
_FROM_CODE[grpc.StatusCode.ABORTED] = errors.Unavailable
_FROM_CODE[grpc.StatusCode.UNKNOWN] = errors.Internal
_FROM_CODE[grpc.StatusCode.UNIMPLEMENTED] = errors.Internal
_FROM_CODE[grpc.StatusCode.DATA_LOSS] = errors.Internal
_FROM_CODE[grpc.StatusCode.OUT_OF_RANGE] = errors.InvalidArgument


def status_code(err: errors.QuorumError) -> grpc.StatusCode:
    for cls, code in _TO_CODE:
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.INTERNAL


#: the most of an error's message, and of each metadata value, that goes on the wire: both may
#: quote what a client sent, and gRPC trailers are small (about 8 KB in all)
MAX_MESSAGE_CHARS = 1000
MAX_METADATA_CHARS = 200


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}... [{len(text) - limit + 40} more characters]"


def rpc_status_of(err: errors.QuorumError) -> status_pb2.Status:
    """``err`` as a ``google.rpc.Status``: its code, its message, an ErrorInfo (message and
    metadata values clipped)."""
    code = status_code(err)
    info = error_details_pb2.ErrorInfo(
        reason=err.reason,
        domain=DOMAIN,
        metadata={k[:64]: clip(v, MAX_METADATA_CHARS) for k, v in err.metadata.items()},
    )
    if isinstance(err, errors.ResourceExhausted) and err.retry_after is not None:
        info.metadata["retry_after_s"] = f"{err.retry_after:g}"
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(
        code=code.value[0], message=clip(err.message, MAX_MESSAGE_CHARS), details=[detail]
    )


def to_status(err: errors.QuorumError) -> grpc.Status:
    return rpc_status.to_status(rpc_status_of(err))


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: errors.QuorumError) -> NoReturn:
    # the server span says the call failed, with what status and why (a dashboard shows it)
    code = status_code(err)
    span = trace.get_current_span()
    span.set_status(Status(StatusCode.ERROR, f"{code.name}: {err.reason}"))
    span.set_attributes({"error.type": err.reason, "rpc.grpc.status_code": code.value[0]})
    await context.abort_with_status(to_status(err))
    raise AssertionError("unreachable")  # abort_with_status always raises


_CODES: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def from_rpc_error(err: grpc.aio.AioRpcError, *, service: str) -> errors.QuorumError:
    """The typed error a downstream call failed with, keeping its reason and metadata."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    details = status.details if status is not None else ()
    return _error(err.code(), err.details() or "", details, service=service)


def from_rpc_status(status: status_pb2.Status, *, service: str) -> errors.QuorumError:
    """The typed error a ``google.rpc.Status`` in a downstream answer holds (see
    :func:`rpc_status_of`); an unknown code is taken for ``UNKNOWN``."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return _error(code, status.message, status.details, service=service)


def _error(
    code: grpc.StatusCode, text: str, details: Sequence[any_pb2.Any], *, service: str
) -> errors.QuorumError:
    cls = _FROM_CODE.get(code, errors.Unavailable)
    reason: str | None = None
    metadata: dict[str, str] = {}
    for detail in details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) and not reason:
        reason = f"{service.upper()}_UNAVAILABLE"
    message = f"{service}: {text or code.name.lower()}"
    if cls is errors.ResourceExhausted:
        retry = metadata.get("retry_after_s")
        return errors.ResourceExhausted(
            message, reason=reason, metadata=metadata, retry_after=float(retry) if retry else None
        )
    return cls(message, reason=reason, metadata=metadata)


async def _abort_for(
    context: grpc.aio.ServicerContext[Any, Any], exc: Exception, where: str
) -> NoReturn:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, errors.QuorumError):
        await abort(context, exc)
    log.error("unhandled error in %s", where, exc_info=exc)
    await abort(context, errors.Internal("internal error", reason="INTERNAL"))


H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


def map_errors(handler: H) -> H:
    """Decorate a unary servicer method: QuorumError → its status; anything else → INTERNAL
    (logged with its traceback, never sent to the client)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await handler(self, request, context)
        except Exception as exc:
            await _abort_for(context, exc, handler.__qualname__)

    return wrapper  # type: ignore[return-value]


S = TypeVar("S", bound=Callable[..., AsyncIterator[Any]])


def map_stream_errors(handler: S) -> S:
    """Like :func:`map_errors`, for server-streaming methods (async generators)."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for item in handler(self, request, context):
                yield item
        except Exception as exc:
            await _abort_for(context, exc, handler.__qualname__)

    return wrapper  # type: ignore[return-value]
