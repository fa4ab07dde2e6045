"""Triton Python-backend adapter for :mod:`quorum.localmodels.embedding` (MiniLM + heads).

Input ``TEXT`` (BYTES, [batch, 1], UTF-8) -> one output per category ``SCORE_<CATEGORY>``
(FP32, [batch, 1]): the probability that each text is in that category, from the heads in
``heads.json`` beside this file (:class:`quorum.localmodels.serving.HeadsModel`: each output in
the config must have a head, or the model refuses to load). The texts of all requests in a
dynamic batch are encoded in one call, then split back: one response per request, in request
order, with only the outputs that request asked for. A request that cannot be read gets its
own error response; the others still get their scores.

The stub imports ``quorum`` from the environment's site-packages (the project is installed
into it); the stub ignores PYTHONPATH.
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from quorum.localmodels.embedding import Heads, device_for, encode
from quorum.localmodels.serving import HeadsModel


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        # the encoder loads here (weights, tokenizer: the warm-up), not on the first request
        self.model = HeadsModel(
            pb_utils,
            args,
            what="text_heads",
            load=lambda folder: Heads.load(folder / "heads.json"),
            features=encode,
        )
        kind = args.get("model_instance_kind", "CPU")
        pb_utils.Logger.log_info(f"text_heads: the encoder computes on {device_for(kind)}")

    def execute(self, requests: list[Any]) -> list[Any]:
        return self.model.execute(requests)

    def finalize(self) -> None:
        pass
