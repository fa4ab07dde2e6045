"""The evaluation's arithmetic: confusion counts, single judges, ensembles, the table."""

from __future__ import annotations

import pytest

from services.voter.evaluation import (
    Confusion,
    Row,
    confusion,
    ensemble,
    format_table,
    single,
)
from services.voter.voting import Policy, Status, Vote


def test_confusion_and_its_rates():
    c = confusion([1, 1, 0, 0, 1], [True, False, True, False, True])
    assert (c.tp, c.fp, c.tn, c.fn) == (2, 1, 1, 1)
    assert c.error_rate == pytest.approx(2 / 5)
    assert c.precision == pytest.approx(2 / 3) and c.recall == pytest.approx(2 / 3)
    assert c.f1 == pytest.approx(2 / 3)
    assert Confusion().error_rate == 0 and Confusion().f1 == 0
    with pytest.raises(ValueError):
        confusion([1], [])


def vote(model, safe, status=Status.OK, **cats):
    return Vote(model, 1.0, status, is_safe=safe, confidence=0.9, categories=cats)


def test_a_judge_that_did_not_vote_counts_as_flagged():
    assert single("a")([vote("a", True), vote("b", False)]) is False
    assert single("b")([vote("a", True), vote("b", False)]) is True
    assert single("a")([vote("a", True, Status.ERROR)]) is True


def test_ensembles_use_the_policy_and_the_weights():
    ballots = [vote("a", False), vote("b", True), vote("c", True)]
    assert not ensemble(Policy(vote_threshold=0.6))(ballots)  # 2/3 safe
    assert ensemble(Policy(vote_threshold=0.7))(ballots)
    assert ensemble(Policy(), weights={"a": 5.0})(ballots)  # a's weight decides


def test_the_table_names_every_row():
    row = Row("profanity-check", "toxic", confusion([1, 0], [True, False]), 1.0, 2.0, 0.0,
              "in-sample (profanity-check)")  # fmt: skip
    out = format_table([row])
    assert "toxic" in out and "profanity-check" in out and "0.00%" in out and "in-sample" in out


def test_the_cascade_replayed_over_votes_escalates_only_unsure_texts():
    from services.voter.evaluation import cascade, escalated

    policy = Policy(cascade_margin=0.2)
    local = frozenset({"l"})
    sure_text = [vote("l", True, spam=0.0), vote("r", False, spam=1.0)]
    unsure_text = [vote("l", True, spam=0.45), vote("r", False, spam=1.0)]
    asks = escalated(policy, local)
    assert not asks(sure_text) and asks(unsure_text)
    assert cascade(policy, local)(sure_text) is False  # the local judge alone: safe
    assert cascade(policy, local)(unsure_text) is True  # the whole panel flags spam


# --- the evaluation run's pure parts: votes collected, halves joined, cross-fitted rows -------


class _Judge:
    """A judge whose answer to a text takes ``delays[text]`` seconds."""

    def __init__(self, name: str, delays: dict[str, float]) -> None:
        self.name, self.delays = name, delays

    async def judge(self, text: str, **_: object):
        import asyncio
        from types import SimpleNamespace

        from quorum.backends.types import TokenUsage

        await asyncio.sleep(self.delays[text])
        return SimpleNamespace(vote=vote(self.name, True), usage=TokenUsage(3, 1))


async def test_collect_keeps_each_latency_with_its_text():
    from services.voter.evalrun import collect

    judges = {"a": _Judge("a", {"slow": 0.2, "fast": 0.0})}
    got = await collect(judges, ["slow", "fast"], [1, 0], concurrency=2, timeout_s=5.0)
    slow, fast = got.latency_ms["a"]
    assert slow > 150 > fast  # the fast text answered first, and is still second
    assert got.usage["a"].input_tokens == 6


def test_cross_fitted_rows_score_each_half_with_the_other_halfs_policy():
    from quorum import config
    from quorum.registry import load_registry
    from services.voter.evalrun import Collected, joined, rows_for

    registry = load_registry(config.load(env={}))

    def half(n: int) -> Collected:  # every text: one judge says unsafe, one safe; all positive
        ballots = [[vote("profanity-check", False), vote("nsfw-check", True)] for _ in range(n)]
        latency = {"profanity-check": [1.0] * n, "nsfw-check": [2.0] * n}
        return Collected(labels=[1] * n, ballots=ballots, latency_ms=latency)

    a, b = half(3), half(5)
    strict, lenient = Policy(vote_threshold=0.9), Policy(vote_threshold=0.1)
    chosen = {id(x): strict for x in a.ballots} | {id(x): lenient for x in b.ballots}
    both = joined(a, b)
    rows = {
        r.system: r
        for r in rows_for("toxic", both, registry, Policy(), fitted=lambda x: chosen[id(x)])
    }
    fitted = rows["ensemble (fitted)"]
    assert fitted.scores.n == 8
    assert (fitted.scores.tp, fitted.scores.fn) == (3, 5)  # flagged under the strict one only
    assert rows["ensemble (equal weights)"].p50_ms == 2.0  # the slowest judge, text by text
