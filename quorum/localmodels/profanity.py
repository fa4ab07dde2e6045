"""Offensive-language scoring with ``alt-profanity-check``.

The model is a linear SVM over TF-IDF features (calibrated to a probability) trained on about
200k public, human-labelled texts: tweets (Davidson et al.) and Wikipedia talk-page comments
(the Jigsaw toxic-comment set). Scores on those corpora are in-sample; never report them as an
evaluation of this model.

This module is pure: no network, no threads, and nothing happens at import time. The
scikit-learn model (a few MB, ~1 s to unpickle) loads on the first call of
:func:`score_texts` and is reused afterwards. Triton's ``profanity_check`` model
(``triton/profanity_check/1/model.py``) is a thin adapter over these two functions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from quorum.errors import InvalidArgument

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
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise InvalidArgument("texts must be a sequence of strings")
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise InvalidArgument(f"texts[{i}] is {type(t).__name__}, not str")
    if not items:
        return np.zeros(0, dtype=np.float32)
    probs = np.asarray(_predictor()(items), dtype=np.float32).reshape(-1)
    if probs.shape[0] != len(items):  # a broken model must not shift scores between texts
        raise RuntimeError(f"profanity model gave {probs.shape[0]} scores for {len(items)} texts")
    return np.clip(probs, 0.0, 1.0)


def decode_texts(batch: npt.NDArray[Any]) -> list[str]:
    """Turn a Triton BYTES tensor (an object array of ``bytes``) into ``str``, row-major.

    Shapes ``[n]`` and ``[n, 1]`` give ``n`` texts. Invalid UTF-8 is replaced with U+FFFD
    rather than failing the request; ``str`` items pass through unchanged.
    """
    arr = np.asarray(batch)
    if arr.ndim == 2 and arr.shape[1] != 1:
        raise InvalidArgument(f"expected one text per row, got shape {list(arr.shape)}")
    if arr.ndim not in (1, 2):
        raise InvalidArgument(f"expected a [n] or [n, 1] tensor, got shape {list(arr.shape)}")
    out: list[str] = []
    for i, item in enumerate(arr.reshape(-1).tolist()):
        if isinstance(item, bytes | bytearray):
            out.append(bytes(item).decode("utf-8", errors="replace"))
        elif isinstance(item, str):
            out.append(item)
        else:
            raise InvalidArgument(f"text {i} is {type(item).__name__}, not bytes")
    return out
