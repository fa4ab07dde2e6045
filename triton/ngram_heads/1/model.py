"""Triton Python-backend adapter for :mod:`quorum.localmodels.ngram` (character n-gram heads).

Input ``TEXT`` (BYTES, [batch, 1], UTF-8) -> one output per category ``SCORE_<CATEGORY>``
(FP32, [batch, 1]), from the heads in ``heads.npz`` beside this file
(:class:`quorum.localmodels.serving.HeadsModel`: each output in the config must have a head,
or the model refuses to load; a dynamic batch is scored in one call). The stub imports
``quorum`` from the environment's site-packages (it ignores PYTHONPATH).
"""

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from quorum.localmodels import ngram
from quorum.localmodels.serving import heads_model

TritonPythonModel = heads_model(
    pb_utils,
    what="ngram_heads",
    load=lambda folder: ngram.load(folder / "heads.npz"),
    features=ngram.featurize,
)
