"""TritonJudge: its cut-off and categories come from its registry entry (no Triton here)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import pytest

from quorum import config
from quorum.pricing import Price, Pricing
from quorum.registry import ModelSpec, Moderation, TritonBackend, load_registry
from services.voter.judges import TritonJudge
from services.voter.voting import Status


class FixedScorer:
    """Stands in for TritonScorer: every text gets ``score``; records the model asked."""

    def __init__(self, score: float) -> None:
        self.score_value = score
        self.models: list[str] = []

    async def score(self, model: str, texts: Sequence[str], *, timeout_s: float) -> list[float]:
        self.models.append(model)
        return [self.score_value for _ in texts]


def judge(name: str, score: float) -> tuple[TritonJudge, FixedScorer]:
    spec = load_registry(config.load(env={})).get(name)
    scorer = FixedScorer(score)
    return TritonJudge(spec, scorer), scorer  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "score", "safe"),
    [
        ("nsfw-check", 0.44, True),
        ("nsfw-check", 0.45, False),  # at the cut-off: unsafe
        ("nsfw-check", 0.47, False),
        ("profanity-check", 0.47, True),  # the same score, another model's cut-off
        ("profanity-check", 0.5, False),
    ],
)
async def test_vote_uses_the_registry_cut_off(name: str, score: float, safe: bool) -> None:
    j, _ = judge(name, score)
    result = await j.judge("some text", timeout_s=1, usage_key="k", tenant="acme")
    assert result.vote.status is Status.OK
    assert result.vote.is_safe is safe
    assert result.vote.confidence == pytest.approx(max(score, 1 - score))


async def test_scores_only_its_own_categories_on_its_own_model() -> None:
    nsfw, scorer = judge("nsfw-check", 0.9)
    result = await nsfw.judge("x", timeout_s=1, usage_key="k", tenant="acme")
    assert dict(result.vote.categories) == {"adult": pytest.approx(0.9)}
    assert scorer.models == ["nsfw_check"]
    profanity, scorer = judge("profanity-check", 0.9)
    result = await profanity.judge("x", timeout_s=1, usage_key="k", tenant="acme")
    assert set(result.vote.categories) == {"harassment"}
    assert scorer.models == ["profanity_check"]


def test_a_spec_without_a_cut_off_is_refused() -> None:
    spec = ModelSpec(
        name="m",
        backend=TritonBackend("m"),
        pricing=Pricing((Price(Decimal(0), Decimal(0)),)),
        moderation=Moderation(weight=1.0, categories=("adult",)),
    )
    with pytest.raises(ValueError, match="no moderation threshold"):
        TritonJudge(spec, FixedScorer(0.0))  # type: ignore[arg-type]
