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


class LinearScorer:
    """alt-profanity-check's model computed in one pass, with the same result as its
    ``predict_prob`` (to float rounding; a test compares them).

    The package's model is scikit-learn's ``CalibratedClassifierCV`` over ``LinearSVC``: k
    folds, each a linear decision ``w_i . x + c_i`` over the TF-IDF vector ``x`` and a
    sigmoid calibration ``1 / (1 + exp(a_i d + b_i))``, averaged. scikit-learn validates its
    input and loops over the folds in Python on every call (about 15-20 ms a call here,
    whatever the batch), and re-checks its stop words on every transform (~2 ms); here each
    text is a few array operations over its own terms and the k folds' weights at once.
    """

    def __init__(self, vectorizer: Any, model: Any) -> None:
        folds = model.calibrated_classifiers_
        tfidf = (vectorizer.norm, vectorizer.use_idf, vectorizer.sublinear_tf, vectorizer.binary)
        if tfidf != ("l2", True, False, False) or not all(
            f.method == "sigmoid" and len(f.calibrators) == 1 and list(f.classes) == [0, 1]
            for f in folds
        ):
            raise ValueError("not the calibrated linear TF-IDF model this scorer computes")
        self._analyzer = vectorizer.build_analyzer()
        self._vocabulary: dict[str, int] = vectorizer.vocabulary_
        self._idf = np.asarray(vectorizer.idf_, dtype=np.float64)
        coef = np.stack([f.estimator.coef_.ravel() for f in folds], axis=1)
        # the IDF folded into the weights: x . w_i = sum(count * idf * w_i) / norm
        self._weights = self._idf[:, None] * coef
        self._intercepts = np.array([f.estimator.intercept_[0] for f in folds])
        self._a = np.array([f.calibrators[0].a_ for f in folds])
        self._b = np.array([f.calibrators[0].b_ for f in folds])

    def __call__(self, texts: list[str]) -> npt.NDArray[np.float64]:
        decisions = np.empty((len(texts), len(self._intercepts)))
        for i, text in enumerate(texts):
            counts: dict[int, int] = {}
            for token in self._analyzer(text):
                j = self._vocabulary.get(token)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            if not counts:  # no known term: TF-IDF is the zero vector
                decisions[i] = self._intercepts
                continue
            cols = np.fromiter(counts, dtype=np.intp, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            norm = float(np.sqrt(np.sum((tf * self._idf[cols]) ** 2)))
            decisions[i] = (tf @ self._weights[cols]) / norm + self._intercepts
        probs = 1.0 / (1.0 + np.exp(self._a * decisions + self._b))
        out: npt.NDArray[np.float64] = probs.mean(axis=1)
        return out


@functools.cache
def _predictor() -> _Predictor:
    # Importing profanity_check unpickles its model and vectorizer: do it once, on first use.
    from profanity_check import profanity_check as package

    return LinearScorer(package.vectorizer, package.model)


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
