import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.voter.voting import Policy, Status, Vote, combine


def ok(model, safe, conf=0.9, weight=1.0, **cats):
    return Vote(model, weight, Status.OK, is_safe=safe, confidence=conf, categories=cats)


def test_unanimous_safe():
    d = combine([ok("a", True), ok("b", True, harassment=0.1)], Policy())
    assert d.is_safe and not d.requires_review
    assert d.confidence == pytest.approx(0.9)
    assert d.categories == {"harassment": 0.1}


def test_failed_models_abstain_and_never_count_as_safe():
    votes = [
        Vote("a", 1.0, Status.ERROR, error="boom"),
        Vote("b", 1.0, Status.TIMEOUT, error="slow"),
    ]
    d = combine(votes, Policy(min_votes=1))
    assert not d.is_safe and not d.quorum
    assert d.requires_review
    assert "only 0 of 2 models voted" in d.reasons[0]


def test_too_few_votes_requires_review_even_if_the_voters_say_safe():
    d = combine([ok("a", True), Vote("b", 1.0, Status.TIMEOUT)], Policy(min_votes=2))
    assert not d.is_safe and d.requires_review


def test_weighted_majority_decides():
    d = combine([ok("a", False, weight=3.0), ok("b", True, weight=1.0)], Policy())
    assert not d.is_safe
    assert d.requires_review  # disagreement
    d = combine([ok("a", False, weight=1.0), ok("b", True, weight=3.0)], Policy())
    assert d.is_safe


def test_the_brief_needs_sixty_percent_of_the_weight_to_say_safe():
    four = [ok("a", True), ok("b", True), ok("c", False), ok("d", False)]
    assert not combine(four, Policy(vote_threshold=0.6)).is_safe  # 50% safe
    five = [*four, ok("e", True)]
    assert combine(five, Policy(vote_threshold=0.6)).is_safe  # 60% safe
    assert not combine(five, Policy(vote_threshold=0.7)).is_safe


def test_a_category_over_the_review_threshold_requires_review():
    d = combine([ok("a", True, spam=0.65)], Policy(thresholds={"spam": 0.7}))
    assert d.is_safe and d.requires_review
    assert "over the review threshold: spam" in d.reasons
    d = combine([ok("a", True, spam=0.65)], Policy(thresholds={"spam": 0.7}, review_threshold=0.7))
    assert not d.requires_review


def test_category_threshold_flags_even_when_votes_say_safe():
    d = combine([ok("a", True, hate=0.9), ok("b", True, hate=0.3)], Policy(category_threshold=0.5))
    assert d.categories["hate"] == pytest.approx(0.6)
    assert not d.is_safe
    assert d.reasons[0] == "flagged: hate"


def test_per_category_threshold():
    d = combine([ok("a", True, spam=0.6)], Policy(thresholds={"spam": 0.8}))
    assert d.is_safe


def test_category_mean_only_over_models_that_judge_it():
    d = combine([ok("a", True, hate=0.2), ok("b", True)], Policy())
    assert d.categories == {"hate": 0.2}


def test_low_confidence_requires_review():
    d = combine([ok("a", True, conf=0.55)], Policy(review_confidence=0.6))
    assert d.is_safe and d.requires_review


votes = st.lists(
    st.builds(
        Vote,
        model=st.text(min_size=1, max_size=5),
        weight=st.floats(min_value=0.01, max_value=10),
        status=st.sampled_from(list(Status)),
        is_safe=st.booleans(),
        confidence=st.floats(min_value=0, max_value=1),
        categories=st.dictionaries(
            st.sampled_from(["hate", "spam"]), st.floats(min_value=0, max_value=1)
        ),
    ),
    max_size=6,
)


@given(votes, st.integers(min_value=1, max_value=4))
def test_properties(vs, min_votes):
    d = combine(vs, Policy(min_votes=min_votes))
    ok_votes = [v for v in vs if v.status is Status.OK]
    assert d.quorum == (len(ok_votes) >= min_votes)
    if len(ok_votes) < min_votes:
        assert not d.is_safe and d.requires_review
    if d.is_safe:
        # safe needs at least one real vote, and 60% of the weight saying safe
        assert ok_votes
        safe_w = sum(v.weight for v in ok_votes if v.is_safe)
        assert safe_w >= 0.6 * sum(v.weight for v in ok_votes) - 1e-9
    assert 0.0 <= d.confidence <= 1.0 + 1e-9
    assert all(0.0 <= s <= 1.0 + 1e-9 for s in d.categories.values())
