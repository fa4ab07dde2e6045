"""Combine model votes into one verdict. Pure: no I/O, no gRPC.

Rules (the full voting engine builds on this seam):
- Only votes with status OK count; a model that failed or timed out abstains. It never
  counts as "safe".
- Fewer OK votes than ``min_votes``: the text is not safe and requires review.
- The verdict is unsafe when the weighted share of "unsafe" votes is at least one half, or
  when any category's combined score reaches its threshold. A category's combined score is
  the weighted mean over the models that judge that category.
- Review is required on disagreement (some, not all, OK votes say unsafe) or when the
  combined confidence is below ``review_confidence``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum


class Status(Enum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"


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


@dataclass(frozen=True)
class Policy:
    min_votes: int = 1
    category_threshold: float = 0.5
    thresholds: Mapping[str, float] = field(default_factory=dict)
    review_confidence: float = 0.6

    def threshold(self, category: str) -> float:
        return self.thresholds.get(category, self.category_threshold)


@dataclass(frozen=True)
class Decision:
    is_safe: bool
    confidence: float
    categories: Mapping[str, float]
    requires_review: bool
    reasons: tuple[str, ...]


def combine(votes: Sequence[Vote], policy: Policy) -> Decision:
    ok = [v for v in votes if v.status is Status.OK]
    abstained = [v for v in votes if v.status is not Status.OK]
    reasons: list[str] = [f"{v.model} abstained ({v.status.value})" for v in abstained]
    if len(ok) < max(policy.min_votes, 1):
        reasons.insert(0, f"only {len(ok)} of {len(votes)} models voted; need {policy.min_votes}")
        return Decision(False, 0.0, {}, True, tuple(reasons))

    total = sum(v.weight for v in ok)
    unsafe_share = sum(v.weight for v in ok if not v.is_safe) / total

    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for v in ok:
        for cat, score in v.categories.items():
            sums[cat] = sums.get(cat, 0.0) + v.weight * score
            weights[cat] = weights.get(cat, 0.0) + v.weight
    categories = {c: sums[c] / weights[c] for c in sorted(sums)}
    flagged = [c for c, s in categories.items() if s >= policy.threshold(c)]

    is_safe = unsafe_share < 0.5 and not flagged
    agreeing = [v for v in ok if v.is_safe == is_safe]
    confidence = sum(v.weight * v.confidence for v in agreeing) / total

    review = False
    if flagged:
        reasons.insert(0, "flagged: " + ", ".join(flagged))
    if 0.0 < unsafe_share < 1.0:
        review = True
        reasons.append(f"models disagree ({unsafe_share:.0%} of the vote weight says unsafe)")
    if confidence < policy.review_confidence:
        review = True
        reasons.append(f"low confidence ({confidence:.2f})")
    return Decision(is_safe, confidence, categories, review, tuple(reasons))
