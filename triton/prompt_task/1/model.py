"""Triton Python-backend adapter for :mod:`quorum.localmodels.prompttask` (the router's
prompt classifier: MiniLM embeddings + a multinomial head over the brief's tasks).

Input ``TEXT`` (BYTES, [batch, 1], UTF-8) -> one output per task ``SCORE_<TASK>`` (FP32,
[batch, 1]): the probability that each prompt is that task, from ``head.json`` beside this
file. The body is the head judges' (:class:`quorum.localmodels.serving.HeadsModel`): each output
in the config must be a task of the head, the texts of a dynamic batch are encoded in one call,
the encoder loads at initialize. The stub imports ``quorum`` from the environment's
site-packages (it ignores PYTHONPATH).
"""

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from quorum.localmodels.embedding import encode
from quorum.localmodels.prompttask import HEAD_FILE, TaskHead
from quorum.localmodels.serving import heads_model

TritonPythonModel = heads_model(
    pb_utils,
    what="prompt_task",
    load=lambda folder: TaskHead.load(folder / HEAD_FILE),
    features=encode,  # numpy: on the host whatever instance Triton gives it
)
