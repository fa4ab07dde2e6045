"""Triton Python-backend adapter for :mod:`quorum.localmodels.embedding` (MiniLM + heads).

Input ``TEXT`` (BYTES, [batch, 1], UTF-8) -> one output per category ``SCORE_<CATEGORY>``
(FP32, [batch, 1]): the probability that each text is in that category, from the heads in
``heads.json`` beside this file. The outputs come from the model config; each must have a head,
or the model refuses to load. The texts of all requests in a dynamic batch are encoded in one
call, then split back (:func:`quorum.localmodels.serving.execute_scoring`): one response per
request, in request order, with only the outputs that request asked for. A request that cannot
be read gets its own error response; the others still get their scores.

The stub imports ``quorum`` from the environment's site-packages (the project is installed
into it); the stub ignores PYTHONPATH.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from quorum.localmodels.embedding import Heads, HeadsError, device_for, encode
from quorum.localmodels.serving import execute_scoring

_PREFIX = "SCORE_"


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        try:
            heads = Heads.load(folder / "heads.json")
        except HeadsError as exc:
            raise pb_utils.TritonModelException(str(exc)) from None
        # output name -> column of Heads.score
        self.columns: dict[str, int] = {}
        for out in config["output"]:
            name = out["name"]
            category = name.removeprefix(_PREFIX).lower()
            if not name.startswith(_PREFIX) or category not in heads.categories:
                raise pb_utils.TritonModelException(
                    f"output {name} has no head in heads.json (heads: {list(heads.categories)})"
                )
            if pb_utils.triton_string_to_numpy(out["data_type"]) is not np.float32:
                raise pb_utils.TritonModelException(f"output {name} must be TYPE_FP32")
            self.columns[name] = heads.categories.index(category)
        self.heads = heads
        kind = args.get("model_instance_kind", "CPU")
        self.device = device_for(kind)
        pb_utils.Logger.log_info(
            f"text_heads: {kind} instance, encoder on {self.device}, "
            f"categories {','.join(heads.categories)}"
        )
        # Load the encoder now (weights, tokenizer), not on the first request.
        encode(["warm up"])

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_scoring(
            pb_utils,
            requests,
            lambda texts: self.heads.score(encode(texts)),
            np.float32,
            what="text_heads",
            outputs=self.columns,
        )

    def finalize(self) -> None:
        pass
