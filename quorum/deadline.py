"""Deadlines: one per request, derived from the caller's, split across downstream calls."""

from __future__ import annotations

import time
from dataclasses import dataclass

from quorum.errors import DeadlineExceeded


@dataclass(frozen=True)
class Deadline:
    """An absolute point on the monotonic clock."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def from_grpc(cls, time_remaining: float | None, *, default_s: float, max_s: float) -> Deadline:
        """From ``context.time_remaining()`` (None when the client set no deadline): the
        client's deadline clamped to ``max_s``, or ``default_s`` when it set none."""
        budget = default_s if time_remaining is None else min(time_remaining, max_s)
        return cls.after(max(budget, 0.0))

    def remaining(self) -> float:
        return max(self.at - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def timeout(self, *, share: float = 1.0, cap: float | None = None, floor: float = 0.0) -> float:
        """Seconds to give one downstream call: ``share`` of what is left, at most ``cap``,
        at least ``floor`` (but never past the deadline). Raises DeadlineExceeded when the
        deadline has passed."""
        left = self.remaining()
        if left <= 0.0:
            raise DeadlineExceeded("the request ran out of time", reason="DEADLINE_EXCEEDED")
        t = left * share
        if cap is not None:
            t = min(t, cap)
        return min(max(t, floor), left)
