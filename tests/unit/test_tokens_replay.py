"""Token estimates (a real BPE tokenizer) and the request-id store of the router."""

from __future__ import annotations

import asyncio

import pytest

from quorum import tokens, usage
from quorum.backends.types import ChatMessage
from quorum.errors import AlreadyExists, DeadlineExceeded, Unavailable
from services.router.replay import Replays, Ticket


def test_tokens_are_counted_with_a_real_tokenizer():
    assert tokens.count("") == 0
    assert tokens.count("hello") == 1
    assert tokens.count("Hello world, this is a test.") == 8  # o200k_base
    msgs = [ChatMessage("system", "be brief"), ChatMessage("user", "hello")]
    assert tokens.count_messages(msgs) == 2 + 1 + 2 * tokens.TOKENS_PER_MESSAGE + 3


def test_the_cheap_figure_is_a_token_per_four_bytes():
    msgs = [ChatMessage("user", "abcdefgh"), ChatMessage("user", "é")]  # 8 and 2 bytes
    assert tokens.approx_messages(msgs) == 2 + 1 + 2 * tokens.TOKENS_PER_MESSAGE + 3


def test_what_a_failed_call_bills():
    sent = {"http_status": "200"}
    assert usage.may_be_billed(None)  # cancelled: the provider had the request
    assert usage.may_be_billed(asyncio.CancelledError())
    assert usage.may_be_billed(DeadlineExceeded("slow", reason="PROVIDER_TIMEOUT"))
    assert usage.may_be_billed(Unavailable("cut", reason="STREAM_INTERRUPTED", metadata=sent))
    assert not usage.may_be_billed(Unavailable("5xx", metadata={"http_status": "503"}))
    assert not usage.may_be_billed(Unavailable("down", reason="PROVIDER_UNREACHABLE"))
    assert not usage.may_be_billed(DeadlineExceeded("none left", reason="NO_TIME_LEFT"))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_one_id_one_request():
    store: Replays[str] = Replays(ttl_s=60, max_entries=10)
    ticket = await store.acquire("a", "fp1", 1)
    assert isinstance(ticket, Ticket)
    with pytest.raises(AlreadyExists) as e:
        await store.acquire("a", "fp2", 1)  # in flight: another request is refused at once
    assert e.value.reason == "REQUEST_ID_REUSED"
    ticket.store("answer")
    assert await store.acquire("a", "fp1", 1) == "answer"
    with pytest.raises(AlreadyExists):
        await store.acquire("a", "fp2", 1)


async def test_a_duplicate_waits_for_the_call_in_flight():
    store: Replays[str] = Replays(ttl_s=60, max_entries=10)
    ticket = await store.acquire("a", "fp", 1)
    assert isinstance(ticket, Ticket)
    waiter = asyncio.create_task(store.acquire("a", "fp", 5))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    ticket.store("done")
    assert await waiter == "done"


async def test_a_dropped_call_hands_the_id_to_the_waiter():
    store: Replays[str] = Replays(ttl_s=60, max_entries=10)
    ticket = await store.acquire("a", "fp", 1)
    assert isinstance(ticket, Ticket)
    waiter = asyncio.create_task(store.acquire("a", "fp", 5))
    await asyncio.sleep(0.01)
    ticket.drop()
    assert isinstance(await waiter, Ticket)  # the waiter makes the call now


async def test_waiting_is_bounded_by_the_deadline():
    store: Replays[str] = Replays(ttl_s=60, max_entries=10)
    await store.acquire("a", "fp", 1)
    with pytest.raises(DeadlineExceeded) as e:
        await store.acquire("a", "fp", 0.05)
    assert e.value.reason == "REQUEST_IN_PROGRESS"


async def test_results_expire_and_the_oldest_go_first():
    clock = Clock()
    store: Replays[str] = Replays(ttl_s=10, max_entries=2, clock=clock)
    for rid in ("a", "b", "c"):
        t = await store.acquire(rid, "fp", 1)
        assert isinstance(t, Ticket)
        t.store(rid)
    assert len(store) == 2
    assert isinstance(await store.acquire("a", "other", 1), Ticket)  # "a" was evicted
    clock.now = 11
    assert isinstance(await store.acquire("b", "other", 1), Ticket)  # "b" expired
