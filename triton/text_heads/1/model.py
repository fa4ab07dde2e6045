"""Triton Python-backend adapter for :mod:`quorum.localmodels.embedding` (MiniLM + heads).

Input ``TEXT`` (BYTES, [batch, 1], UTF-8) -> one output per category ``SCORE_<CATEGORY>``
(FP32, [batch, 1]): the probability that each text is in that category, from the heads in
``heads.json`` beside this file (:class:`quorum.localmodels.serving.HeadsModel`: each output in
the config must have a head, or the model refuses to load; the texts of a dynamic batch are
encoded in one call, then split back, one response per request with the outputs it asked
for). The encoder is MiniLM on ONNX Runtime (:mod:`quorum.localmodels.onnxencoder`), made at
initialize for this instance: CUDA on a GPU instance when the onnxruntime-gpu wheel is
installed, else the CPU, with the config's thread counts. The stub imports ``quorum`` from the
environment's site-packages (it ignores PYTHONPATH).
"""

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from quorum.localmodels.embedding import Heads
from quorum.localmodels.onnxencoder import for_instance
from quorum.localmodels.serving import heads_model

TritonPythonModel = heads_model(
    pb_utils,
    what="text_heads",
    load=lambda folder: Heads.load(folder / "heads.json"),
    features_for=for_instance,
)
