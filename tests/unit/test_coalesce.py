"""Concurrent calls to one model merged into one: results split back, errors shared."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from quorum.backends.coalesce import Coalescer


class Model:
    """Stands in for a Triton model: scores a text by its length, records each batch."""

    def __init__(self, delay: float = 0.02, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.delay, self.fail = delay, fail

    async def __call__(
        self, texts: Sequence[str], timeout_s: float, headers: Mapping[str, str] | None
    ) -> list[float]:
        self.batches.append(list(texts))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model down")
        return [float(len(t)) for t in texts]


async def test_a_lone_call_goes_at_once_and_concurrent_ones_are_merged():
    model, co = Model(), Coalescer[str, float](max_in_flight=1)
    assert await co.submit("m", model, ["a"], 1.0) == [1.0]
    texts = [["x" * i] for i in range(1, 11)]
    results = await asyncio.gather(*(co.submit("m", model, t, 1.0) for t in texts))
    assert results == [[float(i)] for i in range(1, 11)]
    # the first went alone; the nine queued behind it went together
    assert [len(b) for b in model.batches] == [1, 1, 9]


async def test_batches_respect_the_size_limit_and_keys_stay_apart():
    model, co = Model(), Coalescer[str, float](max_in_flight=1, max_batch=4)
    await asyncio.gather(*(co.submit("m", model, ["t"], 1.0) for _ in range(9)))
    assert all(len(b) <= 4 for b in model.batches) and sum(map(len, model.batches)) == 9
    other = Model()
    await asyncio.gather(co.submit("m", model, ["a"], 1.0), co.submit("n", other, ["b"], 1.0))
    assert other.batches == [["b"]]


async def test_an_error_reaches_every_caller_in_the_batch():
    model, co = Model(fail=True), Coalescer[str, float](max_in_flight=1)
    results = await asyncio.gather(
        *(co.submit("m", model, ["t"], 1.0) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_a_caller_that_gives_up_does_not_hurt_the_others():
    model, co = Model(delay=0.05), Coalescer[str, float](max_in_flight=1)
    first = asyncio.create_task(co.submit("m", model, ["aa"], 1.0))
    await asyncio.sleep(0)
    quitter = asyncio.create_task(co.submit("m", model, ["bbb"], 1.0))
    stayer = asyncio.create_task(co.submit("m", model, ["c"], 1.0))
    await asyncio.sleep(0.01)
    quitter.cancel()
    assert await first == [2.0] and await stayer == [1.0]
    with pytest.raises(asyncio.CancelledError):
        await quitter
