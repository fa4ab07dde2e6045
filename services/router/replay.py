"""Request ids the client chose: a retry is answered from the first call, never called again.

A client that gives a ``request_id`` and sends the same request again (a retry after a
timeout, a lost connection, a restart of its own) gets the first call's result without a
second model call, and without a second bill. The same id with a *different* request is
refused before any model is called: one id names one request.

:class:`Replays` keeps, per id, the request's fingerprint and either the call in flight (a
concurrent duplicate waits for it) or its result. A call that ends without a billed answer
(every provider failed, the input was blocked, the client cancelled a stream) leaves nothing
behind, so a retry makes a new call. Entries live ``ttl_s`` and at most ``max_entries`` are
kept (the oldest results go first); ids live in this router process only.

Pure asyncio, no gRPC; the stored value is opaque to this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from quorum.errors import AlreadyExists, DeadlineExceeded

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    fingerprint: str
    expires: float
    result: T | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)


class Ticket(Generic[T]):
    """The right to make the call for an id: end it with :meth:`store` or :meth:`drop`."""

    def __init__(self, owner: Replays[T] | None, request_id: str, entry: _Entry[T] | None) -> None:
        self._owner = owner
        self._id = request_id
        self._entry = entry
        self._ended = owner is None or entry is None

    @classmethod
    def unkept(cls) -> Ticket[T]:
        """For an id nobody can send again (the router made it up): keeps nothing."""
        return cls(None, "", None)

    def store(self, result: T) -> None:
        """The call was made and billed: later requests with this id get ``result``."""
        if self._ended:
            return
        assert self._owner is not None and self._entry is not None
        self._ended = True
        self._entry.result = result
        self._entry.settled.set()
        self._owner._stored(self._id)

    def drop(self) -> None:
        """The call left no billed answer: forget the id (a retry calls again)."""
        if self._ended:
            return
        assert self._owner is not None and self._entry is not None
        self._ended = True
        if self._owner._entries.get(self._id) is self._entry:
            del self._owner._entries[self._id]
        self._entry.settled.set()


class Replays(Generic[T]):
    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def acquire(self, request_id: str, fingerprint: str, timeout_s: float) -> T | Ticket[T]:
        """The stored result for ``request_id``, or a :class:`Ticket` to make the call.

        Raises AlreadyExists (REQUEST_ID_REUSED) when the id belongs to another request, and
        DeadlineExceeded when the call in flight for the id does not end within
        ``timeout_s``."""
        deadline = self._clock() + timeout_s
        while True:
            entry = self._entries.get(request_id)
            if entry is not None and entry.expires <= self._clock():
                if entry.result is not None:
                    del self._entries[request_id]
                    entry = None
            if entry is None:
                entry = _Entry(fingerprint, self._clock() + self._ttl)
                self._entries[request_id] = entry
                return Ticket(self, request_id, entry)
            if entry.fingerprint != fingerprint:
                raise AlreadyExists(
                    f"request_id {request_id!r} was used for a different request; "
                    "give each request its own id",
                    reason="REQUEST_ID_REUSED",
                    metadata={"request_id": request_id, "field": "request_id"},
                )
            if entry.result is not None:
                self._entries.move_to_end(request_id)
                return entry.result
            left = deadline - self._clock()
            try:
                async with asyncio.timeout(max(left, 0.0)):
                    await entry.settled.wait()
            except TimeoutError:
                raise DeadlineExceeded(
                    f"the first call with request_id {request_id!r} is still running",
                    reason="REQUEST_IN_PROGRESS",
                    metadata={"request_id": request_id},
                ) from None
            # stored: the next turn returns it; dropped: the next turn makes the call

    def _stored(self, request_id: str) -> None:
        with contextlib.suppress(KeyError):
            self._entries.move_to_end(request_id)
        if len(self._entries) <= self._max:
            return
        now = self._clock()
        for rid in list(self._entries):
            if len(self._entries) <= self._max:
                break
            entry = self._entries[rid]
            if entry.result is not None or entry.expires <= now:
                del self._entries[rid]
