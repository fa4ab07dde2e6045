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
