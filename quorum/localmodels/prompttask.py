"""The router's prompt classifier: which task (the brief's code / quick / analysis / complex) a
prompt is, from its all-MiniLM-L6-v2 embedding (:mod:`quorum.localmodels.embedding`).

One multinomial logistic regression over the embedding, trained by
``scripts/train_prompt_task.py`` on the train split of ``data/routing_prompts.csv`` and
committed as ``triton/prompt_task/1/head.json``: its ``[384, tasks]`` weights, its biases, a
temperature fitted so that its probabilities are calibrated (cross-validated on the train
split), and ``min_confidence``, the probability from which the router takes its choice over
the keyword rules (fitted on the same cross-validated predictions; ``[routing]
classifier_min_confidence`` must equal it). :meth:`TaskHead.score` gives ``[n, tasks]``
probabilities that sum to 1 per row.

It has the shape the shared Triton body needs (:class:`quorum.localmodels.serving.HeadsModel`:
``categories`` and ``score``), so ``triton/prompt_task`` serves one ``SCORE_<TASK>`` output per
task with the same encoder code as ``text_heads``. Pure: nothing happens at import time.
Errors: an unusable head file is :class:`~quorum.localmodels.embedding.HeadsError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quorum.errors import InvalidArgument
from quorum.localmodels.embedding import (
    DIM,
    ENCODER_NAME,
    F32,
    HeadsError,
    encode,
    read_head_file,
)

__all__ = ["HEAD_FILE", "TaskHead"]

#: the head's file name inside the Triton model's version folder
HEAD_FILE = "head.json"


class TaskHead:
    """softmax((embedding . weights + bias) / temperature) over ``tasks``."""

    def __init__(
        self,
        tasks: Sequence[str],
        weights: F32,
        bias: F32,
        *,
        temperature: float = 1.0,
        min_confidence: float = 0.5,
        info: Mapping[str, Any] | None = None,
        dim: int = DIM,
    ) -> None:
        k = len(tasks)
        if k < 2 or len(set(tasks)) != k or not all(isinstance(t, str) and t for t in tasks):
            raise HeadsError(f"a task head needs two or more distinct task names, not {tasks}")
        w = np.asarray(weights, dtype=np.float32)
        b = np.asarray(bias, dtype=np.float32)
        if w.shape != (dim, k) or b.shape != (k,):
            raise HeadsError(
                f"weights {list(w.shape)} and bias {list(b.shape)} do not fit {k} tasks over {dim}"
            )
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise HeadsError("the task head has non-finite weights")
        if not (math.isfinite(temperature) and temperature > 0):
            raise HeadsError(f"temperature {temperature} is not a positive number")
        if not 0.0 <= min_confidence <= 1.0:
            raise HeadsError(f"min_confidence {min_confidence} is not in [0, 1]")
        self.tasks: tuple[str, ...] = tuple(tasks)
        self.dim = dim
        self.weights, self.bias = w, b
        self.temperature = float(temperature)
        self.min_confidence = float(min_confidence)
        self.info: dict[str, Any] = dict(info or {})

    @property
    def categories(self) -> tuple[str, ...]:
        """The tasks: the columns of :meth:`score` (the name :class:`HeadsModel` reads)."""
        return self.tasks

    def logits(self, embeddings: Any) -> F32:
        e = np.asarray(embeddings, dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise InvalidArgument(f"expected [n, {self.dim}] features, got shape {list(e.shape)}")
        out: F32 = (e @ self.weights + self.bias) / np.float32(self.temperature)
        return out

    def score(self, embeddings: Any) -> F32:
        """``[n, len(tasks)]`` probabilities for ``[n, dim]`` embeddings; each row sums to 1."""
        z = self.logits(embeddings)
        z = z - z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        out: F32 = z.astype(np.float32, copy=False)
        return out

    def score_texts(self, texts: Sequence[str]) -> F32:
        """Encode ``texts`` with the packaged encoder and score them."""
        return self.score(encode(texts))

    @classmethod
    def load(cls, path: Path) -> TaskHead:
        """Read a head file written by :meth:`save`."""
        data = read_head_file(path)
        try:
            tasks = data["tasks"]
            if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
                raise TypeError("tasks must be a list of names")
            weights = np.asarray(data["weights"], dtype=np.float32).T  # stored one row a task
            bias = np.asarray(data["bias"], dtype=np.float32)
            temperature = float(data["temperature"])
            min_confidence = float(data["min_confidence"])
        except (KeyError, TypeError, ValueError) as exc:
            raise HeadsError(f"{path}: malformed task head ({exc})") from None
        keys = ("encoder", "dim", "tasks", "weights", "bias", "temperature", "min_confidence")
        info = {k: v for k, v in data.items() if k not in keys}
        return cls(
            tasks, weights, bias, temperature=temperature, min_confidence=min_confidence,
            info=info,
        )  # fmt: skip

    def save(self, path: Path) -> None:
        """Write the head as JSON (7 significant digits: float32 precision), the weights one
        line per task, so the file diffs by task."""
        doc: dict[str, Any] = {
            "encoder": ENCODER_NAME,
            "dim": self.dim,
            "tasks": list(self.tasks),
            "temperature": float(f"{self.temperature:.6g}"),
            "min_confidence": round(self.min_confidence, 4),
            **self.info,
            "bias": [float(f"{x:.7g}") for x in self.bias.tolist()],
        }
        rows = ",\n".join(
            "  " + json.dumps([float(f"{x:.7g}") for x in col.tolist()]) for col in self.weights.T
        )
        text = json.dumps(doc, indent=1)[:-2] + ',\n "weights": [\n' + rows + "\n ]\n}\n"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
