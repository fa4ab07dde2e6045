"""LLM judges over real HTTP against the provider simulator, in each JSON mode."""

from __future__ import annotations

import httpx
import pytest

from quorum.backends.openai import OpenAIChat
from quorum.errors import Unavailable
from quorum.registry import load_registry
from quorum.simulator import Fault, ProviderSimulator
from services.voter.judges import LLMJudge, response_format
from services.voter.voting import Status


@pytest.fixture
def sim():
    with ProviderSimulator() as s:
        yield s


def judge_for(url: str, json_mode: str, client: httpx.AsyncClient) -> LLMJudge:
    reg = load_registry(
        {
            "providers": {"p": {"base_url": url, "json_mode": json_mode}},
            "models": {"j": {"provider": "p", "moderation": {"categories": ["hate", "violence"]}}},
        }
    )
    return LLMJudge(reg.get("j"), OpenAIChat(client, {}))


@pytest.mark.parametrize("mode", ["json_schema", "json_object"])
async def test_judge_votes_in_each_json_mode(sim, mode):
    async with httpx.AsyncClient() as client:
        judge = judge_for(sim.url, mode, client)
        result = await judge.judge("I will kill you, you idiot", timeout_s=5)
    assert result.vote.status is Status.OK and not result.vote.is_safe
    # only the categories the registry says this model judges are kept
    assert set(result.vote.categories) <= {"hate", "violence"}
    assert result.usage.input_tokens > 0
    sent = sim.requests[-1].body["response_format"]
    assert sent == response_format(mode)


async def test_unparseable_verdict_is_an_error_not_a_vote(sim):
    sim.add_fault(Fault(kind="malformed_json"))
    async with httpx.AsyncClient() as client:
        with pytest.raises(Unavailable) as e:
            await judge_for(sim.url, "json_schema", client).judge("hello", timeout_s=5)
    assert e.value.reason == "UNPARSEABLE_VERDICT"


def test_no_json_mode_sends_no_response_format():
    assert response_format("none") is None
