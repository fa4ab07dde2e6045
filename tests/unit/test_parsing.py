import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorum.registry import CATEGORIES
from services.voter.parsing import MAX_VERDICT_CHARS, Verdict, VerdictParseError, parse_verdict


def test_plain_json():
    v = parse_verdict('{"is_safe": false, "confidence": 0.9, "categories": {"hate": 0.8}}')
    assert v == Verdict(False, 0.9, {"hate": 0.8})


def test_code_fenced_json_with_prose():
    text = 'Here you go:\n```json\n{"is_safe": true, "confidence": 0.75}\n```\nThanks.'
    assert parse_verdict(text) == Verdict(True, 0.75, {})


def test_embedded_object_after_prose():
    v = parse_verdict('The verdict is {"safe": "no", "score": "80%"} as requested')
    assert v.is_safe is False
    assert v.confidence == pytest.approx(0.8)


def test_string_booleans_percentages_aliases_and_clamping():
    v = parse_verdict(
        '{"is_safe": "false", "confidence": 87, "categories": '
        '{"Sexual": 12, "hate_speech": "0.4", "violence": 3.5e9, "unknown": 1, "spam": {"score": 0.2}}}'
    )
    assert v.is_safe is False
    assert v.confidence == pytest.approx(0.87)
    # 3.5e9 is no probability: dropped, never clamped into a verdict
    assert v.categories == {"adult": pytest.approx(0.12), "hate": 0.4, "spam": 0.2}


def test_flagged_means_unsafe_and_missing_confidence_is_one():
    assert parse_verdict('{"flagged": true}') == Verdict(False, 1.0, {})


def test_category_list_means_flagged():
    v = parse_verdict('{"is_safe": false, "categories": ["violence", "spam"]}')
    assert v.categories == {"violence": 1.0, "spam": 1.0}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "not json",
        '{"is_safe": tru',
        '{"confidence": 0.9}',
        "[1, 2]",
        '{"is_safe": "maybe"}',
        "x" * (MAX_VERDICT_CHARS + 1),
    ],
)
def test_unusable_answers_raise(text):
    with pytest.raises(VerdictParseError):
        parse_verdict(text)


@given(st.text(max_size=300))
def test_any_text_gives_a_verdict_or_a_parse_error(text):
    try:
        v = parse_verdict(text)
    except VerdictParseError:
        return
    assert 0.0 <= v.confidence <= 1.0
    assert all(0.0 <= s <= 1.0 for s in v.categories.values())


@given(
    st.booleans(),
    st.floats(min_value=0, max_value=1),
    st.dictionaries(
        st.sampled_from(CATEGORIES),
        st.floats(min_value=0, max_value=1),
    ),
    st.sampled_from(["{}", "```json\n{}\n```", "Sure: {} done", "```\n{}```"]),
)
def test_well_formed_verdicts_round_trip_in_any_wrapping(is_safe, conf, cats, wrapper):
    import json

    body = json.dumps({"is_safe": is_safe, "confidence": conf, "categories": cats})
    v = parse_verdict(wrapper.replace("{}", body))
    assert v.is_safe is is_safe
    assert v.confidence == pytest.approx(conf)
    assert v.categories == pytest.approx(cats)
