"""Character n-gram heads: a judge of another kind than the sentence-embedding heads.

**Features.** Each text becomes two blocks of hashed features, side by side. The first
(:data:`CHAR_FEATURES` columns) is the bag of its character 2- to 5-grams (within word
boundaries, lower-cased); the second (:data:`WORD_FEATURES` columns) the bag of its words
(lower-cased, two letters or more). Each block is hashed and L2-normalised on its own:
scikit-learn's ``HashingVectorizer``, which is stateless (no vocabulary to ship) and gives the
same buckets on every machine. Where the MiniLM heads (:mod:`quorum.localmodels.embedding`)
see what a text means, these see how it is written: spelling, obfuscation ("fr33 c@sh"),
URLs, e-mail boilerplate, the wording of jailbreak templates. Their errors differ, which is
what a vote needs. Only the heads in :data:`WORD_HEADS` use the word block (the others'
weights there are zero). Words help the spam head on short chat messages, whose few telling
words ("airdrop", "dm") weigh little among their character n-grams: on the test splits its F1
went from 0.81 to 0.83 on chat spam and from 0.93 to 0.94 on e-mail (``scripts/train_heads.py
--kind ngram --eval`` prints the committed heads' figures). Given to every head in a trial,
they made the violence head, trained on a small written set, worse.

**Heads.** One logistic regression per group of categories, trained by
``scripts/train_heads.py --kind ngram`` on the same data and with the same negatives as the
MiniLM heads, kept in ``triton/ngram_heads/1/heads.npz``: the weights as float16 (``[FEATURES,
heads]``), biases and cut-offs as float32, and a JSON document (``meta``) with each head's name,
categories, training data and test metrics. :func:`load` turns it into a
:class:`~quorum.localmodels.embedding.Heads` over ``FEATURES`` dimensions; ``Heads.score``
takes the sparse features as they are.

Pure: nothing happens at import time; scikit-learn (a dependency of alt-profanity-check) is
imported on first use. Errors: an unusable head file is
:class:`~quorum.localmodels.embedding.HeadsError`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quorum.localmodels.embedding import F32, Head, Heads, HeadsError
from quorum.localmodels.texts import check_texts

__all__ = [
    "CHAR_FEATURES",
    "FEATURES",
    "FEATURIZER",
    "WORD_FEATURES",
    "WORD_HEADS",
    "featurize",
    "load",
    "save",
    "score_texts",
]

#: character n-gram buckets: 2^16 keeps the head file under a megabyte; collisions cost
#: little here
CHAR_FEATURES = 2**16
#: word buckets, after the character ones
WORD_FEATURES = 2**15
#: the width of :func:`featurize`'s rows, and of every head's weights
FEATURES = CHAR_FEATURES + WORD_FEATURES
NGRAMS = (2, 5)
#: the heads whose weights on the word block are not all zero (scripts/train_heads.py)
WORD_HEADS = frozenset({"spam"})
#: what a head file must have been trained on (it is checked on load)
FEATURIZER = (
    f"hashed char_wb {NGRAMS[0]}-{NGRAMS[1]}-grams, {CHAR_FEATURES} buckets, l2"
    f" | hashed words, {WORD_FEATURES} buckets, l2"
)


def _hashing_vectorizer(width: int, **analysis: Any) -> Any:
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        n_features=width,
        alternate_sign=False,
        norm="l2",
        lowercase=True,
        dtype=np.float32,
        **analysis,
    )


@functools.cache
def _vectorizer() -> Any:
    """The character block, as scikit-learn computes it (:func:`featurize` does the same)."""
    return _hashing_vectorizer(CHAR_FEATURES, analyzer="char_wb", ngram_range=NGRAMS)


@functools.cache
def _word_vectorizer() -> Any:
    """The word block, as scikit-learn computes it (:func:`featurize` does the same)."""
    return _hashing_vectorizer(WORD_FEATURES, analyzer="word")


@functools.cache
def _hashing() -> tuple[Callable[[str], list[str]], Callable[[str], list[str]], Callable[..., Any]]:
    # HashingVectorizer.transform validates its parameters, builds its analyzer and hasher and
    # checks its output on every call (~2 ms here, whatever the batch): do that once, and
    # call the hashing core it calls (pinned scikit-learn; a test holds the two equal)
    from sklearn.feature_extraction._hashing_fast import transform as hashing

    return _vectorizer().build_analyzer(), _word_vectorizer().build_analyzer(), hashing


def _block(texts: Sequence[str], analyzer: Callable[[str], list[str]], width: int) -> Any:
    """``[n, width]`` CSR: the hashed counts of each text's grams, each row L2-normalised."""
    from scipy.sparse import csr_matrix

    *_, hashing = _hashing()
    indices, indptr, values = hashing(
        (((gram, 1) for gram in analyzer(t)) for t in texts), width, np.float32, False, seed=0
    )
    x = csr_matrix((values, indices, indptr), shape=(len(texts), width), dtype=np.float32)
    x.sum_duplicates()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1), dtype=np.float32).ravel())
    norms[norms == 0] = 1.0
    return csr_matrix(x.multiply(1.0 / norms[:, None]), dtype=np.float32)


def featurize(texts: Sequence[str]) -> Any:
    """A ``[n, FEATURES]`` scipy CSR matrix: each text's hashed character n-gram frequencies
    (the first :data:`CHAR_FEATURES` columns, what :func:`_vectorizer`'s ``transform`` gives)
    and its hashed word frequencies (the rest, what :func:`_word_vectorizer`'s gives), each
    block L2-normalised on its own."""
    from scipy.sparse import hstack

    chars, words, _ = _hashing()
    return hstack(
        [_block(texts, chars, CHAR_FEATURES), _block(texts, words, WORD_FEATURES)],
        format="csr",
        dtype=np.float32,
    )


def score_texts(heads: Heads, texts: Sequence[str]) -> F32:
    """``[n, len(heads.categories)]`` probabilities for ``texts`` (checked: strings, bounded)."""
    check_texts(texts)
    return heads.score(featurize(texts))


def save(heads: Heads, path: Path, *, extra: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Write ``heads`` as ``.npz``; ``extra`` adds documentation fields per head name."""
    meta = {
        "featurizer": FEATURIZER,
        **heads.info,
        "heads": [
            {
                "name": h.name,
                "categories": list(h.categories),
                **dict((extra or {}).get(h.name, {})),
            }
            for h in heads.heads
        ],
    }
    with Path(path).open("wb") as f:
        np.savez_compressed(
            f,
            weights=np.stack([h.weights for h in heads.heads], axis=1).astype(np.float16),
            bias=np.array([h.bias for h in heads.heads], dtype=np.float32),
            cutoff=np.array([h.cutoff for h in heads.heads], dtype=np.float32),
            meta=np.array(json.dumps(meta, indent=1)),
        )


def load(path: Path) -> Heads:
    """Read a head file written by :func:`save`."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            weights = data["weights"].astype(np.float32)
            bias, cutoff = data["bias"], data["cutoff"]
            meta = json.loads(str(data["meta"]))
    except FileNotFoundError:
        raise HeadsError(f"no head file at {path}") from None
    except (OSError, KeyError, ValueError) as exc:
        raise HeadsError(f"cannot read head file {path}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("featurizer") != FEATURIZER:
        raise HeadsError(f"{path}: heads for other features ({meta.get('featurizer')!r})")
    entries = meta.get("heads")
    if not isinstance(entries, list) or weights.ndim != 2 or weights.shape[1] != len(entries):
        raise HeadsError(f"{path}: the weights do not match the heads listed")
    if bias.shape != (len(entries),) or cutoff.shape != (len(entries),):
        raise HeadsError(f"{path}: one bias and one cut-off per head expected")
    heads = []
    for j, h in enumerate(entries):
        try:
            heads.append(
                Head(
                    name=str(h["name"]),
                    categories=tuple(str(c) for c in h["categories"]),
                    weights=weights[:, j],
                    bias=float(bias[j]),
                    cutoff=float(round(float(cutoff[j]), 4)),
                )
            )
        except (KeyError, TypeError) as exc:
            raise HeadsError(f"{path}: head {j} is malformed ({exc})") from None
    info = {k: v for k, v in meta.items() if k not in ("heads", "featurizer")}
    return Heads(heads, info=info, dim=FEATURES)
