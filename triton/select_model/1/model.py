"""Triton Python-backend adapter for :class:`quorum.localmodels.routedchat.ModelSelector`:
the first step of ``routed_chat``.

Inputs ``TEXT`` (BYTES) and ``MODEL_SELECT`` (INT32; -1 routes from the prompt) -> outputs
``MODEL`` (BYTES), the registry model's name, and ``REASON`` (BYTES), why. One response per
request; a bad selector gets its own error (NOT_FOUND for an unknown id), the other requests
of the batch their answers.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from quorum import config
from quorum.errors import QuorumError
from quorum.localmodels.routedchat import ModelSelector, triton_error
from quorum.localmodels.texts import decode_texts


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        env = dict(os.environ)
        self.selector = ModelSelector.from_config(config.load(None, env), env)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                texts = decode_texts(pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy())
                select = pb_utils.get_input_tensor_by_name(request, "MODEL_SELECT").as_numpy()
                chosen = [
                    self.selector.select(text, int(s))
                    for text, s in zip(texts, select.reshape(-1), strict=True)
                ]
            except QuorumError as err:
                responses.append(pb_utils.InferenceResponse(error=triton_error(pb_utils, err)))
                continue
            models = np.array([[c.model.encode()] for c in chosen], dtype=np.object_)
            reasons = np.array([[c.reason.encode()] for c in chosen], dtype=np.object_)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("MODEL", models), pb_utils.Tensor("REASON", reasons)]
                )
            )
        return responses

    def finalize(self) -> None:
        pass
