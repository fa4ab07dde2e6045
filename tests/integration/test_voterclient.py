"""The router's voter client coalesces concurrent moderations into ModerateBatch calls: over
real gRPC, against a stand-in voter that records each call it gets and answers as the voter
does (its verdicts, per-text errors, a batch refused whole). What each moderation gets must
not depend on the texts it travelled with; the real voter's side is in
test_voter_tenants.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from quorum.errors import DeadlineExceeded, InvalidArgument, QuorumError, Unavailable
from quorum.grpcerrors import abort, rpc_status_of
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc
from services.router.voterclient import VoterClient

#: a text holding it takes this long to judge
SLOW_S = 0.3


def _judge(text: str, request_id: str) -> voter_pb2.ModerateResponse | QuorumError:
    """The stand-in's verdict: "bad" is unsafe, "outage" has no quorum."""
    if "outage" in text:
        return Unavailable("too few judges answered", reason="NO_QUORUM")
    return voter_pb2.ModerateResponse(request_id=request_id, is_safe="bad" not in text, quorum=True)


class StandInVoter(voter_pb2_grpc.VoterServiceServicer):
    """Records each call: ("one", tenant, [(text, id)]) or ("batch", tenant, [(text, id)...]).
    A text holding "toolong" is refused, a batch holding one refused whole, as the voter does
    (INVALID_ARGUMENT); a text holding "slow" takes SLOW_S."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[tuple[str, str]]]] = []

    async def _wait(self, texts: list[str]) -> None:
        await asyncio.sleep(SLOW_S if any("slow" in t for t in texts) else 0.05)

    async def Moderate(self, request: Any, context: Any) -> voter_pb2.ModerateResponse:
        self.calls.append(("one", request.tenant, [(request.text, request.request_id)]))
        await self._wait([request.text])
        got = _judge(request.text, request.request_id)
        if "toolong" in request.text:
            got = InvalidArgument("text is too long", reason="TEXT_TOO_LONG")
        if isinstance(got, QuorumError):
            await abort(context, got)
        return got

    async def ModerateBatch(self, request: Any, context: Any) -> voter_pb2.ModerateBatchResponse:
        items = list(zip(request.texts, request.request_ids, strict=True))
        self.calls.append(("batch", request.tenant, items))
        if any("toolong" in t for t in request.texts):
            await abort(context, InvalidArgument("texts[1] is too long", reason="TEXT_TOO_LONG"))
        await self._wait(list(request.texts))
        results = []
        for text, request_id in items:
            got = _judge(text, request_id)
            if isinstance(got, QuorumError):
                results.append(voter_pb2.ModerateBatchResult(error=rpc_status_of(got)))
            else:
                results.append(voter_pb2.ModerateBatchResult(moderated=got))
        return voter_pb2.ModerateBatchResponse(results=results)


@pytest_asyncio.fixture
async def voter() -> AsyncIterator[tuple[StandInVoter, grpc.aio.Channel]]:
    servicer = StandInVoter()
    server = grpc.aio.server()
    voter_pb2_grpc.add_VoterServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, channel
    await server.stop(None)


async def _moderate(client: VoterClient, text: str, request_id: str, tenant: str = "acme"):
    return await client.moderate(text, request_id, tenant=tenant, timeout_s=5)


async def _slow_call(client: VoterClient) -> asyncio.Task[voter_pb2.ModerateResponse]:
    """A moderation (request "r0") that takes SLOW_S, once it is with the voter."""
    slow = asyncio.create_task(client.moderate("slow one", "r0", tenant="acme", timeout_s=5))
    await asyncio.sleep(0.02)
    return slow


async def test_a_lone_moderation_goes_at_once_and_concurrent_ones_go_together(voter):
    servicer, channel = voter
    client = VoterClient(channel, batch=64, in_flight=1)
    alone = await _moderate(client, "hello", "r0:input")
    assert alone.request_id == "r0:input" and alone.is_safe
    assert servicer.calls == [("one", "acme", [("hello", "r0:input")])]
    servicer.calls.clear()
    texts = [f"text {i}" + (" bad" if i % 3 == 0 else "") for i in range(10)]
    got = await asyncio.gather(*(_moderate(client, t, f"r{i}:input") for i, t in enumerate(texts)))
    # each gets its own verdict under its own id, whatever it travelled with
    assert [(g.request_id, g.is_safe) for g in got] == [
        (f"r{i}:input", i % 3 != 0) for i in range(10)
    ]
    # the first went alone; the nine that queued behind it went as one batch, with their ids
    assert [(kind, len(items)) for kind, _, items in servicer.calls] == [("one", 1), ("batch", 9)]
    assert servicer.calls[1][2] == [(texts[i], f"r{i}:input") for i in range(1, 10)]


async def test_tenants_never_share_a_batch_and_batches_keep_to_their_size(voter):
    servicer, channel = voter
    client = VoterClient(channel, batch=4, in_flight=1)
    jobs = [
        _moderate(client, f"text {i}", f"r{i}", tenant="acme" if i % 2 else "globex")
        for i in range(14)
    ]
    await asyncio.gather(*jobs)
    for _, tenant, items in servicer.calls:
        assert len(items) <= 4
        assert {int(rid[1:]) % 2 for _, rid in items} == {1 if tenant == "acme" else 0}
    assert sum(len(items) for *_, items in servicer.calls) == 14


async def test_a_text_that_fails_in_a_batch_fails_alone(voter):
    servicer, channel = voter
    client = VoterClient(channel, in_flight=1)
    texts = ["first", "fine", "outage here", "also fine"]
    got = await asyncio.gather(
        *(_moderate(client, t, f"r{i}") for i, t in enumerate(texts)), return_exceptions=True
    )
    assert servicer.calls[1][0] == "batch"
    assert isinstance(got[2], Unavailable) and got[2].reason == "NO_QUORUM"
    assert [g.request_id for i, g in enumerate(got) if i != 2] == ["r0", "r1", "r3"]


async def test_a_batch_refused_whole_is_sent_again_text_by_text(voter):
    servicer, channel = voter
    client = VoterClient(channel, in_flight=1)
    texts = ["first", "fine", "toolong text", "also fine"]
    got = await asyncio.gather(
        *(_moderate(client, t, f"r{i}") for i, t in enumerate(texts)), return_exceptions=True
    )
    # only the bad text fails, with the error Moderate gives it
    assert isinstance(got[2], InvalidArgument) and got[2].reason == "TEXT_TOO_LONG"
    assert [g.request_id for i, g in enumerate(got) if i != 2] == ["r0", "r1", "r3"]
    kinds = [kind for kind, *_ in servicer.calls]
    assert kinds == ["one", "batch", "one", "one", "one"]


async def test_a_moderation_gives_up_at_its_own_deadline(voter):
    servicer, channel = voter
    client = VoterClient(channel, in_flight=1)
    first = await _slow_call(client)
    start = time.monotonic()
    # queued behind the slow call, it runs out of time before its turn
    with pytest.raises(DeadlineExceeded):
        await client.moderate("quick", "r1", tenant="acme", timeout_s=0.1)
    assert time.monotonic() - start < SLOW_S
    assert (await first).request_id == "r0"
    # it was never sent: nobody waited for it any more when its turn came
    assert [items for *_, items in servicer.calls] == [[("slow one", "r0")]]


async def test_a_slow_call_holds_up_nobody_while_another_is_free(voter):
    servicer, channel = voter
    client = VoterClient(channel, in_flight=2)
    slow = await _slow_call(client)
    start = time.monotonic()
    got = await asyncio.gather(*(_moderate(client, f"t{i}", f"r{i}") for i in range(1, 6)))
    assert time.monotonic() - start < SLOW_S  # the second call went while the slow one ran
    assert [g.request_id for g in got] == [f"r{i}" for i in range(1, 6)]
    assert (await slow).request_id == "r0"
    # the slow one and the first quick one went alone, the four behind it together
    assert [(kind, len(items)) for kind, _, items in servicer.calls] == [
        ("one", 1),
        ("one", 1),
        ("batch", 4),
    ]


async def test_with_batching_off_each_moderation_is_its_own_call(voter):
    servicer, channel = voter
    client = VoterClient(channel, batch=0)
    await asyncio.gather(*(_moderate(client, f"t{i}", f"r{i}") for i in range(5)))
    assert [kind for kind, *_ in servicer.calls] == ["one"] * 5
