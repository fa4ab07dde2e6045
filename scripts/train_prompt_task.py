"""Train the router's prompt classifier (``triton/prompt_task``) and compare it with the rules.

    .venv/bin/python scripts/train_prompt_task.py          # train, print the figures, write
    .venv/bin/python scripts/train_prompt_task.py --eval   # the committed head's figures

One multinomial logistic regression over all-MiniLM-L6-v2 embeddings
(:class:`quorum.localmodels.prompttask.TaskHead`), on the train split of
``data/routing_prompts.csv`` (``quorum.datasets.load_routing``; the split is by hash, see
``data/README.md``). Everything is fitted on 5-fold cross-validated predictions of the train
split, never on the test split:

- C (the inverse regularisation strength): the one with the lowest log loss;
- the temperature that divides the logits: the one with the lowest log loss of those
  predictions (calibration: a confidence of 0.8 is right about 80% of the time);
- ``min_confidence``: the classifier's probability from which the router takes its task over
  the keyword rules', the one with the best accuracy of that combination
  (:func:`services.router.routing.decide`, the router's own choice).

Then it prints, on the test split, the accuracy per task of the keyword rules (the router's own
matcher over ``[routing]`` of ``quorum/defaults.toml``), of the classifier alone, and of the
two combined, and writes ``triton/prompt_task/1/head.json``. Embeddings are cached like
``scripts/train_heads.py``'s (:func:`train_heads.encode_cached`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from train_heads import encode_cached

from quorum import config, datasets
from quorum.datasets import ROUTING_TASKS, TaskExample
from quorum.localmodels.prompttask import HEAD_FILE, TaskHead
from quorum.registry import load_registry
from services.router.routing import AutoRouting, TaskGuess, auto_routing, decide

ROOT = Path(__file__).resolve().parents[1]
HEAD_PATH = ROOT / "triton" / "prompt_task" / "1" / HEAD_FILE
CS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
TEMPERATURES = np.round(np.arange(0.3, 3.001, 0.05), 2)
CONFIDENCES = np.round(np.arange(0.0, 1.0001, 0.01), 2)

F32 = npt.NDArray[np.float32]


def rules() -> AutoRouting:
    """The router's keyword rules as the embedded configuration sets them."""
    data = config.defaults()
    auto = auto_routing(data, load_registry(data))
    assert auto is not None, "[routing] auto is off in quorum/defaults.toml"
    return auto


def _softmax(z: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def _log_loss(p: npt.NDArray[Any], y: npt.NDArray[np.int64]) -> float:
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def _model(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000)  # multinomial (softmax) with lbfgs


def _cv_logits(x: F32, y: npt.NDArray[np.int64], c: float) -> npt.NDArray[np.float64]:
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    z: npt.NDArray[np.float64] = cross_val_predict(
        _model(c), x, y, cv=folds, method="decision_function"
    )
    return z


def combined(
    auto: AutoRouting, texts: Sequence[str], probs: npt.NDArray[Any], min_confidence: float
) -> list[str]:
    """The router's task for each text: :func:`decide` over the rules and the classifier."""
    out = []
    for text, row in zip(texts, probs, strict=True):
        task, why = auto.rule_task(text)
        best = int(np.argmax(row))
        guess = TaskGuess(ROUTING_TASKS[best], float(row[best]))
        out.append(decide(task, why, guess, min_confidence=min_confidence, routed=auto.routed)[0])
    return out


def fit(
    x: F32, y: npt.NDArray[np.int64], texts: Sequence[str], auto: AutoRouting
) -> tuple[TaskHead, dict[str, Any]]:
    """The head and what was chosen (see the module docstring)."""
    best_c, best_z, best_loss = CS[0], None, float("inf")
    for c in CS:
        z = _cv_logits(x, y, c)
        loss = _log_loss(_softmax(z), y)
        if loss < best_loss:
            best_c, best_z, best_loss = c, z, loss
    assert best_z is not None
    losses = [_log_loss(_softmax(best_z / t), y) for t in TEMPERATURES]
    temperature = float(TEMPERATURES[int(np.argmin(losses))])
    p = _softmax(best_z / temperature)
    truth = [ROUTING_TASKS[i] for i in y]
    accuracy = [_per_task(combined(auto, texts, p, float(m)), truth)["all"] for m in CONFIDENCES]
    # the highest of the best: where the rules do as well, they decide
    best = max(accuracy)
    min_confidence = float(max(m for m, a in zip(CONFIDENCES, accuracy, strict=True) if a == best))
    model = _model(best_c).fit(x, y)
    order = [list(model.classes_).index(i) for i in range(len(ROUTING_TASKS))]
    head = TaskHead(
        ROUTING_TASKS,
        model.coef_[order].T.astype(np.float32),
        model.intercept_[order].astype(np.float32),
        temperature=temperature,
        min_confidence=min_confidence,
    )
    chosen = {
        "c": best_c,
        "cv_log_loss": round(min(losses), 4),
        "cv_accuracy": round(float((p.argmax(axis=1) == y).mean()), 3),
        "cv_combined_accuracy": round(best, 3),
    }
    return head, chosen


def _per_task(pred: Sequence[str], truth: Sequence[str]) -> dict[str, float]:
    pairs = list(zip(pred, truth, strict=True))
    out = {t: float(np.mean([p == t for p, g in pairs if g == t])) for t in ROUTING_TASKS}
    out["all"] = float(np.mean([p == g for p, g in pairs]))
    return out


def report(
    head: TaskHead, test: Sequence[TaskExample], x: F32, auto: AutoRouting
) -> dict[str, Any]:
    """Accuracy per task on the test split: rules, classifier, combined; printed and returned."""
    texts = [e.text for e in test]
    truth = [e.task for e in test]
    probs = head.score(x)
    deciders: dict[str, Callable[[], list[str]]] = {
        "rules": lambda: [auto.rule_task(t)[0] for t in texts],
        "classifier": lambda: [head.tasks[i] for i in probs.argmax(axis=1)],
        "combined": lambda: combined(auto, texts, probs, head.min_confidence),
    }
    figures = {name: _per_task(run(), truth) for name, run in deciders.items()}
    counts = {t: truth.count(t) for t in ROUTING_TASKS}
    print(f"test split of data/routing_prompts.csv: {len(test)} prompts")
    print(f"{'accuracy':12}" + "".join(f"{t:>10}" for t in (*ROUTING_TASKS, "all")))
    print(f"{'(prompts)':12}" + "".join(f"{counts[t]:>10}" for t in ROUTING_TASKS), end="")
    print(f"{len(test):>10}")
    for name, per in figures.items():
        print(f"{name:12}" + "".join(f"{per[t]:>10.3f}" for t in (*ROUTING_TASKS, "all")))
    confident = probs.max(axis=1) >= head.min_confidence
    print(
        f"combined: the classifier decides {confident.mean():.0%} of the test prompts "
        f"(min_confidence {head.min_confidence:.2f}, temperature {head.temperature:g})"
    )
    return {n: {k: round(v, 3) for k, v in per.items()} for n, per in figures.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, help="embeddings cache (default: quorum's)")
    parser.add_argument("--out", type=Path, default=HEAD_PATH, help="the head file to write")
    parser.add_argument("--eval", action="store_true", help="evaluate --out; train nothing")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cache: Path = args.cache_dir or datasets.default_cache_dir()
    auto = rules()
    test = datasets.load_routing("test")
    x_test = encode_cached([e.text for e in test], cache, "routing-test")
    if args.eval:
        report(TaskHead.load(args.out), test, x_test, auto)
        return 0
    train = datasets.load_routing("train")
    texts = [e.text for e in train]
    x = encode_cached(texts, cache, "routing-train")
    y = np.array([ROUTING_TASKS.index(e.task) for e in train], dtype=np.int64)
    head, chosen = fit(x, y, texts, auto)
    print(
        f"fitted on {len(train)} train prompts: C {chosen['c']}, temperature "
        f"{head.temperature:g}, min_confidence {head.min_confidence:.2f} (cross-validated "
        f"accuracy {chosen['cv_accuracy']:.3f} alone, {chosen['cv_combined_accuracy']:.3f} "
        "with the rules)"
    )
    figures = report(head, test, x_test, auto)
    head.info.update(
        trained_by="scripts/train_prompt_task.py",
        data=f"data/routing_prompts.csv train split ({len(train)} prompts)",
        fitted=chosen,
        test_accuracy=figures,
    )
    head.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
