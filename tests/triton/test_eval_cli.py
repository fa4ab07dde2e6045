"""`quorum eval` as a person runs it: a real Triton, the real judges, a written set."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.triton


def test_eval_prints_every_judge_and_the_ensembles(run_module, tmp_path):
    done = run_module(
        "quorum.cli", "eval", "--sets", "violence", "--limit", "30", "--json",
        env={"QUORUM_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    systems = {r["system"] for r in rows}
    assert {"profanity-check", "nsfw-check", "ensemble (configured weights)"} <= systems
    sizes = {r["scores"]["n"] for r in rows}
    assert len(sizes) == 1 and 10 <= sizes.pop() <= 40  # the evaluation half of 60 texts
    for r in rows:
        assert r["dataset"] == "violence"
        assert 0 <= r["scores"]["error_rate"] <= 1 and r["p50_ms"] > 0
        assert r["cost_per_1k"] == 0  # local judges bill nothing


def test_eval_with_a_simulated_remote_judge_adds_the_cascades(run_module, tmp_path):
    fitted = tmp_path / "fitted.toml"
    fitted.write_text("[voter]\nvote_threshold = 0.5\ncascade_margin = 0.1\n")
    done = run_module(
        "quorum.cli", "eval", "--sets", "violence", "--limit", "30", "--json", "--simulated",
        "--fitted", str(fitted), env={"QUORUM_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {r["system"]: r for r in json.loads(done.stdout)}
    panel = rows["ensemble (configured weights)"]
    assert "simulated judge" in rows["sim-judge"]["notes"] and panel["cost_per_1k"] > 0
    for name in ("cascade (local first)", "cascade (fitted)"):
        row = rows[name]
        assert "asked the remote judges for" in row["notes"] and "simulated" in row["notes"]
        # it pays the remote judges only for the texts it sends on
        assert 0 <= row["cost_per_1k"] <= panel["cost_per_1k"]


def test_eval_cross_fitted_reports_on_both_halves(run_module, tmp_path):
    done = run_module(
        "quorum.cli", "eval", "--sets", "violence", "--limit", "30", "--json", "--cross-fit",
        env={"QUORUM_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {r["system"]: r for r in json.loads(done.stdout)}
    assert {r["scores"]["n"] for r in rows.values()} == {60}  # both halves of 60 texts
    assert "ensemble (fitted)" in rows
    refused = run_module(
        "quorum.cli", "eval", "--cross-fit", "--fitted", "x.toml",
        env={"QUORUM_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert refused.returncode == 2 and "not allowed with" in refused.stderr
