"""Combine model votes into one verdict. Pure: no I/O, no gRPC.

Rules (every number is a :class:`Policy` field, set from ``[voter]`` in the configuration):
- Only votes with status OK count; a model that failed or timed out abstains. It never
  counts as "safe".
- Fewer OK votes than ``min_votes`` is no quorum: the decision says so (``quorum`` False),
  is not safe and requires review; the voter answers UNAVAILABLE (NO_QUORUM) instead unless
  the policy's ``on_no_quorum`` is "review".
- The verdict is safe when the weighted share of "safe" votes is at least
  ``vote_threshold`` (the brief's 0.6) and no category's combined score reaches its
  threshold (``thresholds``, else ``category_threshold``). A category's combined score is the
  weighted mean over the models that judge that category.
- Review is required on disagreement (some, not all, OK votes say unsafe), when a category
  scores over ``review_threshold`` (the brief's 0.6), or when the combined confidence is below
  ``review_confidence``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum


class Status(Enum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    #: not asked, or its answer no longer awaited: the outcome was decided without it
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Vote:
    model: str
    weight: float
    status: Status
    is_safe: bool = False
    confidence: float = 0.0
    #: scores only for the categories this model judges
    categories: Mapping[str, float] = field(default_factory=dict)
    error: str = ""


NO_QUORUM_ACTIONS = ("error", "review")


@dataclass(frozen=True)
class Policy:
    min_votes: int = 1
    #: weighted share of "safe" votes a safe verdict needs
    vote_threshold: float = 0.6
    category_threshold: float = 0.5
    thresholds: Mapping[str, float] = field(default_factory=dict)
    #: a category scoring over this requires review
    review_threshold: float = 0.6
    review_confidence: float = 0.6
    #: "error" (UNAVAILABLE, NO_QUORUM) or "review" (unsafe, requires review)
    on_no_quorum: str = "error"
    #: ask the local judges first and the remote (paid, slower) ones only when the local
    #: ones are unsure (:func:`sure`)
    cascade: bool = False
    #: how far from its threshold every category score must lie for the local judges to
    #: be sure
    cascade_margin: float = 0.15
    #: per category, a judge's weight in that category's combined score (``quorum voter
    #: fit`` writes these); a judge not named keeps its own weight, 0 leaves it out
    category_weights: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def threshold(self, category: str) -> float:
        return self.thresholds.get(category, self.category_threshold)

    def weight(self, category: str, vote: Vote) -> float:
        return self.category_weights.get(category, {}).get(vote.model, vote.weight)


@dataclass(frozen=True)
class Decision:
    is_safe: bool
    confidence: float
    categories: Mapping[str, float]
    requires_review: bool
    reasons: tuple[str, ...]
    #: enough models voted (``min_votes``)
    quorum: bool = True


def combine(votes: Sequence[Vote], policy: Policy) -> Decision:
    ok = [v for v in votes if v.status is Status.OK]
    abstained = [v for v in votes if v.status in (Status.ERROR, Status.TIMEOUT)]
    reasons: list[str] = [f"{v.model} abstained ({v.status.value})" for v in abstained]
    if len(ok) < max(policy.min_votes, 1):
        asked = len([v for v in votes if v.status is not Status.SKIPPED])
        reasons.insert(0, f"only {len(ok)} of {asked} models voted; need {policy.min_votes}")
        return Decision(False, 0.0, {}, True, tuple(reasons), quorum=False)

    total = sum(v.weight for v in ok)
    unsafe_share = sum(v.weight for v in ok if not v.is_safe) / total

    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for v in ok:
        for cat, score in v.categories.items():
            w = policy.weight(cat, v)
            if w > 0:
                sums[cat] = sums.get(cat, 0.0) + w * score
                weights[cat] = weights.get(cat, 0.0) + w
    categories = {c: sums[c] / weights[c] for c in sorted(sums)}
    flagged = [c for c, s in categories.items() if s >= policy.threshold(c)]

    is_safe = 1.0 - unsafe_share >= policy.vote_threshold and not flagged
    agreeing = [v for v in ok if v.is_safe == is_safe]
    confidence = sum(v.weight * v.confidence for v in agreeing) / total

    review = False
    if flagged:
        reasons.insert(0, "flagged: " + ", ".join(flagged))
    if 0.0 < unsafe_share < 1.0:
        review = True
        reasons.append(f"models disagree ({unsafe_share:.0%} of the vote weight says unsafe)")
    over = [c for c, s in categories.items() if s > policy.review_threshold]
    if over:
        review = True
        reasons.append(f"over the review threshold: {', '.join(over)}")
    if confidence < policy.review_confidence:
        review = True
        reasons.append(f"low confidence ({confidence:.2f})")
    return Decision(is_safe, confidence, categories, review, tuple(reasons))


@dataclass(frozen=True)
class Pending:
    """A judge whose vote has not come yet: what it could still change."""

    model: str
    weight: float
    categories: tuple[str, ...]


def decided(votes: Sequence[Vote], pending: Sequence[Pending], policy: Policy) -> bool:
    """Whether the pending judges can no longer change whether the text is safe.

    ``is_safe`` only grows as a judge votes safe with low scores and only shrinks as one
    votes unsafe with high scores, so the two extremes (every pending judge safe scoring 0,
    every one unsafe scoring 1) bound every outcome; abstaining is checked as a third case.
    Nothing is decided before the quorum is reached."""
    if not pending:
        return True
    if sum(v.status is Status.OK for v in votes) < max(policy.min_votes, 1):
        return False

    def extreme(safe: bool) -> list[Vote]:
        score = 0.0 if safe else 1.0
        return [
            Vote(p.model, p.weight, Status.OK, is_safe=safe, confidence=1.0,
                 categories=dict.fromkeys(p.categories, score))
            for p in pending
        ]  # fmt: skip

    outcomes = {
        combine([*votes, *extra], policy).is_safe for extra in (extreme(True), extreme(False), [])
    }
    return len(outcomes) == 1


def sure(votes: Sequence[Vote], policy: Policy, remote: Sequence[Pending] = ()) -> bool:
    """Whether the cascade may answer from these (the local judges') votes alone: the
    ``remote`` judges could not change whether the text is safe (:func:`decided`, so skipping
    them costs no accuracy), or a quorum voted, every one of them agrees, and every combined
    category score lies at least ``cascade_margin`` away from its threshold."""
    if remote and decided(votes, remote, policy):
        return True
    d = combine(votes, policy)
    ok = [v for v in votes if v.status is Status.OK]
    if not d.quorum or len({v.is_safe for v in ok}) != 1:
        return False
    return all(
        abs(s - policy.threshold(c)) >= policy.cascade_margin for c, s in d.categories.items()
    )
