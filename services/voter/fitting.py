"""``quorum voter fit``: per-category judge weights and thresholds learned from labelled votes.

Pure (numpy and scipy): votes and labels in, a policy out.

**Per category** (violence, hate, ...), the voter's combined score is a weighted mean of the
scores of the judges that score that category, flagged at a threshold. That is exactly a
logistic regression with non-negative coefficients: ``w·s + b >= 0`` is ``mean_w(s) >= -b /
sum(w)``. So the weights are fitted as one (stacking: L-BFGS-B on the log-loss with ``w >= 0``
and a little L2), and the threshold is then chosen on the weighted mean to make the fewest
training errors. A category's labels come from the sets about it (:data:`SET_CATEGORIES`);
every text of the other sets is a negative for it.

**Correlated errors.** Judges that err on the same texts add no evidence when averaged: two
copies of one judge would just double its weight. The stacked fit sees the judges jointly,
so a judge that only repeats another one's mistakes gets little weight, and one that is right
where the others are wrong gets more. :func:`error_correlation` (the phi coefficient of two
judges' error indicators) is printed with the fit so that a person can see it.

**The vote.** Last, ``vote_threshold`` (the weighted share of "safe" votes a safe verdict
needs) is chosen from a few candidates by the training error of the whole fitted policy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize

from services.voter.evaluation import SET_CATEGORIES
from services.voter.voting import Pending, Policy, Status, Vote, combine

Array = npt.NDArray[np.float64]

VOTE_THRESHOLDS = (0.0, 0.34, 0.5, 0.6, 0.67, 0.75, 1.0)
CASCADE_MARGINS = tuple(round(0.05 * i, 2) for i in range(11))
#: the most of the texts a fitted cascade may send on to the remote judges
MAX_ESCALATION = 0.5


@dataclass(frozen=True)
class Example:
    """A labelled text of one set and the votes it got."""

    dataset: str
    label: int
    ballot: Sequence[Vote]


@dataclass(frozen=True)
class CategoryFit:
    category: str
    weights: Mapping[str, float]
    threshold: float
    train_error: float
    n: int
    positives: int


@dataclass(frozen=True)
class Fit:
    categories: tuple[CategoryFit, ...]
    vote_threshold: float
    train_error: float
    correlation: Mapping[tuple[str, str], float]
    #: the cascade's margin, when local and remote judges both took part
    cascade_margin: float | None = None
    #: the share of training texts that margin sends on to the remote judges
    escalation: float = 0.0

    def policy(self, base: Policy) -> Policy:
        return replace(
            base,
            cascade_margin=(
                self.cascade_margin if self.cascade_margin is not None else base.cascade_margin
            ),
            vote_threshold=self.vote_threshold,
            thresholds={**base.thresholds, **{c.category: c.threshold for c in self.categories}},
            category_weights={c.category: dict(c.weights) for c in self.categories},
        )


def set_weights(examples: Sequence[Example]) -> Array:
    """One weight per example so that every set counts the same, whatever its size: the
    evaluation reports each set's error rate, so the fit minimises their mean."""
    sizes: dict[str, int] = {}
    for e in examples:
        sizes[e.dataset] = sizes.get(e.dataset, 0) + 1
    w = np.array([1.0 / sizes[e.dataset] for e in examples], dtype=np.float64)
    out: Array = w / w.sum()
    return out


def _labels(examples: Sequence[Example], category: str) -> Array:
    """1 or 0 for ``category``, or -1 where it is unknown: a positive of a set about another
    category (a toxic text may well be violent too; flagging it is right either way)."""

    def one(e: Example) -> int:
        if category in SET_CATEGORIES.get(e.dataset, ()):
            return e.label
        return -1 if e.label else 0

    return np.array([one(e) for e in examples], dtype=float)


def fit_weights(
    scores: Array, labels: Array, sample_weight: Array | None = None, *, l2: float = 1e-3
) -> Array:
    """Non-negative logistic-regression coefficients of ``scores`` (n x k) for ``labels``,
    each example counted by ``sample_weight`` (default: equally)."""
    n, k = scores.shape
    sw = np.full(n, 1.0 / n) if sample_weight is None else sample_weight / sample_weight.sum()

    def loss(theta: Array) -> tuple[float, Array]:
        w, b = theta[:k], theta[k]
        z = scores @ w + b
        p = 1.0 / (1.0 + np.exp(-z))
        eps = 1e-12
        value = -np.sum(sw * (labels * np.log(p + eps) + (1 - labels) * np.log(1 - p + eps)))
        value += l2 * float(w @ w)
        g = (p - labels) * sw
        grad = np.concatenate([scores.T @ g + 2 * l2 * w, [g.sum()]])
        return float(value), grad

    theta0 = np.concatenate([np.ones(k), [-float(k) / 2]])
    bounds = [(0.0, None)] * k + [(None, None)]
    result = minimize(loss, theta0, jac=True, method="L-BFGS-B", bounds=bounds)
    return np.asarray(result.x[:k])


def best_threshold(
    values: Array, labels: Array, sample_weight: Array | None = None
) -> tuple[float, float]:
    """The cut-off on ``values`` (flag at or over it) with the fewest (weighted) errors, and
    the error rate there. Candidates lie halfway between neighbouring distinct values."""
    sw = np.full(len(values), 1.0 / len(values)) if sample_weight is None else sample_weight
    sw = sw / sw.sum()
    distinct = np.unique(values)
    candidates = np.concatenate(
        [[0.0], (distinct[:-1] + distinct[1:]) / 2 if len(distinct) > 1 else [], [1.0 + 1e-9]]
    )
    best = (1.0 + 1e-9, 1.0)
    for t in candidates:
        err = float(np.sum(sw * ((values >= t) != (labels > 0))))
        if err < best[1] - 1e-12:
            best = (float(t), err)
    return best


def fit_category(
    category: str, judges: Sequence[str], examples: Sequence[Example]
) -> CategoryFit | None:
    """Weights and threshold for ``category`` over the judges that score it; None when no
    example is positive for it."""
    rows, labels, weights = [], [], []
    all_labels = _labels(examples, category)
    for e, y, sw in zip(examples, all_labels, set_weights(examples), strict=True):
        votes = {v.model: v for v in e.ballot}
        if y < 0:
            continue
        if any(votes[j].status is not Status.OK for j in judges):
            continue  # an abstention says nothing about the scores
        rows.append([votes[j].categories.get(category, 0.0) for j in judges])
        labels.append(y)
        weights.append(sw)
    y = np.array(labels)
    if not rows or y.sum() == 0:
        return None
    x = np.array(rows, dtype=float)
    sw = np.array(weights)
    w = fit_weights(x, y, sw)
    if w.sum() <= 0:
        w = np.ones(len(judges))
    w = w / w.sum()
    threshold, error = best_threshold(x @ w, y, sw)
    return CategoryFit(
        category=category,
        weights={j: round(float(v), 4) for j, v in zip(judges, w, strict=True)},
        threshold=round(min(threshold, 1.0), 4),
        train_error=error,
        n=len(y),
        positives=int(y.sum()),
    )


def error_correlation(
    examples: Sequence[Example], judges: Sequence[str]
) -> dict[tuple[str, str], float]:
    """Phi coefficient of every two judges' errors (a judge errs when its vote differs from
    the label, or when it did not vote)."""
    errs: dict[str, Array] = {}
    for j in judges:
        wrong = []
        for e in examples:
            (v,) = [v for v in e.ballot if v.model == j]
            flagged = v.status is not Status.OK or not v.is_safe
            wrong.append(flagged != bool(e.label))
        errs[j] = np.array(wrong, dtype=float)
    out = {}
    for a, b in itertools.combinations(judges, 2):
        x, y = errs[a], errs[b]
        sx, sy = x.std(), y.std()
        out[(a, b)] = (
            float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy)) if sx and sy else 0.0
        )
    return out


def fit(
    examples: Sequence[Example],
    judge_categories: Mapping[str, Sequence[str]],
    base: Policy,
    local: Sequence[str] = (),
) -> Fit:
    """Fit every category some judge scores, then the vote threshold, then (when ``local``
    judges and remote ones both took part) the cascade's margin."""
    categories = sorted({c for cats in judge_categories.values() for c in cats})
    fits = []
    for c in categories:
        judges = [j for j, cats in judge_categories.items() if c in cats]
        one = fit_category(c, judges, examples)
        if one is not None:
            fits.append(one)
    labels = np.array([bool(e.label) for e in examples])
    sw = set_weights(examples)
    best: tuple[float, float] = (base.vote_threshold, math.inf)
    for t in VOTE_THRESHOLDS:
        policy = Fit(tuple(fits), t, 0.0, {}).policy(base)
        flagged = np.array([not combine(e.ballot, policy).is_safe for e in examples])
        err = float(np.sum(sw * (flagged != labels)))
        if err < best[1] - 1e-12:
            best = (t, err)
    result = Fit(tuple(fits), best[0], best[1], error_correlation(examples, list(judge_categories)))
    if local and set(local) < set(judge_categories):
        weights = {v.model: v.weight for e in examples for v in e.ballot}
        remote = [
            Pending(j, weights.get(j, 1.0), tuple(cats))
            for j, cats in judge_categories.items()
            if j not in local
        ]
        margin, escalation = fit_cascade(examples, result.policy(base), frozenset(local), remote)
        result = replace(result, cascade_margin=margin, escalation=escalation)
    return result


def fit_cascade(
    examples: Sequence[Example],
    policy: Policy,
    local: frozenset[str],
    remote: Sequence[Pending] = (),
) -> tuple[float, float]:
    """The margin with the fewest training errors among those that escalate at most
    :data:`MAX_ESCALATION` of the texts (the smallest margin when none does)."""
    from services.voter.evaluation import cascade, escalated

    best: tuple[float, float, float] = (0.0, math.inf, 0.0)  # margin, errors, escalation
    sw = set_weights(examples)
    labels = np.array([bool(e.label) for e in examples])
    for m in CASCADE_MARGINS:
        p = replace(policy, cascade_margin=m)
        asks = escalated(p, local, remote)
        rate = float(np.mean([asks(e.ballot) for e in examples]))
        if rate > MAX_ESCALATION:
            continue
        system = cascade(p, local, remote)
        errors = float(np.sum(sw * (np.array([system(e.ballot) for e in examples]) != labels)))
        if errors < best[1] - 1e-12:
            best = (m, errors, rate)
    return best[0], best[2]


def to_toml(result: Fit) -> str:
    """The fitted policy as a config file to merge over the defaults (``--config``)."""
    lines = [
        "# Written by `quorum voter fit`: judge weights and thresholds fitted on the fitting",
        "# half of the labelled test splits (error of the whole policy there "
        f"{result.train_error:.2%}).",
        "[voter]",
        f"vote_threshold = {result.vote_threshold}",
        "",
        "[voter.thresholds]",
    ]
    if result.cascade_margin is not None:
        lines[4:4] = [
            f"# the cascade (cascade = true) would ask the remote judges about "
            f"{result.escalation:.0%} of the training texts at this margin",
            f"cascade_margin = {result.cascade_margin}",
        ]
    lines += [f"{c.category} = {c.threshold}" for c in result.categories]
    for c in result.categories:
        lines += ["", f"[voter.weights.{c.category}]"]
        lines += [f'"{j}" = {w}' for j, w in c.weights.items()]
    return "\n".join(lines) + "\n"
