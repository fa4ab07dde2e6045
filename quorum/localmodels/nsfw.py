"""Sexual-content scoring with ``en-prompt-nsfw-pipeline-bow`` (a spaCy 3.8 text classifier).

The package ships a bag-of-words ``textcat`` pipeline (weights inside the wheel, loaded with
the package's own ``load()``; no download) with four mutually exclusive labels:

    safe            nothing sexual
    underage_safe   minors in a non-sexual context ("kids playing in the park"): safe
    adult           sexual content
    cp              sexual content involving minors

The score of a text is ``max(P(adult), P(cp))``: content sexualising minors counts at least
as unsafe as adult content, while ``underage_safe`` never raises the score. The maximum, not
the sum, because the model splits ordinary sex-education texts between ``adult`` and ``cp``
(schools suggest minors): on the texts measured for the registry's cut-off (see
``quorum/defaults.toml``, ``[models.nsfw-check]``), the sum flagged more non-sexual texts and
caught no more explicit ones. The model was trained on image-generation prompts, so it knows
sexual vocabulary well and context little: medical texts about breasts score near the cut-off.

This module is pure: no network, no threads, nothing at import time. The pipeline (~8 MB,
under a second) loads on the first call of :func:`score_texts` and is reused. Triton's
``nsfw_check`` model (``triton/nsfw_check/1/model.py``) is a thin adapter over it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from quorum.localmodels.texts import check_texts, decode_texts

__all__ = ["LABELS", "MAX_TEXT_CHARS", "decode_texts", "score_texts", "use_gpu"]

#: the labels the pipeline must have; any other set means another model and is refused
LABELS = frozenset({"safe", "underage_safe", "adult", "cp"})
#: the labels whose probability makes a text unsafe (the score is their maximum)
UNSAFE_LABELS = ("adult", "cp")
#: longer texts are refused, not cut (a cut text would be another text); far above the
#: voter's default limit of 16,000 characters, and well below spaCy's own (1,000,000)
MAX_TEXT_CHARS = 100_000


@functools.cache
def _pipeline() -> Any:
    import en_prompt_nsfw_pipeline_bow

    nlp = en_prompt_nsfw_pipeline_bow.load()
    labels = set(nlp.get_pipe("textcat").labels)
    if labels != LABELS:
        raise RuntimeError(f"unexpected NSFW pipeline labels {sorted(labels)}")
    return nlp


def use_gpu(device_id: int) -> bool:
    """Run the pipeline on GPU ``device_id`` when spaCy can (CuPy installed); call before the
    first :func:`score_texts`. Returns whether the GPU is used; False on a CPU-only install."""
    from thinc.api import prefer_gpu

    return bool(prefer_gpu(device_id))


def score_texts(texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """``max(P(adult), P(cp))`` (0..1) for each text, in input order.

    An empty sequence gives an empty array. A bare ``str``, an item that is not a ``str``
    and an item longer than :data:`MAX_TEXT_CHARS` are rejected with InvalidArgument.
    """
    items = check_texts(texts, max_chars=MAX_TEXT_CHARS)
    if not items:
        return np.zeros(0, dtype=np.float32)
    docs = list(_pipeline().pipe(items))
    if len(docs) != len(items):  # a broken pipeline must not shift scores between texts
        raise RuntimeError(f"NSFW pipeline gave {len(docs)} results for {len(items)} texts")
    scores = np.array(
        [max(float(doc.cats[label]) for label in UNSAFE_LABELS) for doc in docs],
        dtype=np.float32,
    )
    return np.clip(scores, 0.0, 1.0)
