"""Triton Python-backend adapter for :mod:`quorum.localmodels.profanity`.

Input ``TEXT`` (BYTES, [batch, 1], UTF-8) -> output ``SCORE`` (FP32, [batch, 1]): the
probability that each text is offensive. The whole dynamic batch is scored in one call and
split back, one response per request (:func:`quorum.localmodels.serving.execute_scoring`).

The stub imports ``quorum`` from the environment's site-packages (the project is installed
into it); the stub ignores PYTHONPATH.
"""

from __future__ import annotations

import json
from typing import Any

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from quorum.localmodels.profanity import score_texts
from quorum.localmodels.serving import execute_scoring, output_dtype


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.output_dtype = output_dtype(pb_utils, json.loads(args["model_config"]))
        # Load the scikit-learn model now, not on the first request.
        score_texts(["warm up"])

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_scoring(pb_utils, requests, score_texts, self.output_dtype, what="profanity")

    def finalize(self) -> None:
        pass
