"""TritonJudge: votes per category with the cut-offs from its registry entry (no Triton here:
a recording stand-in for TritonScorer; tests/triton runs the real server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from quorum.registry import load_registry
from services.voter.judges import TritonJudge
from services.voter.voting import Status


class FakeScorer:
    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores
        self.calls: list[tuple[str, str, tuple[str, ...]]] = []

    async def score(self, model: str, texts: Sequence[str], *, timeout_s: float) -> list[float]:
        self.calls.append(("score", model, ()))
        return [self.scores["SCORE"] for _ in texts]

    async def score_categories(
        self, model: str, texts: Sequence[str], categories: Sequence[str], *, timeout_s: float
    ) -> list[dict[str, float]]:
        self.calls.append(("score_categories", model, tuple(categories)))
        return [{c: self.scores[c] for c in categories} for _ in texts]


def _spec(**entry: Any) -> Any:
    return load_registry({"models": {"j": {"triton_model": "m", **entry}}}).get("j")


PER_CATEGORY = {
    "triton_outputs": "per_category",
    "moderation": {
        "categories": ["violence", "spam", "self_harm"],
        "threshold": {"violence": 0.3, "spam": 0.7, "self_harm": 0.2},
    },
}


async def _vote(spec: Any, scorer: FakeScorer) -> Any:
    judge = TritonJudge(spec, scorer)  # type: ignore[arg-type]
    result = await judge.judge("some text", timeout_s=1.0, usage_key="k", tenant="acme")
    return result.vote


async def test_each_category_has_its_own_cutoff() -> None:
    # violence 0.35 is over its 0.3 cut-off although spam 0.65 (under 0.7) is higher
    scorer = FakeScorer({"violence": 0.35, "spam": 0.65, "self_harm": 0.1})
    vote = await _vote(_spec(**PER_CATEGORY), scorer)
    assert vote.status is Status.OK
    assert not vote.is_safe
    assert vote.confidence == pytest.approx(0.35)  # the flagged category's score
    assert dict(vote.categories) == {"violence": 0.35, "spam": 0.65, "self_harm": 0.1}
    assert scorer.calls == [("score_categories", "m", ("violence", "spam", "self_harm"))]


async def test_safe_when_no_category_reaches_its_cutoff() -> None:
    scorer = FakeScorer({"violence": 0.29, "spam": 0.69, "self_harm": 0.19})
    vote = await _vote(_spec(**PER_CATEGORY), scorer)
    assert vote.is_safe
    assert vote.confidence == pytest.approx(1 - 0.69)  # its least sure category


async def test_score_exactly_at_cutoff_is_unsafe() -> None:
    scorer = FakeScorer({"violence": 0.0, "spam": 0.0, "self_harm": 0.2})
    vote = await _vote(_spec(**PER_CATEGORY), scorer)
    assert not vote.is_safe


async def test_single_score_model_reports_it_for_every_category() -> None:
    spec = _spec(moderation={"categories": ["harassment", "hate"], "threshold": 0.5})
    scorer = FakeScorer({"SCORE": 0.8})
    vote = await _vote(spec, scorer)
    assert not vote.is_safe and vote.confidence == pytest.approx(0.8)
    assert dict(vote.categories) == {"harassment": 0.8, "hate": 0.8}
    assert scorer.calls == [("score", "m", ())]
    vote = await _vote(spec, FakeScorer({"SCORE": 0.1}))
    assert vote.is_safe and vote.confidence == pytest.approx(0.9)


def test_judge_needs_a_triton_backend() -> None:
    spec = load_registry(
        {
            "providers": {"p": {"base_url": "http://x"}},
            "models": {"j": {"provider": "p", "moderation": {"categories": ["hate"]}}},
        }
    ).get("j")
    with pytest.raises(TypeError):
        TritonJudge(spec, FakeScorer({}))  # type: ignore[arg-type]
