"""The character n-gram heads (quorum.localmodels.ngram), without Triton.

The heads are the committed ones in triton/ngram_heads/1/heads.npz, trained on
quorum.datasets train splits by scripts/train_heads.py --kind ngram. These sentences are
ours, not from any of those sets. The registry's cut-offs are checked with the other head
judge's, in test_embedding.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quorum.errors import InvalidArgument
from quorum.localmodels import ngram
from quorum.localmodels.embedding import Head, Heads, HeadsError

ROOT = Path(__file__).resolve().parents[2]
HEADS_FILE = ROOT / "triton" / "ngram_heads" / "1" / "heads.npz"
SPAM = "CONGRATULATIONS!!! You have WON a FREE iPhone, click http://prize-claim.example now"
BENIGN = "Could you recommend a good recipe for a vegetable lasagne?"


@pytest.fixture(scope="module")
def heads() -> Heads:
    return ngram.load(HEADS_FILE)


def _block_norms(x: Any) -> tuple[np.ndarray, np.ndarray]:
    chars, words = x[:, : ngram.CHAR_FEATURES], x[:, ngram.CHAR_FEATURES :]
    return (
        np.sqrt(np.asarray(chars.multiply(chars).sum(axis=1))).ravel(),
        np.sqrt(np.asarray(words.multiply(words).sum(axis=1))).ravel(),
    )


def test_features_are_two_sparse_unit_blocks_and_the_same_every_time() -> None:
    x = ngram.featurize([BENIGN, SPAM, "", "!"])
    assert x.shape == (4, ngram.FEATURES) == (4, ngram.CHAR_FEATURES + ngram.WORD_FEATURES)
    chars, words = _block_norms(x)
    assert chars[:2] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert words[:2] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert chars[2] == words[2] == 0.0  # no n-grams, no features
    assert chars[3] == pytest.approx(1.0, abs=1e-5) and words[3] == 0.0  # "!" is no word
    again = ngram.featurize([BENIGN, SPAM, "", "!"])
    assert (x != again).nnz == 0
    # lower-cased: case alone changes nothing
    assert (ngram.featurize([SPAM.lower()]) != x[1]).nnz == 0


def test_features_equal_the_hashing_vectorizers() -> None:
    """featurize calls the vectorizers' hashing core itself (their transform costs ~2 ms a
    call in checks): the same blocks, to float32 rounding, for all kinds of text."""
    texts = ["you are an idiot", "", " ", "a", "Hello, WORLD!! 😀", "ＦＵＬＬ width", "x" * 5000]
    texts += ["\n".join(["línea", "Жж", "漢字 かな", "tab\there"]), "spam spam spam http://x.y/z"]
    ours = ngram.featurize(texts)
    blocks = (
        (ours[:, : ngram.CHAR_FEATURES], ngram._vectorizer().transform(texts)),
        (ours[:, ngram.CHAR_FEATURES :], ngram._word_vectorizer().transform(texts)),
    )
    for mine, theirs in blocks:
        assert mine.shape == theirs.shape and mine.dtype == theirs.dtype == np.float32
        assert (mine != theirs).nnz == 0 or abs(mine - theirs).max() < 1e-6
        assert mine.nnz == theirs.nnz


def test_only_the_word_heads_weigh_words(heads: Heads) -> None:
    assert {h.name for h in heads.heads} >= ngram.WORD_HEADS
    for h in heads.heads:
        on_words = np.count_nonzero(h.weights[ngram.CHAR_FEATURES :])
        assert (on_words > 0) == (h.name in ngram.WORD_HEADS), h.name
        assert np.count_nonzero(h.weights[: ngram.CHAR_FEATURES]) > 0


def test_the_committed_heads_cover_every_category_with_cutoffs_in_range(heads: Heads) -> None:
    assert set(heads.categories) == {
        "hate",
        "harassment",
        "spam",
        "injection",
        "violence",
        "self_harm",
        "adult",
    }
    assert heads.dim == ngram.FEATURES
    assert all(0.0 < c < 1.0 for c in heads.cutoffs)
    assert HEADS_FILE.stat().st_size < 1_500_000  # small enough to commit


def test_scores_tell_spam_from_a_question(heads: Heads) -> None:
    spam, benign = ngram.score_texts(heads, [SPAM, BENIGN])
    col = heads.categories.index("spam")
    assert spam[col] >= heads.cutoff("spam") > benign[col]
    assert not heads.flags(np.array([benign])).any()


def test_texts_are_checked(heads: Heads) -> None:
    with pytest.raises(InvalidArgument):
        ngram.score_texts(heads, [b"bytes"])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument):
        heads.score(np.zeros((1, 384), dtype=np.float32))  # embeddings are not n-grams


def test_save_load_round_trip_and_refusals(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=ngram.FEATURES).astype(np.float16).astype(np.float32)
    made = Heads(
        [Head("spam", ("spam",), w, -0.25, 0.4)], info={"trained_by": "test"}, dim=ngram.FEATURES
    )
    path = tmp_path / "h.npz"
    ngram.save(made, path, extra={"spam": {"c": 3.0}})
    back = ngram.load(path)
    assert back.categories == ("spam",)
    assert back.info == {"trained_by": "test"}
    assert back.cutoff("spam") == pytest.approx(0.4)
    x = ngram.featurize([SPAM, BENIGN])
    assert back.score(x) == pytest.approx(made.score(x), abs=1e-6)

    with pytest.raises(HeadsError, match="no head file"):
        ngram.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(HeadsError, match="cannot read"):
        ngram.load(tmp_path / "junk.npz")
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        arrays = {k: data[k] for k in ("weights", "bias", "cutoff")}
    meta["featurizer"] = "word unigrams"
    other = tmp_path / "other.npz"
    np.savez(other, meta=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(HeadsError, match="other features"):
        ngram.load(other)
