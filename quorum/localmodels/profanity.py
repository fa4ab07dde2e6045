"""Offensive-language scoring with ``alt-profanity-check``.

The model is a linear SVM over TF-IDF features (calibrated to a probability) trained on about
200k public, human-labelled texts: tweets (Davidson et al.) and Wikipedia talk-page comments
(the Jigsaw toxic-comment set). Scores on those corpora are in-sample; never report them as an
evaluation of this model.

This module is pure: no network, no threads, and nothing happens at import time. The
scikit-learn model (a few MB, ~1 s to unpickle) loads on the first call of
:func:`score_texts` and is reused afterwards. Triton's ``profanity_check`` model
(``triton/profanity_check/1/model.py``) is a thin adapter over :func:`score_texts` and
:func:`decode_texts` (from :mod:`quorum.localmodels.texts`, re-exported here).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from quorum.localmodels.texts import check_texts, decode_texts

__all__ = ["decode_texts", "score_texts"]

_Predictor = Callable[[list[str]], Any]


@functools.cache
def _predictor() -> _Predictor:
    # Importing profanity_check unpickles its model and vectorizer: do it once, on first use.
    from profanity_check import predict_prob

    fn: _Predictor = predict_prob
    return fn


def score_texts(texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """The probability (0..1) that each text is offensive, in input order.

    An empty sequence gives an empty array. A bare ``str`` (which is itself a sequence of
    characters) and any item that is not a ``str`` are rejected with InvalidArgument.
    """
    items = check_texts(texts)
    if not items:
        return np.zeros(0, dtype=np.float32)
    probs = np.asarray(_predictor()(items), dtype=np.float32).reshape(-1)
    if probs.shape[0] != len(items):  # a broken model must not shift scores between texts
        raise RuntimeError(f"profanity model gave {probs.shape[0]} scores for {len(items)} texts")
    return np.clip(probs, 0.0, 1.0)
