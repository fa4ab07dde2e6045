from hypothesis import given
from hypothesis import strategies as st

from quorum.usage import MAX_KEY_CHARS, usage_key


def test_short_keys_are_readable():
    assert usage_key("req-1", "judge", "gpt-4.1") == "req-1:judge:gpt-4.1"


@given(st.lists(st.text(min_size=0, max_size=120), min_size=1, max_size=4))
def test_keys_fit_the_ledger_and_are_stable_and_distinct(parts):
    key = usage_key(*parts)
    assert len(key) <= MAX_KEY_CHARS
    assert usage_key(*parts) == key
    assert usage_key(*parts, "x") != key


def test_a_maximal_router_id_still_fits_through_the_voter():
    rid = "r" * 100  # the router's limit
    key = usage_key(f"{rid}:input", "judge", "a-rather-long-judge-model-name")
    assert len(key) <= MAX_KEY_CHARS and key.startswith(rid[:60])
