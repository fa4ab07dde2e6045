"""The pure profanity scorer (alt-profanity-check), without Triton.

The model was trained on public labelled tweets and Wikipedia comments; these sentences are
ours, so they are not in its training set verbatim.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.errors import InvalidArgument
from quorum.localmodels.profanity import decode_texts, score_texts

OFFENSIVE = [
    "you are a fucking idiot and everyone hates you",
    "shut up you stupid bitch",
    "what a piece of shit",
]
POLITE = [
    "thank you for your help, have a lovely day",
    "could you please send me the quarterly report by friday?",
    "the weather in lisbon is mild in october",
]


def test_offensive_scores_high() -> None:
    scores = score_texts(OFFENSIVE)
    assert scores.dtype == np.float32
    assert scores.shape == (len(OFFENSIVE),)
    assert (scores > 0.5).all(), scores


def test_polite_scores_low() -> None:
    scores = score_texts(POLITE)
    assert (scores < 0.5).all(), scores


def test_batch_order_is_preserved() -> None:
    mixed = [POLITE[0], OFFENSIVE[0], POLITE[1], OFFENSIVE[1], POLITE[2], OFFENSIVE[2]]
    scores = score_texts(mixed)
    assert [bool(s > 0.5) for s in scores] == [False, True] * 3
    singles = np.concatenate([score_texts([t]) for t in mixed])
    np.testing.assert_allclose(scores, singles, rtol=0, atol=1e-6)
    # reversed input gives reversed output
    np.testing.assert_allclose(score_texts(mixed[::-1]), scores[::-1], rtol=0, atol=1e-6)


def test_empty_batch_gives_empty_array() -> None:
    scores = score_texts([])
    assert scores.shape == (0,)
    assert scores.dtype == np.float32


def test_empty_string_is_a_text() -> None:
    scores = score_texts(["", "   "])
    assert scores.shape == (2,)
    assert ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.parametrize("bad", [["ok", b"bytes"], ["ok", None], [1], "a bare string", b"xy"])
def test_non_str_is_rejected(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        score_texts(bad)  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=200), max_size=20))
def test_scores_are_probabilities_one_per_text(texts: list[str]) -> None:
    scores = score_texts(texts)
    assert scores.shape == (len(texts),)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_decode_triton_batch_shape() -> None:
    batch = np.array([[b"hello"], ["caf\u00e9".encode()], [b""]], dtype=object)
    assert decode_texts(batch) == ["hello", "caf\u00e9", ""]


def test_decode_invalid_utf8_is_replaced() -> None:
    batch = np.array([b"ok \xff\xfe end", b"\xc3"], dtype=object)
    assert decode_texts(batch) == ["ok \ufffd\ufffd end", "\ufffd"]


def test_decode_fixed_width_bytes_and_str_items() -> None:
    assert decode_texts(np.array([b"ab", b"c"])) == ["ab", "c"]
    assert decode_texts(np.array(["x", b"y"], dtype=object)) == ["x", "y"]


def test_decode_empty_batch() -> None:
    assert decode_texts(np.zeros((0, 1), dtype=object)) == []


@pytest.mark.parametrize(
    "bad",
    [
        np.array([[b"a", b"b"]], dtype=object),  # two texts in one row
        np.array([[[b"a"]]], dtype=object),  # 3-D
        np.array([1, 2], dtype=object),  # not bytes
    ],
)
def test_decode_rejects_bad_tensors(bad: np.ndarray[Any, Any]) -> None:
    with pytest.raises(InvalidArgument):
        decode_texts(bad)


@given(st.lists(st.binary(max_size=50), max_size=10))
def test_decode_never_fails_on_bytes(items: list[bytes]) -> None:
    batch = np.empty((len(items), 1), dtype=object)
    for i, b in enumerate(items):
        batch[i, 0] = b
    out = decode_texts(batch)
    assert out == [b.decode("utf-8", errors="replace") for b in items]


def test_import_loads_no_model() -> None:
    code = (
        "import sys, quorum.localmodels.profanity\n"
        "assert 'profanity_check' not in sys.modules\n"
        "assert 'sklearn' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_one_pass_scorer_equals_the_package_model() -> None:
    """The scorer computes the package's calibrated model itself (scikit-learn's
    predict_proba costs ~15 ms a call whatever the batch): the same scores, to rounding."""
    import random

    from profanity_check import predict_prob
    from profanity_check import profanity_check as package

    from quorum.localmodels.profanity import LinearScorer

    rng = random.Random(7)
    vocabulary = sorted(package.vectorizer.vocabulary_)
    texts = [*OFFENSIVE, *POLITE, "!!!", "", "the and of", "ＦＵＣＫ you 😀", "idiot " * 500]
    texts += [
        " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 60))) for _ in range(500)
    ]
    ours = LinearScorer(package.vectorizer, package.model)(texts)
    np.testing.assert_allclose(ours, predict_prob(texts), rtol=0, atol=1e-12)
