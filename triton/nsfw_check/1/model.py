"""Triton Python-backend adapter for :mod:`quorum.localmodels.nsfw`.

Input ``TEXT`` (BYTES, [batch, 1], UTF-8) -> output ``SCORE`` (FP32, [batch, 1]): for each
text ``max(P(adult), P(cp))`` from the spaCy ``en_prompt_nsfw_pipeline_bow`` classifier. The
whole dynamic batch goes through ``nlp.pipe`` in one call and is split back, one response per
request (:func:`quorum.localmodels.serving.execute_scoring`); a request holding a text over
``MAX_TEXT_CHARS`` gets its own ``INVALID_ARG`` error.

When Triton places the instance on a GPU (``KIND_AUTO`` on a GPU container) the pipeline runs
there if spaCy can use it (CuPy installed); otherwise, and on the CPU build, on the CPU.

The stub imports ``quorum`` from the environment's site-packages (the project is installed
into it); the stub ignores PYTHONPATH.
"""

from __future__ import annotations

import json
from typing import Any

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from quorum.localmodels.nsfw import MAX_TEXT_CHARS, score_texts, use_gpu
from quorum.localmodels.serving import execute_scoring, output_dtype


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.output_dtype = output_dtype(pb_utils, json.loads(args["model_config"]))
        if args.get("model_instance_kind") == "GPU":
            use_gpu(int(args.get("model_instance_device_id", "0")))
        # Load the spaCy pipeline now, not on the first request.
        score_texts(["warm up"])

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_scoring(
            pb_utils,
            requests,
            score_texts,
            self.output_dtype,
            what="nsfw",
            max_chars=MAX_TEXT_CHARS,
        )

    def finalize(self) -> None:
        pass
