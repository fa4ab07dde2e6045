"""quorum voter fit's arithmetic on votes made up here: the fit must find the judge that
knows, ignore the one that only adds noise, and put the cut where the classes part."""

from __future__ import annotations

import random

import numpy as np
import pytest

from quorum import config
from services.voter.config import policy_from
from services.voter.fitting import (
    Example,
    best_threshold,
    error_correlation,
    fit,
    fit_weights,
    to_toml,
)
from services.voter.voting import Policy, Status, Vote, combine


def test_the_threshold_with_the_fewest_errors():
    values = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    t, err = best_threshold(values, labels)
    assert 0.3 < t <= 0.7 and err == 0
    t, err = best_threshold(np.array([0.5, 0.5]), np.array([0, 0]))
    assert err == 0 and t > 0.5  # never flag


def test_weights_are_non_negative_and_follow_the_signal():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400).astype(float)
    good = np.clip(y * 0.7 + rng.normal(0.15, 0.1, 400), 0, 1)
    noise = rng.uniform(0, 1, 400)
    contrary = 1 - good  # negatively related: must get weight 0, never a negative one
    w = fit_weights(np.column_stack([good, noise, contrary]), y)
    assert (w >= 0).all()
    assert w[0] > 5 * max(w[1], w[2])


def examples(n: int = 300) -> list[Example]:
    rng = random.Random(3)
    out = []
    for i in range(n):
        y = i % 2
        knows = 0.8 if y else 0.1
        ballot = [
            Vote("expert", 1.0, Status.OK, is_safe=not y, confidence=0.9,
                 categories={"violence": knows + rng.uniform(-0.05, 0.05)}),
            Vote("guesser", 1.0, Status.OK, is_safe=rng.random() < 0.5, confidence=0.9,
                 categories={"violence": rng.random()}),
        ]  # fmt: skip
        out.append(Example("violence", y, ballot))
    return out


def test_the_fitted_policy_beats_equal_weights_and_round_trips_through_config(tmp_path):
    data = examples()
    base = Policy(thresholds={"violence": 0.3})
    result = fit(data, {"expert": ["violence"], "guesser": ["violence"]}, base)
    (violence,) = result.categories
    assert violence.weights["expert"] > 0.8
    fitted = result.policy(base)

    def errors(policy: Policy) -> int:
        return sum((not combine(e.ballot, policy).is_safe) != bool(e.label) for e in data)

    assert errors(fitted) < errors(base)
    assert errors(fitted) <= 3

    # the file it writes is a config the voter reads back to the same policy
    path = tmp_path / "fitted.toml"
    path.write_text(to_toml(result))
    loaded = policy_from(config.load(path, env={})["voter"])
    assert loaded.thresholds["violence"] == pytest.approx(fitted.thresholds["violence"])
    assert loaded.category_weights["violence"] == pytest.approx(fitted.category_weights["violence"])
    assert loaded.vote_threshold == fitted.vote_threshold


def test_error_correlation_sees_judges_that_err_together():
    data = examples(100)
    twin = [Example(e.dataset, e.label, [*e.ballot, Vote("twin", 1.0, Status.OK,
            is_safe=e.ballot[1].is_safe)]) for e in data]  # fmt: skip
    phi = error_correlation(twin, ["expert", "guesser", "twin"])
    assert phi[("guesser", "twin")] == pytest.approx(1.0)
    assert abs(phi[("expert", "guesser")]) < 0.3


def test_the_cascade_margin_escalates_at_most_half_the_texts():
    result = fit(examples(), {"expert": ["violence"], "guesser": ["violence"]}, Policy(),
                 local=["expert"])  # fmt: skip
    assert result.cascade_margin is not None and 0 <= result.escalation <= 0.5
    assert "cascade_margin = " in to_toml(result)
