"""Early decision: the voter stops waiting for judges that can no longer change the outcome."""

from __future__ import annotations

import asyncio
import time

from quorum.backends.types import TokenUsage
from quorum.deadline import Deadline
from quorum.registry import load_registry
from services.voter.judges import JudgeResult
from services.voter.moderation import Moderator
from services.voter.voting import Pending, Policy, Status, Vote, decided


def ok(model, safe, **cats):
    return Vote(model, 1.0, Status.OK, is_safe=safe, confidence=0.9, categories=cats)


def test_nothing_is_decided_before_the_quorum():
    assert not decided([], [Pending("a", 1.0, ())], Policy(min_votes=1))
    assert decided([ok("a", True)], [], Policy())


def test_a_majority_the_rest_cannot_overturn_is_decided():
    policy = Policy(vote_threshold=0.6)
    three_safe = [ok("a", True), ok("b", True), ok("c", True)]
    # one pending judge of four: 3/4 safe whatever it says, and it judges no category
    assert decided(three_safe, [Pending("d", 1.0, ())], policy)
    # two pending of five: 3/5 = 0.6 still safe if both say unsafe
    assert decided(three_safe, [Pending("d", 1.0, ()), Pending("e", 1.0, ())], policy)
    # three pending of six: 3/6 < 0.6 if all say unsafe
    assert not decided(three_safe, [Pending(m, 1.0, ()) for m in "def"], policy)


def test_a_pending_judge_that_could_flag_a_category_keeps_it_open():
    policy = Policy(thresholds={"violence": 0.3})
    votes = [ok("a", True, violence=0.1), ok("b", True), ok("c", True)]
    assert not decided(votes, [Pending("d", 1.0, ("violence",))], policy)
    # the only judge of spam could still flag it alone ...
    spam = Policy(thresholds={"spam": 0.9})
    assert not decided(votes, [Pending("d", 1.0, ("spam",))], spam)
    # ... not once two others scored it 0: at most (0 + 0 + 1) / 3
    votes = [ok("a", True, spam=0.0), ok("b", True, spam=0.0), ok("c", True)]
    assert decided(votes, [Pending("d", 1.0, ("spam",))], spam)


def test_an_unsafe_verdict_nothing_can_rescue_is_decided():
    policy = Policy(thresholds={"hate": 0.4})
    votes = [ok("a", False, hate=0.95), ok("b", False, hate=0.9)]
    # even a safe vote scoring 0 leaves hate at 0.62 >= 0.4
    assert decided(votes, [Pending("c", 1.0, ("hate",))], policy)


class FakeJudge:
    """A judge answering after ``delay`` seconds (in process: the voting logic is under test)."""

    def __init__(
        self, name: str, safe: bool, delay: float, categories: tuple[str, ...] = ("spam",)
    ):
        reg = load_registry(
            {
                "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
                "models": {name: {"provider": "p", "moderation": {"categories": list(categories)}}},
            }
        )
        self.spec = reg.get(name)
        self.safe, self.delay = safe, delay
        self.cancelled = False

    async def judge(
        self, text: str, *, timeout_s: float, usage_key: str, tenant: str
    ) -> JudgeResult:
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        score = 0.0 if self.safe else 1.0
        cats = dict.fromkeys(self.spec.moderation.categories, score)
        vote = Vote(
            self.spec.name, 1.0, Status.OK, is_safe=self.safe, confidence=0.9, categories=cats
        )
        return JudgeResult(vote, TokenUsage())


async def test_the_slow_judge_no_longer_sets_the_latency():
    fast = [FakeJudge(n, True, 0.01) for n in ("a", "b", "c")]
    slow = FakeJudge("slow", False, 5.0)
    judges = {j.spec.name: j for j in [*fast, slow]}
    moderator = Moderator(judges, Policy(), model_timeout_s=10, max_text_chars=100)
    start = time.monotonic()
    outcome = await moderator.moderate("hello", "r1", [], Deadline.after(10), tenant="acme")
    assert time.monotonic() - start < 1.0
    assert outcome.decision.is_safe and slow.cancelled
    skipped = [b for b in outcome.ballots if b.vote.status is Status.SKIPPED]
    assert [b.vote.model for b in skipped] == ["slow"]
    assert "early decision" in skipped[0].vote.error

    waiting = Moderator(judges, Policy(), model_timeout_s=0.3, max_text_chars=100,
                        early_decision=False)  # fmt: skip
    outcome = await waiting.moderate("hello", "r2", [], Deadline.after(10), tenant="acme")
    assert [b.vote.status for b in outcome.ballots][-1] is Status.TIMEOUT


# -- the cascade ------------------------------------------------------------------------------


def test_the_local_judges_are_sure_only_when_they_agree_away_from_every_threshold():
    from services.voter.voting import sure

    policy = Policy(thresholds={"violence": 0.3}, cascade_margin=0.1)
    assert sure([ok("a", True, violence=0.05), ok("b", True)], policy)
    assert not sure([ok("a", True, violence=0.25), ok("b", True)], policy)  # too close
    assert not sure([ok("a", True), ok("b", False)], policy)  # they disagree
    assert sure([ok("a", False, violence=0.9), ok("b", False)], policy)
    assert not sure([Vote("a", 1.0, Status.ERROR)], policy)  # no quorum


def test_the_local_judges_settle_a_text_the_remote_ones_could_not_change():
    """With the remote judges named, a text is settled when they could not change the
    outcome (as for early decision), even where the local judges disagree."""
    from services.voter.voting import sure

    policy = Policy(thresholds={"violence": 0.3}, cascade_margin=0.1)
    remote = [Pending("llm", 1.0, ("violence",))]
    threat = [ok("a", False, violence=0.9), ok("b", True)]
    assert not sure(threat, policy)  # they disagree ...
    assert sure(threat, policy, remote)  # ... but one more vote cannot bring 0.9 under 0.3
    borderline = [ok("a", True, violence=0.2), ok("b", True)]
    assert not sure(borderline, policy, remote)  # the remote judge could flag it
    assert not sure([Vote("a", 1.0, Status.ERROR)], policy, remote)  # no quorum


class LocalJudge(FakeJudge):
    def __init__(self, name: str, score: float):
        reg = load_registry(
            {"models": {name: {"backend": "triton", "triton_model": name,
                               "moderation": {"categories": ["spam"], "threshold": 0.5}}}}
        )  # fmt: skip
        self.spec = reg.get(name)
        self.delay, self.cancelled, self.score = 0.0, False, score

    async def judge(
        self, text: str, *, timeout_s: float, usage_key: str, tenant: str
    ) -> JudgeResult:
        vote = Vote(self.spec.name, 1.0, Status.OK, is_safe=self.score < 0.5, confidence=0.9,
                    categories={"spam": self.score})  # fmt: skip
        return JudgeResult(vote, TokenUsage())


async def test_the_cascade_asks_the_remote_judge_only_when_the_local_one_is_unsure():
    policy = Policy(cascade=True, cascade_margin=0.2)
    for score, asked in ((0.05, False), (0.45, True)):
        remote = FakeJudge("remote", True, 0.01)
        judges = {"local": LocalJudge("local", score), "remote": remote}
        moderator = Moderator(judges, policy, model_timeout_s=5, max_text_chars=100)
        outcome = await moderator.moderate("hi", "r", [], Deadline.after(5), tenant="acme")
        (ballot,) = [b for b in outcome.ballots if b.vote.model == "remote"]
        if asked:
            assert ballot.vote.status is Status.OK
        else:
            assert ballot.vote.status is Status.SKIPPED and "cascade" in ballot.vote.error
