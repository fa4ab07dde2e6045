"""How well the judges and their ensembles moderate labelled texts. Pure: votes in, figures out.

A *system* turns the votes one text got into "flagged" (unsafe) or not:

- a single judge: flagged when its vote is unsafe, or when it did not vote (a judge that
  fails never counts as safe);
- an ensemble: :func:`services.voter.voting.combine` over the votes under a policy (the
  configured one, equal weights, or a fitted one), flagged when the verdict is not safe.

Every system is scored on each labelled set with a :class:`Confusion` (label 1 = should be
flagged): error rate, precision, recall, F1. A set stands for the categories named in
:data:`SET_CATEGORIES`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from services.voter.voting import Pending, Policy, Status, Vote, combine, sure

#: the moderation categories each labelled set (quorum.datasets) is about
SET_CATEGORIES: Mapping[str, tuple[str, ...]] = {
    "toxic": ("harassment",),
    "spam": ("spam",),
    "chatspam": ("spam",),
    "injection": ("injection",),
    "violence": ("violence",),
    "selfharm": ("self_harm",),
    "adult": ("adult",),
    "hate": ("hate",),
}


@dataclass(frozen=True)
class Confusion:
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def error_rate(self) -> float:
        return (self.fp + self.fn) / self.n if self.n else 0.0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def confusion(labels: Sequence[int], flagged: Sequence[bool]) -> Confusion:
    if len(labels) != len(flagged):
        raise ValueError("labels and predictions differ in length")
    tp = sum(1 for y, f in zip(labels, flagged, strict=True) if y and f)
    fp = sum(1 for y, f in zip(labels, flagged, strict=True) if not y and f)
    fn = sum(1 for y, f in zip(labels, flagged, strict=True) if y and not f)
    return Confusion(tp, fp, len(labels) - tp - fp - fn, fn)


#: the votes one text got, one per judge, in the same judge order for every text
Ballots = Sequence[Vote]
System = Callable[[Ballots], bool]


def single(model: str) -> System:
    """One judge alone."""

    def flagged(votes: Ballots) -> bool:
        (vote,) = [v for v in votes if v.model == model]
        return vote.status is not Status.OK or not vote.is_safe

    return flagged


def ensemble(policy: Policy, *, weights: Mapping[str, float] | None = None) -> System:
    """The vote under ``policy``; ``weights`` replace the judges' own (missing: 1.0)."""

    def flagged(votes: Ballots) -> bool:
        if weights is not None:
            votes = [replace(v, weight=weights.get(v.model, 1.0)) for v in votes]
        return not combine(votes, policy).is_safe

    return flagged


def escalated(
    policy: Policy, local: frozenset[str], remote: Sequence[Pending] = ()
) -> Callable[[Ballots], bool]:
    """Whether the cascade asks the ``remote`` judges about this text (as :func:`sure`)."""

    def asks(votes: Ballots) -> bool:
        return not sure([v for v in votes if v.model in local], policy, remote)

    return asks


def cascade(policy: Policy, local: frozenset[str], remote: Sequence[Pending] = ()) -> System:
    """The local judges alone when they are sure, else the whole panel."""
    asks = escalated(policy, local, remote)

    def flagged(votes: Ballots) -> bool:
        if asks(votes):
            return not combine(votes, policy).is_safe
        return not combine([v for v in votes if v.model in local], policy).is_safe

    return flagged


@dataclass(frozen=True)
class Row:
    """One system on one set."""

    system: str
    dataset: str
    scores: Confusion
    p50_ms: float
    p99_ms: float
    #: USD per 1,000 texts (what the paid judges it asked would bill)
    cost_per_1k: float
    notes: str = ""

    def as_json(self) -> dict[str, object]:
        c = self.scores
        return {
            "system": self.system,
            "dataset": self.dataset,
            "scores": {
                "tp": c.tp,
                "fp": c.fp,
                "tn": c.tn,
                "fn": c.fn,
                "n": c.n,
                "error_rate": c.error_rate,
                "precision": c.precision,
                "recall": c.recall,
                "f1": c.f1,
            },
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "cost_per_1k": self.cost_per_1k,
            "notes": self.notes,
        }


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(values: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 of ``values`` (milliseconds)."""
    return (statistics.median(values) if values else 0.0), percentile(values, 0.99)


def format_table(rows: Sequence[Row]) -> str:
    head = (
        f"{'set':<10} {'system':<34} {'n':>6} {'error':>7} {'prec':>6} {'recall':>6} "
        f"{'F1':>6} {'p50 ms':>7} {'p99 ms':>7} {'$/1k':>7}  notes"
    )
    lines = [head, "-" * len(head)]
    last = ""
    for r in rows:
        if last and r.dataset != last:
            lines.append("")
        last = r.dataset
        c = r.scores
        lines.append(
            f"{r.dataset:<10} {r.system:<34} {c.n:>6} {c.error_rate:>7.2%} {c.precision:>6.3f} "
            f"{c.recall:>6.3f} {c.f1:>6.3f} {r.p50_ms:>7.1f} {r.p99_ms:>7.1f} "
            f"{r.cost_per_1k:>7.4f}  {r.notes}"
        )
    return "\n".join(lines)
