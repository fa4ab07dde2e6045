"""The one exception tree of Quorum.

Domain code and adapters raise these; :mod:`quorum.grpcerrors` maps each to a gRPC status
code plus a ``google.rpc.ErrorInfo`` (``reason`` in UPPER_SNAKE, domain ``quorum``).

    QuorumError                      base; ``reason`` and ``metadata`` travel to the client
    ├── InvalidArgument              bad input (INVALID_ARGUMENT)
    │   └── ContentBlocked           moderation refused the text (INVALID_ARGUMENT)
    ├── NotFound                     unknown model, record, ... (NOT_FOUND)
    ├── AlreadyExists                an id already names something else (ALREADY_EXISTS)
    ├── FailedPrecondition           wrong state, e.g. model not configured (FAILED_PRECONDITION)
    ├── ResourceExhausted            budget or quota, provider 429 (RESOURCE_EXHAUSTED)
    ├── Unauthenticated              missing/invalid credentials (UNAUTHENTICATED)
    ├── PermissionDenied             credentials refused (PERMISSION_DENIED)
    ├── Unavailable                  transient: dependency down, provider 5xx (UNAVAILABLE)
    ├── DeadlineExceeded             out of time (DEADLINE_EXCEEDED)
    └── Internal                     a bug or an unparseable answer (INTERNAL)

Messages are written by us. A provider's raw body or headers never go into a message: they
may hold secrets.
"""

from __future__ import annotations

from collections.abc import Mapping


class QuorumError(Exception):
    """Base of every error Quorum raises on purpose."""

    default_reason = "QUORUM_ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(QuorumError):
    default_reason = "INVALID_ARGUMENT"


class ContentBlocked(InvalidArgument):
    default_reason = "CONTENT_BLOCKED"


class NotFound(QuorumError):
    default_reason = "NOT_FOUND"


class AlreadyExists(QuorumError):
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(QuorumError):
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(QuorumError):
    """Quota or budget. ``retry_after`` (seconds) is set when the source said when to retry."""

    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


class Unauthenticated(QuorumError):
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(QuorumError):
    default_reason = "PERMISSION_DENIED"


class Unavailable(QuorumError):
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(QuorumError):
    default_reason = "DEADLINE_EXCEEDED"


class Internal(QuorumError):
    default_reason = "INTERNAL"


def is_retryable(err: BaseException) -> bool:
    """Transient failures worth another attempt (same or another model)."""
    return isinstance(err, Unavailable | ResourceExhausted | DeadlineExceeded)
