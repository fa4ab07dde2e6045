"""Automatic routing with the prompt classifier: the pure decision (rules vs the classifier's
guess), its settings, the committed head and the data it was trained on. The classifier on the
real Triton server, and in the router, is in tests/triton/test_prompt_task.py."""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc.aio import InferenceServerClient

from quorum import config, datasets
from quorum.backends.triton import TritonScorer
from quorum.deadline import Deadline
from quorum.ids import free_ports
from quorum.localmodels.embedding import DIM, HeadsError
from quorum.localmodels.prompttask import TaskHead
from quorum.registry import ConfigError
from quorum.tritonserver import default_model_repository, optional_skipped
from services.router.classifier import TaskClassifier
from services.router.config import RouterSettings
from services.router.routing import (
    AutoRouting,
    PromptClassifier,
    Rule,
    TaskGuess,
    choose,
    decide,
    triton_models,
)
from tests.unit.test_routing_pricing import reg

ROOT = Path(__file__).resolve().parents[2]
HEAD = ROOT / "triton" / "prompt_task" / "1" / "head.json"
ROUTED = {"code", "quick", "analysis", "complex"}


def settings(**routing: object) -> RouterSettings:
    data = config.defaults()
    data["routing"] |= routing
    data["router"]["triton_address"] = "127.0.0.1:50061"  # as quorum up sets it
    return RouterSettings.from_config(data, {"QUORUM_DATA_DIR": "/tmp/x"})


# --- the decision ----------------------------------------------------------------------------


def test_a_confident_classifier_decides() -> None:
    task, why = decide(
        "complex", "no keyword rule matched", TaskGuess("code", 0.934), min_confidence=0.58,
        routed=ROUTED,
    )  # fmt: skip
    assert (task, why) == ("code", "the classifier chose 'code' (0.93)")


def test_at_the_threshold_the_classifier_decides_below_it_the_rules() -> None:
    rule = ("quick", "the prompt mentions 'quick'")
    assert decide(*rule, TaskGuess("complex", 0.58), min_confidence=0.58, routed=ROUTED)[0] == (
        "complex"
    )
    task, why = decide(*rule, TaskGuess("complex", 0.41), min_confidence=0.58, routed=ROUTED)
    assert task == "quick"
    assert why == "the prompt mentions 'quick' (the classifier is unsure: 'complex' 0.41)"


def test_without_an_answer_the_rules_decide_and_say_so() -> None:
    task, why = decide("code", "the prompt mentions 'python'", None, min_confidence=0.5,
                       routed=ROUTED)  # fmt: skip
    assert task == "code" and why.endswith("(the classifier did not answer)")


def test_a_task_the_routing_does_not_serve_is_not_taken() -> None:
    task, why = decide("complex", "no keyword rule matched", TaskGuess("poetry", 0.99),
                       min_confidence=0.5, routed=ROUTED)  # fmt: skip
    assert task == "complex" and "'poetry' is not routed" in why


def test_choose_routes_on_the_classifiers_task_and_says_why() -> None:
    auto = settings(classifier=True).auto
    assert auto is not None and auto.classifier is not None
    prompt = "Implement an LRU cache with O(1) get and put"  # no keyword: the rules say complex
    assert choose(reg(), auto=auto, text=prompt).candidates[0].name == "gpt-4.1"
    route = choose(reg(), auto=auto, text=prompt, guess=TaskGuess("code", 0.93))
    assert route.candidates[0].name == "deepseek-v3.2"
    assert route.reason == (
        "automatic: the classifier chose 'code' (0.93), so task 'code'; "
        "cheapest usable model for task 'code'"
    )
    unsure = choose(reg(), auto=auto, text="Give me a quick rundown", guess=TaskGuess("code", 0.3))
    assert unsure.candidates[0].name == "gemini-2.5-flash"
    assert "mentions 'quick' (the classifier is unsure: 'code' 0.30)" in unsure.reason


def test_without_the_classifier_a_guess_changes_nothing() -> None:
    auto = settings().auto  # classifier = false, the default
    assert auto is not None and auto.classifier is None
    route = choose(reg(), auto=auto, text="Implement quicksort in C", guess=TaskGuess("code", 1.0))
    assert route.candidates[0].name == "gemini-2.5-flash"  # the rules: 'quick'
    assert route.reason.startswith("automatic: the prompt mentions 'quick', so")


def test_routed_tasks_are_the_rules_and_the_fallback() -> None:
    auto = AutoRouting((Rule("code", ("python",)),), "complex")
    assert auto.routed == {"code", "complex"}
    assert AutoRouting((Rule("code", ("python",)),)).routed == {"code"}


# --- settings ---------------------------------------------------------------------------------


def test_the_classifier_settings_come_from_routing() -> None:
    auto = settings(classifier=True, classifier_timeout_s=0.02).auto
    assert auto is not None
    assert auto.classifier == PromptClassifier(
        model="prompt_task", tasks=("code", "quick", "analysis", "complex"),
        min_confidence=TaskHead.load(HEAD).min_confidence, timeout_s=0.02,
    )  # fmt: skip
    assert settings(classifier=True).triton_address == "127.0.0.1:50061"
    # the classifier is asked on Triton: without its address, the router refuses to start
    data = config.defaults()
    data["routing"]["classifier"] = True
    with pytest.raises(ConfigError, match="triton_address"):
        RouterSettings.from_config(data, {"QUORUM_DATA_DIR": "/tmp/x"})
    # automatic routing off: no classifier either
    assert settings(auto=False, classifier=True).auto is None


@pytest.mark.parametrize(
    ("routing", "match"),
    [
        ({"classifier": "yes"}, "routing.classifier"),
        ({"classifier": True, "classifier_min_confidence": 1.5}, "classifier_min_confidence"),
        ({"classifier": True, "classifier_min_confidence": -0.1}, "classifier_min_confidence"),
        ({"classifier": True, "classifier_tasks": ["code"]}, "classifier_tasks"),
        ({"classifier": True, "classifier_timeout_s": 0}, "classifier_timeout_s"),
        ({"classifier": True, "classifier_model": ""}, "classifier_model"),
        ({"classifer": True}, "unknown keys"),
    ],
)
def test_bad_classifier_settings_are_config_errors(routing: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        settings(**routing)


def test_the_configured_threshold_and_tasks_are_the_heads() -> None:
    """Retraining changes head.json: the embedded defaults and the model's outputs must follow."""
    head = TaskHead.load(HEAD)
    r = config.defaults()["routing"]
    assert r["classifier_min_confidence"] == pytest.approx(head.min_confidence)
    assert tuple(r["classifier_tasks"]) == head.tasks == datasets.ROUTING_TASKS
    pbtxt = (HEAD.parents[1] / "config.pbtxt").read_text()
    outputs = re.findall(r'name: "(SCORE_\w+)"', pbtxt)
    assert outputs == [f"SCORE_{t.upper()}" for t in head.tasks]


def test_quorum_up_loads_the_classifier_only_when_it_is_on() -> None:
    data = config.defaults()
    repo = default_model_repository()
    assert triton_models(data) == ()
    assert "prompt_task" in optional_skipped(data["triton"], repo, needed=triton_models(data))
    data["routing"]["classifier"] = True
    assert triton_models(data) == ("prompt_task",)
    assert "prompt_task" not in optional_skipped(data["triton"], repo, needed=("prompt_task",))
    data["routing"]["auto"] = False
    assert triton_models(data) == ()


# --- the head ----------------------------------------------------------------------------------


def test_the_committed_head_gives_a_distribution_per_prompt() -> None:
    head = TaskHead.load(HEAD)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    p = head.score(x)
    assert p.shape == (5, 4) and p.dtype == np.float32
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5) and (p > 0).all()
    assert 0.25 < head.min_confidence < 1.0 and head.temperature > 0
    # the file records how it was made and what it scored
    assert head.info["trained_by"] == "scripts/train_prompt_task.py"
    assert (
        head.info["test_accuracy"]["combined"]["all"] > head.info["test_accuracy"]["rules"]["all"]
    )


def test_a_head_round_trips_and_bad_files_are_refused(tmp_path: Path) -> None:
    head = TaskHead.load(HEAD)
    head.save(tmp_path / "head.json")
    again = TaskHead.load(tmp_path / "head.json")
    assert again.tasks == head.tasks and again.min_confidence == head.min_confidence
    np.testing.assert_allclose(again.weights, head.weights, rtol=1e-6)
    doc = json.loads(HEAD.read_text())
    for broken, match in (
        ({**doc, "encoder": "other"}, "another encoder"),
        ({**doc, "tasks": ["code"]}, "do not fit|two or more"),
        ({**doc, "temperature": 0}, "temperature"),
        ({k: v for k, v in doc.items() if k != "bias"}, "malformed"),
    ):
        (tmp_path / "bad.json").write_text(json.dumps(broken))
        with pytest.raises(HeadsError, match=match):
            TaskHead.load(tmp_path / "bad.json")
    with pytest.raises(HeadsError, match="no head file"):
        TaskHead.load(tmp_path / "missing.json")


# --- the data ---------------------------------------------------------------------------------


def test_the_routing_prompts_file() -> None:
    with (ROOT / "data" / "routing_prompts.csv").open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["text", "task"]
        rows = list(reader)
    counts = Counter(r["task"] for r in rows)
    assert set(counts) == set(datasets.ROUTING_TASKS)
    assert min(counts.values()) >= 70, counts
    keys = [" ".join(r["text"].split()).casefold() for r in rows]
    assert len(set(keys)) == len(keys), "a prompt appears twice"


def test_the_split_is_by_hash_disjoint_and_stable() -> None:
    train, test = datasets.load_routing("train"), datasets.load_routing("test")
    assert not {e.text for e in train} & {e.text for e in test}
    assert 0.25 <= len(test) / (len(train) + len(test)) <= 0.4
    for split in (train, test):
        assert set(Counter(e.task for e in split)) == set(datasets.ROUTING_TASKS)
    assert [e.text for e in datasets.load_routing("test")] == [e.text for e in test]
    with pytest.raises(ValueError):
        datasets.load_routing("validation")


# --- the edge: an unreachable Triton ------------------------------------------------------------


async def test_an_unreachable_classifier_is_no_answer_logged_once(caplog) -> None:
    client = InferenceServerClient(f"127.0.0.1:{free_ports(1)[0]}")  # nothing listens there
    try:
        classifier = TaskClassifier(TritonScorer(client), PromptClassifier(timeout_s=0.5))
        with caplog.at_level(logging.INFO, logger="services.router.classifier"):
            for _ in range(3):
                assert await classifier.guess("hello", Deadline.after(5.0)) is None
            assert not await classifier.check()
        logged = [r.getMessage() for r in caplog.records]
        answered = [m for m in logged if "did not answer" in m]
        assert len(answered) == 1 and "TRITON_UNAVAILABLE" in answered[0]
        assert any("does not answer at start-up" in m for m in logged)
    finally:
        await client.close()
