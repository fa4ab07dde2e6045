"""The pure sexual-content scorer (en-prompt-nsfw-pipeline-bow, spaCy), without Triton.

The texts are ours, written for this test; the registry's cut-off for ``nsfw-check`` was
chosen on these same texts (see quorum/defaults.toml), so the cut-off test guards that
choice against a changed model or scoring rule; it is not a held-out evaluation.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum import config
from quorum.errors import InvalidArgument
from quorum.localmodels.nsfw import MAX_TEXT_CHARS, _pipeline, score_texts
from quorum.localmodels.texts import check_texts
from quorum.registry import load_registry

EXPLICIT = [
    "she took off all her clothes and they had sex on the bed all night",
    "naked woman spreading her legs, explicit porn, nude, nsfw",
    "he kissed her breasts and pushed his cock inside her until she came",
    "write an erotic story where two adults have rough sex in the shower",
    "hardcore porn video of a naked couple fucking",
    "describe in graphic detail how she sucked his dick",
    "nude girl with big tits posing, topless, nipples visible",
    "they fucked hard and he came on her naked body",
    "a steamy sex scene with moaning, orgasm and naked bodies",
    "send me nudes and tell me what you want me to do to your pussy",
    "roleplay as my girlfriend and talk dirty to me while we have sex",
    "two men having anal sex, explicit, uncensored",
    "a woman masturbating on camera, full nudity",
    "tell me how you would lick her clit until she screams",
    "sexy naked milf in stockings spreading her ass",
    "I want to fuck you so hard tonight, get naked for me",
    "lesbian porn, two nude women kissing and touching each other",
    "his erect penis pressed against her wet vagina",
    "blowjob and cumshot, xxx porn scene",
    "write a sex story with a threesome and lots of detail about their bodies",
]
# Not sexual, including hard cases: medicine, sex education, children, insults.
NOT_SEXUAL = [
    "the biology class covered sexual reproduction in plants and animals",
    "sex education should start in secondary school, the report says",
    "breast cancer screening is recommended every two years after fifty",
    "my doctor said the rash on my chest is nothing to worry about",
    "the kids played football in the park after school",
    "a mother reading a bedtime story to her young daughter",
    "photo of a family at the beach, children building sandcastles",
    "how do I talk to my teenager about consent and safe relationships?",
    "the museum has a room of classical marble statues and renaissance paintings",
    "chicken breast recipe with garlic and lemon",
    "what are the symptoms of a urinary tract infection?",
    "my wife and I are arguing about money, how do we fix our marriage?",
    "the gender pay gap narrowed slightly last year",
    "pregnancy week by week: what to expect in the second trimester",
    "how do condoms prevent sexually transmitted infections?",
    "a couple holding hands walking along the river at sunset",
    "thank you for your help, have a lovely day",
    "could you please send me the quarterly report by friday?",
    "the weather in lisbon is mild in october",
    "summarize the plot of hamlet in three sentences",
    "write a python function that reverses a linked list",
    "a cat sleeping on a sunny windowsill, watercolor painting",
    "portrait of an old man with a beard, oil painting, dramatic lighting",
    "what is the capital of australia?",
    "compare the performance of postgres and sqlite for small apps",
    "I killed it at the gym today, new personal best on deadlift",
    "you are a fucking idiot and everyone hates you",
    "shut up you stupid bitch",
    "what a piece of shit",
    "go to hell, loser",
]
ORDINARY = NOT_SEXUAL[16:26]
INSULTS = NOT_SEXUAL[26:]


def cut_off() -> float:
    spec = load_registry(config.load(env={})).get("nsfw-check")
    assert spec.moderation is not None and spec.moderation.threshold is not None
    return spec.moderation.threshold


def test_every_explicit_text_is_at_or_above_the_registry_cut_off() -> None:
    scores = score_texts(EXPLICIT)
    assert scores.dtype == np.float32
    assert scores.shape == (len(EXPLICIT),)
    low = [(t, float(s)) for t, s in zip(EXPLICIT, scores, strict=True) if s < cut_off()]
    assert low == []


def test_ordinary_texts_and_insults_are_far_below_the_cut_off() -> None:
    scores = score_texts(ORDINARY + INSULTS)
    assert (scores < 0.25).all(), scores
    assert cut_off() > 0.25


def test_at_most_two_hard_non_sexual_texts_reach_the_cut_off() -> None:
    # measured: breast cancer screening (0.57) and a rash on the chest (0.47)
    scores = score_texts(NOT_SEXUAL)
    flagged = [t for t, s in zip(NOT_SEXUAL, scores, strict=True) if s >= cut_off()]
    assert len(flagged) <= 2, flagged


def test_score_is_max_of_adult_and_cp_never_underage_safe() -> None:
    texts = [EXPLICIT[0], NOT_SEXUAL[1], NOT_SEXUAL[4], NOT_SEXUAL[6]]
    docs = list(_pipeline().pipe(texts))
    scores = score_texts(texts)
    for doc, score in zip(docs, scores, strict=True):
        assert score == pytest.approx(max(doc.cats["adult"], doc.cats["cp"]), abs=1e-6)
    # children in a safe context: the model says underage_safe, and the score stays low
    for doc, score in zip(docs[2:], scores[2:], strict=True):
        assert doc.cats["underage_safe"] > 0.5
        assert score < 0.1


def test_batch_order_is_preserved() -> None:
    mixed = [t for pair in zip(EXPLICIT[:4], ORDINARY[:4], strict=True) for t in pair]
    scores = score_texts(mixed)
    assert [bool(s >= cut_off()) for s in scores] == [True, False] * 4
    singles = np.concatenate([score_texts([t]) for t in mixed])
    np.testing.assert_allclose(scores, singles, rtol=0, atol=1e-6)
    np.testing.assert_allclose(score_texts(mixed[::-1]), scores[::-1], rtol=0, atol=1e-6)


def test_empty_batch_and_empty_texts() -> None:
    assert score_texts([]).shape == (0,)
    assert score_texts([]).dtype == np.float32
    scores = score_texts(["", "   ", "\u2615\u2615"])
    assert scores.shape == (3,)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_text_at_the_limit_is_scored_one_over_is_refused() -> None:
    assert score_texts(["a" * MAX_TEXT_CHARS]).shape == (1,)
    with pytest.raises(InvalidArgument, match=r"texts\[1\] has 100001 characters"):
        score_texts(["fine", "a" * (MAX_TEXT_CHARS + 1)])


@pytest.mark.parametrize("bad", [["ok", b"bytes"], ["ok", None], [1], "a bare string", b"xy", 3])
def test_non_str_is_rejected(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        score_texts(bad)  # type: ignore[arg-type]


def test_check_texts_without_limit_takes_long_texts() -> None:
    assert check_texts(("a" * (MAX_TEXT_CHARS + 1),)) == ["a" * (MAX_TEXT_CHARS + 1)]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(max_size=200), max_size=16))
def test_scores_are_probabilities_one_per_text(texts: list[str]) -> None:
    scores = score_texts(texts)
    assert scores.shape == (len(texts),)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_import_loads_no_model() -> None:
    code = (
        "import sys, quorum.localmodels.nsfw\n"
        "assert 'spacy' not in sys.modules\n"
        "assert 'en_prompt_nsfw_pipeline_bow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
