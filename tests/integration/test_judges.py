"""LLM judges over real HTTP against the provider simulator, in each JSON mode; every judge
call is billed in the voter's usage journal (the cost service is down here, so the records
wait there)."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import grpc
import pytest

from quorum.backends.openai import OpenAIChat
from quorum.backends.transport import ProviderClient
from quorum.cost.v1 import cost_pb2_grpc
from quorum.errors import Unavailable
from quorum.registry import load_registry
from quorum.simulator import Fault
from quorum.usage import Meter, replay
from services.voter.judges import LLMJudge, response_format
from services.voter.voting import Status


@pytest.fixture
async def meter(tmp_path):
    async with grpc.aio.insecure_channel("127.0.0.1:9") as ch:  # no cost service there
        m = Meter(cost_pb2_grpc.CostServiceStub(ch), tmp_path / "voter.journal", source="voter")
        await m.start()
        yield m
        await m.stop(drain_s=0)


def judge_for(url: str, json_mode: str, client: ProviderClient, meter: Meter) -> LLMJudge:
    reg = load_registry(
        {
            "providers": {"p": {"base_url": url, "json_mode": json_mode}},
            "models": {"j": {"provider": "p", "moderation": {"categories": ["hate", "violence"]}}},
        }
    )
    return LLMJudge(reg.get("j"), OpenAIChat(client, {}), meter)


@pytest.mark.parametrize("mode", ["json_schema", "json_object"])
async def test_judge_votes_in_each_json_mode(sim, mode, meter):
    async with aclosing(ProviderClient(max_connections=10)) as client:
        judge = judge_for(sim.url, mode, client, meter)
        result = await judge.judge(
            "I will kill you, you idiot", timeout_s=5, usage_key="m1", tenant="acme"
        )
    assert result.vote.status is Status.OK and not result.vote.is_safe
    # only the categories the registry says this model judges are kept
    assert set(result.vote.categories) <= {"hate", "violence"}
    assert result.usage.input_tokens > 0
    sent = sim.requests[-1].body["response_format"]
    assert sent == response_format(mode)
    await meter.sync()
    (rec,) = replay(meter.path)[1].values()
    assert (rec.request_id, rec.model, rec.source, rec.tenant) == ("m1", "j", "voter", "acme")
    assert (rec.input_tokens, rec.output_tokens) == (
        result.usage.input_tokens,
        result.usage.output_tokens,
    )
    assert not rec.estimated


async def test_unparseable_verdict_is_an_error_not_a_vote_but_is_billed(sim, meter):
    sim.add_fault(Fault(kind="malformed_json"))
    async with aclosing(ProviderClient(max_connections=10)) as client:
        with pytest.raises(Unavailable) as e:
            await judge_for(sim.url, "json_schema", client, meter).judge(
                "hello", timeout_s=5, usage_key="m2", tenant="acme"
            )
    assert e.value.reason == "UNPARSEABLE_VERDICT"
    await meter.sync()
    assert list(replay(meter.path)[1]) == ["m2"]  # the provider answered: it bills


async def test_a_judge_that_errors_bills_nothing_and_one_that_hangs_bills_an_estimate(sim, meter):
    sim.add_fault(Fault(kind="status", status=500, times=1))
    async with aclosing(ProviderClient(max_connections=10)) as client:
        judge = judge_for(sim.url, "json_schema", client, meter)
        with pytest.raises(Unavailable):
            await judge.judge("hello", timeout_s=5, usage_key="err", tenant="acme")
        sim.add_fault(Fault(kind="hang", seconds=2, times=1))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):  # the voter's per-judge timeout cancels the call
                await judge.judge("hello there", timeout_s=5, usage_key="slow", tenant="acme")
    await meter.sync()
    intents, pending = replay(meter.path)
    assert not intents and list(pending) == ["slow"]
    assert pending["slow"].estimated and pending["slow"].input_tokens > 0
    assert pending["slow"].output_tokens == 0


def test_no_json_mode_sends_no_response_format():
    assert response_format("none") is None
