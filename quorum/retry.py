"""Retry policy: which failures to retry, how long to wait, never past the deadline."""

from __future__ import annotations

import random
from dataclasses import dataclass

from quorum.errors import QuorumError, ResourceExhausted, Unavailable


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff_base_s: float = 0.2
    backoff_max_s: float = 5.0

    def delay(self, attempt: int, err: QuorumError, rand: float) -> float:
        """Seconds to wait after failed ``attempt`` (1-based): the provider's Retry-After when
        it gave one, else full-jitter exponential backoff (``rand`` in [0, 1))."""
        if isinstance(err, ResourceExhausted) and err.retry_after is not None:
            return max(float(err.retry_after), 0.0)
        cap = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempt - 1))
        return cap * rand

    def next_wait(
        self, err: QuorumError, attempt: int, remaining_s: float, rand: float | None = None
    ) -> float | None:
        """After failed ``attempt`` (1-based) with ``remaining_s`` of the deadline left: the
        seconds to wait before trying the same call again, or None when it is not worth it
        (not :func:`retryable`, no attempts left, or the wait would not fit the deadline)."""
        if not retryable(err) or attempt >= self.max_attempts:
            return None
        wait = self.delay(attempt, err, random.random() if rand is None else rand)
        return wait if wait < remaining_s else None


def retryable(err: QuorumError) -> bool:
    """Worth another try of the same model: transient unavailability and rate limits.
    Timeouts are not retried on the same model (the deadline is shared)."""
    return isinstance(err, Unavailable | ResourceExhausted)
