"""Concurrent requests to one Triton model coalesced into one inference.

Under load the voter asks each local model about many texts at once, one gRPC call per
text. :class:`Coalescer` sends the first call at once and, while at most ``max_in_flight``
calls to that model are running, queues the next ones; when one returns, everything queued
(up to ``max_batch`` texts) goes as one call. One request alone is never delayed, and under
load Triton gets a few large requests instead of many small ones, which costs the voter far
less CPU per text (the dynamic batcher in Triton then sees whole batches). One call in flight
per model is the default: the voter is busier than Triton, so a second call in flight only
halves the batches (measured: more of the voter's CPU a text at 32 texts in flight, and no
better latency at 4).

Every request gets a ``triton queue <model>`` span; the merged call (``triton infer``, and
Triton's own spans) runs in the context of the first request in it, so it belongs to that
request's trace. A caller that gives up (its timeout, a cancel) simply stops waiting; the
merged call is not cancelled for the others. :class:`Coalescer` is pure asyncio, the call
injected; :class:`CoalescingScorer` puts it in front of a TritonScorer.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from opentelemetry import trace
from tritonclient.grpc.aio import InferenceServerClient

from quorum.backends.triton import TritonScorer

_tracer = trace.get_tracer(__name__)

T = TypeVar("T")
#: what one result is for: a text, or whatever a caller batches (the voter's client: a text
#: and its request id)
I = TypeVar("I")  # noqa: E741

#: (texts, timeout_s, headers) -> one result per text
Call = Callable[[Sequence[I], float, Mapping[str, str] | None], Awaitable[list[T]]]


@dataclass
class _Item(Generic[I, T]):
    texts: Sequence[I]
    deadline: float
    headers: Mapping[str, str] | None
    future: asyncio.Future[list[T]]
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class Coalescer(Generic[I, T]):
    """Merges the concurrent calls under one key (see the module docstring): ``I`` is what is
    sent (a text), ``T`` what comes back for each."""

    def __init__(self, *, max_in_flight: int = 1, max_batch: int = 64) -> None:
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._queues: dict[Hashable, deque[_Item[I, T]]] = {}
        self._in_flight: dict[Hashable, int] = {}

    async def submit(
        self,
        key: Hashable,
        call: Call[I, T],
        texts: Sequence[I],
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> list[T]:
        """``call`` for ``texts``, merged with the other texts queued under ``key``."""
        if len(texts) >= self._max_batch:
            return await call(texts, timeout_s, headers)  # already a batch of its own
        loop = asyncio.get_running_loop()
        item: _Item[I, T] = _Item(
            texts, time.monotonic() + timeout_s, headers, loop.create_future()
        )
        self._queues.setdefault(key, deque()).append(item)
        if self._in_flight.get(key, 0) < self._max_in_flight:
            self._launch(key, call)
        return await item.future  # a caller that gives up cancels only its own share

    def _launch(self, key: Hashable, call: Call[I, T]) -> None:
        queue = self._queues.get(key)
        items: list[_Item[I, T]] = []
        size = 0
        while queue and (not items or size + len(queue[0].texts) <= self._max_batch):
            item = queue.popleft()
            if item.future.done():  # nobody waits for it any more
                continue
            items.append(item)
            size += len(item.texts)
        if not items:
            return
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        asyncio.get_running_loop().create_task(
            self._run(key, call, items), context=items[0].context
        )

    async def _run(self, key: Hashable, call: Call[I, T], items: list[_Item[I, T]]) -> None:
        try:
            texts = [t for item in items for t in item.texts]
            timeout_s = max(item.deadline for item in items) - time.monotonic()
            results = await call(texts, max(timeout_s, 0.001), items[0].headers)
            start = 0
            for item in items:
                end = start + len(item.texts)
                if not item.future.done():
                    item.future.set_result(results[start:end])
                start = end
        except Exception as exc:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
        finally:
            self._in_flight[key] -= 1
            if self._queues.get(key):
                self._launch(key, call)


class CoalescingScorer(TritonScorer):
    """A :class:`~quorum.backends.triton.TritonScorer` whose concurrent calls to one model
    (asking for the same outputs) are coalesced (see the module docstring). Both ``score``
    and ``score_categories`` go through the one ``_score`` it overrides."""

    def __init__(
        self,
        client: InferenceServerClient,
        coalescer: Coalescer[str, tuple[float, ...]] | None = None,
    ):
        super().__init__(client)
        self._rows: Coalescer[str, tuple[float, ...]] = coalescer or Coalescer()

    async def _score(
        self,
        model: str,
        texts: Sequence[str],
        outputs: tuple[str, ...],
        timeout_s: float,
        headers: Mapping[str, str] | None,
    ) -> list[list[float]]:
        if isinstance(texts, str) or any(not isinstance(t, str) for t in texts):
            return await super()._score(model, texts, outputs, timeout_s, headers)  # refused alone
        base = super()._score

        async def call(
            batch: Sequence[str], t: float, h: Mapping[str, str] | None
        ) -> list[tuple[float, ...]]:
            columns = await base(model, batch, outputs, t, h)
            return list(zip(*columns, strict=True))  # one row per text

        with _tracer.start_as_current_span(
            f"triton queue {model}", kind=trace.SpanKind.INTERNAL
        ) as span:
            span.set_attribute("quorum.triton.texts", len(texts))
            rows = await self._rows.submit((model, outputs), call, texts, timeout_s, headers)
        return [[row[i] for row in rows] for i in range(len(outputs))]
