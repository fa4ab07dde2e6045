"""Triton Python-backend adapter for :mod:`quorum.localmodels.profanity`.

Input ``TEXT`` (BYTES, [batch, 1], UTF-8) -> output ``SCORE`` (FP32, [batch, 1]): the
probability that each text is offensive. The texts of all requests in a dynamic batch are
scored in one call, then split back: one response per request, in request order. A request
that cannot be read gets its own error response; the others still get their scores.

The stub imports ``quorum`` from the environment's site-packages (the project is installed
into it); the stub ignores PYTHONPATH.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from quorum.errors import InvalidArgument
from quorum.localmodels.profanity import decode_texts, score_texts


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.input_name = "TEXT"
        self.output_name = "SCORE"
        out_cfg = pb_utils.get_output_config_by_name(config, self.output_name)
        if out_cfg is None:
            raise pb_utils.TritonModelException("config has no SCORE output")
        self.output_dtype = pb_utils.triton_string_to_numpy(out_cfg["data_type"])
        # Load the scikit-learn model now, not on the first request.
        score_texts(["warm up"])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        texts: list[str] = []
        spans: list[tuple[int, int, int]] = []  # (request index, start, end) into texts
        for i, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
            if tensor is None:
                responses[i] = _error("input TEXT is missing", pb_utils.TritonError.INVALID_ARG)
                continue
            try:
                decoded = decode_texts(tensor.as_numpy())
            except InvalidArgument as exc:
                responses[i] = _error(exc.message, pb_utils.TritonError.INVALID_ARG)
                continue
            spans.append((i, len(texts), len(texts) + len(decoded)))
            texts.extend(decoded)

        try:
            scores = score_texts(texts)
        except Exception:  # a model failure fails this batch, never the server
            for i, _, _ in spans:
                responses[i] = _error("profanity model failed", pb_utils.TritonError.INTERNAL)
            return responses

        for i, start, end in spans:
            out = scores[start:end].reshape(-1, 1).astype(self.output_dtype, copy=False)
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(self.output_name, np.ascontiguousarray(out))]
            )
        return responses

    def finalize(self) -> None:
        pass


def _error(message: str, code: int) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
