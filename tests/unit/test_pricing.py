"""quorum.pricing: cached input tokens, the price in effect at a time, billing in another
currency (official rate or the provider's own), rounding once; and routing by the price in
effect. Exact rational arithmetic is the oracle of the properties."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorum import config
from quorum.backends.types import TokenUsage
from quorum.errors import FailedPrecondition
from quorum.money import ExchangeRate, NoExchangeRate, Rates
from quorum.pricing import (
    Billing,
    Price,
    PriceNotFound,
    Pricing,
    bill,
    cost_of,
    exact_cost,
    price_at,
)
from quorum.registry import load_registry
from services.router.routing import choose

DAY_US = 86_400 * 1_000_000
T0 = 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z
T1 = T0 + 334 * DAY_US  # 2026-12-01T00:00:00Z

GPT = Price(Decimal("2.00"), Decimal("8.00"), "USD", Decimal("0.50"))
OFFICIAL = Rates([ExchangeRate("USD", "CNY", Decimal("7.3"))])


def half_up(x: Fraction) -> int:
    whole, rest = divmod(x, 1)
    return int(whole + (1 if rest >= Fraction(1, 2) else 0))


# --- cached input ------------------------------------------------------------------------------


def test_cached_input_tokens_cost_the_cached_price() -> None:
    # 800 uncached × 2.00 + 200 cached × 0.50 + 500 × 8.00 micro-USD
    assert cost_of(GPT, TokenUsage(1000, 500, 200)).micros == 1600 + 100 + 4000
    assert cost_of(GPT, TokenUsage(1000, 500, 1000)).micros == 500 + 4000


def test_the_cached_price_defaults_to_the_input_price() -> None:
    plain = Price(Decimal("2.00"), Decimal("8.00"))
    assert plain.cached_input == Decimal("2.00")
    assert cost_of(plain, TokenUsage(1000, 500, 200)) == cost_of(plain, TokenUsage(1000, 500))


@pytest.mark.parametrize(
    "usage", [TokenUsage(-1, 0), TokenUsage(0, -1), TokenUsage(5, 0, -1), TokenUsage(5, 0, 6)]
)
def test_impossible_counts_are_refused(usage: TokenUsage) -> None:
    with pytest.raises(ValueError):
        cost_of(GPT, usage)


@given(
    i=st.integers(0, 10**7),
    o=st.integers(0, 10**7),
    data=st.data(),
    prices=st.tuples(*[st.decimals(min_value=0, max_value=1000, places=6)] * 3),
)
def test_cost_is_the_exact_sum_rounded_once(
    i: int, o: int, data: st.DataObject, prices: tuple[Decimal, Decimal, Decimal]
) -> None:
    cached = data.draw(st.integers(0, i))
    price = Price(prices[0], prices[1], "USD", prices[2])
    exact = (
        (i - cached) * Fraction(prices[0]) + cached * Fraction(prices[2]) + o * Fraction(prices[1])
    )
    assert Fraction(exact_cost(price, TokenUsage(i, o, cached))) == exact
    assert cost_of(price, TokenUsage(i, o, cached)).micros == half_up(exact)


# --- the price in effect --------------------------------------------------------------------


HISTORY = Pricing(
    (
        Price(Decimal("2.00"), Decimal("8.00")),
        Price(Decimal("1.50"), Decimal("6.00"), effective_from_us=T1),
    )
)


def test_a_call_is_priced_at_the_price_of_its_time() -> None:
    assert price_at("m", HISTORY, T0).input_per_mtok == Decimal("2.00")
    assert price_at("m", HISTORY, T1 - 1).input_per_mtok == Decimal("2.00")
    assert price_at("m", HISTORY, T1).input_per_mtok == Decimal("1.50")
    before = bill("m", HISTORY, TokenUsage(1000, 500), T1 - 1, Rates())
    after = bill("m", HISTORY, TokenUsage(1000, 500), T1, Rates())
    assert (before.cost.micros, after.cost.micros) == (6000, 4500)


def test_no_price_is_an_error_never_zero() -> None:
    with pytest.raises(PriceNotFound) as info:
        bill("new-model", Pricing(), TokenUsage(1000, 500), T0, Rates())
    err = info.value
    assert isinstance(err, FailedPrecondition)
    assert err.reason == "PRICE_NOT_FOUND"
    assert err.metadata == {"model": "new-model", "at": "2026-01-01T00:00:00Z"}
    assert "'new-model'" in err.message
    assert '"0" for a free model' in err.message


def test_before_the_first_dated_price_there_is_none() -> None:
    later = Pricing((Price(Decimal(1), Decimal(1), effective_from_us=T1),))
    with pytest.raises(PriceNotFound, match="first price takes effect 2026-12-01T00:00:00Z"):
        price_at("m", later, T1 - 1)
    assert price_at("m", later, T1).input_per_mtok == 1


def test_prices_must_be_in_order() -> None:
    with pytest.raises(ValueError, match="increasing order"):
        Pricing(
            (Price(Decimal(1), Decimal(1), effective_from_us=T1), Price(Decimal(1), Decimal(1)))
        )
    with pytest.raises(ValueError, match="increasing order"):
        Pricing(
            (
                Price(Decimal(1), Decimal(1), effective_from_us=T1),
                Price(Decimal(2), Decimal(2), effective_from_us=T1),
            )
        )


# --- billing in another currency ---------------------------------------------------------------


def test_billed_in_another_currency_at_the_official_rate_of_the_day() -> None:
    rates = Rates(
        [ExchangeRate("USD", "CNY", Decimal("7.3")), ExchangeRate("USD", "CNY", Decimal("7.1"), T1)]
    )
    pricing = Pricing((GPT,), Billing("CNY"))
    b = bill("gpt-4.1", pricing, TokenUsage(1000, 500), T0, rates)
    assert (b.list_cost.micros, b.list_cost.currency) == (6000, "USD")
    assert (b.cost.micros, b.cost.currency) == (43_800, "CNY")
    assert (b.rate, b.own_rate) == (Decimal("7.3"), False)
    assert bill("gpt-4.1", pricing, TokenUsage(1000, 500), T1, rates).cost.micros == 42_600
    with pytest.raises(NoExchangeRate):
        bill("gpt-4.1", pricing, TokenUsage(1000, 500), T0, Rates())


def test_a_reseller_bills_at_its_own_rate() -> None:
    """The brief's reseller: 1 CNY per 1 USD of list price, while the official rate is 7.3."""
    reseller = Pricing((GPT,), Billing("CNY", Rates([ExchangeRate("USD", "CNY", Decimal(1))])))
    b = bill("gpt-4.1", reseller, TokenUsage(1000, 500), T0, OFFICIAL)
    assert (b.cost.micros, b.cost.currency) == (6000, "CNY")
    assert (b.rate, b.own_rate) == (Decimal(1), True)


def test_conversion_rounds_the_exact_cost_once() -> None:
    """3 deepseek output tokens: 1.26 micro-USD. Rounded first (1) then converted at 7.3 it
    would be 7 micro-CNY; converted exactly it is 9.198, so 9."""
    deepseek = Price(Decimal("0.14"), Decimal("0.42"))
    b = bill("deepseek-v3.2", Pricing((deepseek,), Billing("CNY")), TokenUsage(0, 3), T0, OFFICIAL)
    assert b.list_cost.micros == 1
    assert b.cost.micros == 9


@given(
    i=st.integers(0, 10**7),
    o=st.integers(0, 10**7),
    rate=st.decimals(min_value=Decimal("0.0001"), max_value=1000, places=4),
    inverse=st.booleans(),
)
def test_billing_conversion_is_exact_then_rounded(
    i: int, o: int, rate: Decimal, inverse: bool
) -> None:
    # the official pair configured either way round: CNY per USD, or USD per CNY
    rates = Rates(
        [ExchangeRate("CNY", "USD", rate) if inverse else ExchangeRate("USD", "CNY", rate)]
    )
    b = bill("m", Pricing((GPT,), Billing("CNY")), TokenUsage(i, o), T0, rates)
    exact = (i * Fraction(GPT.input_per_mtok) + o * Fraction(GPT.output_per_mtok)) * (
        1 / Fraction(rate) if inverse else Fraction(rate)
    )
    assert b.cost.micros == half_up(exact)


# --- routing by the price in effect ------------------------------------------------------------


def registry_with(models_toml: dict[str, dict[str, object]]):
    data = config.defaults()
    for key, table in models_toml.items():
        data["models"][key] = {**data["models"].get(key, {}), **table}
    return load_registry(data).resolve_keys({}, simulator_url="http://127.0.0.1:9/v1")


def test_routing_refuses_a_model_with_no_price_before_any_call() -> None:
    r = registry_with({"new": {"provider": "openai", "tasks": ["code"]}})
    with pytest.raises(PriceNotFound) as info:
        choose(r, model="new", at_us=T0)
    assert info.value.reason == "PRICE_NOT_FOUND"
    # a task skips it: the priced models suited to the task still answer
    assert "new" not in [m.name for m in choose(r, task="code", at_us=T0).candidates]


def test_task_routing_follows_a_dated_price_change() -> None:
    # gpt-4.1 becomes cheaper than deepseek-v3.2 on 2026-12-01
    cut = {
        "effective_from": "2026-12-01T00:00:00Z",
        "input_per_mtok": "0.01",
        "output_per_mtok": "0.01",
    }
    r = registry_with({"gpt-4-1": {"prices": [cut]}})
    assert choose(r, task="code", at_us=T1 - 1).candidates[0].name == "deepseek-v3.2"
    assert choose(r, task="code", at_us=T1).candidates[0].name == "gpt-4.1"
