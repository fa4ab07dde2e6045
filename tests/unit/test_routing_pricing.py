from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorum import config
from quorum.backends.types import TokenUsage
from quorum.errors import FailedPrecondition, InvalidArgument, NotFound
from quorum.pricing import cost_of, micros_per_mtok
from quorum.registry import Price, load_registry
from services.router.routing import choose

SIM = "http://127.0.0.1:9/v1"


def reg(env=None, sim=SIM):
    return load_registry(config.defaults()).resolve_keys(env or {}, simulator_url=sim)


def test_explicit_model_wins():
    route = choose(reg(), model="claude-sonnet-4.5", task="code")
    assert [m.name for m in route.candidates] == ["claude-sonnet-4.5"]
    assert route.reason == "requested by the client"


def test_task_picks_the_cheapest_suited_model_with_fallbacks_in_price_order():
    route = choose(reg(), task="code")
    assert [m.name for m in route.candidates] == ["deepseek-v3.2", "gpt-4.1", "claude-sonnet-4.5"]
    assert "cheapest" in route.reason


def test_default_model_when_nothing_is_named():
    assert choose(reg()).candidates[0].name == "gpt-4.1"


def test_errors():
    with pytest.raises(NotFound):
        choose(reg(), model="nope")
    with pytest.raises(InvalidArgument, match="known tasks"):
        choose(reg(), task="juggling")
    with pytest.raises(InvalidArgument, match="classifier"):
        choose(reg(), model="profanity-check")
    with pytest.raises(FailedPrecondition, match="OPENAI_API_KEY"):
        choose(reg(sim=None), model="gpt-4.1")
    with pytest.raises(FailedPrecondition, match="no usable model"):
        choose(reg(sim=None), task="code")


def test_brief_prices_in_micros():
    r = reg()
    assert cost_of(r.get("gpt-4.1").price, TokenUsage(1000, 500)).micros == 6000
    assert (
        cost_of(r.get("claude-sonnet-4.5").price, TokenUsage(1_000_000, 1_000_000)).micros
        == 18_000_000
    )
    assert cost_of(r.get("deepseek-v3.2").price, TokenUsage(1, 1)).micros == 1  # 0.56 rounds up
    assert micros_per_mtok(Decimal("0.14")) == 140_000


@given(
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.decimals(min_value=0, max_value=1000, places=4),
    st.decimals(min_value=0, max_value=1000, places=4),
)
def test_cost_is_exact_and_additive(i, o, pin, pout):
    price = Price(pin, pout)
    total = cost_of(price, TokenUsage(i, o)).micros
    exact = i * pin + o * pout
    assert abs(Decimal(total) - exact) <= Decimal("0.5")
    parts = cost_of(price, TokenUsage(i, 0)).micros + cost_of(price, TokenUsage(0, o)).micros
    assert abs(parts - total) <= 1


def test_negative_usage_is_refused():
    with pytest.raises(ValueError):
        cost_of(Price(Decimal(1), Decimal(1)), TokenUsage(-1, 0))
