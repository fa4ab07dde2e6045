"""services.cost.prices, the pure price book: estimates (official cost and saving for a
reseller, conversion into another currency) and the price table, without a server."""

from __future__ import annotations

from decimal import Decimal

import pytest

from quorum import config
from quorum.backends.types import TokenUsage
from quorum.errors import InvalidArgument, NotFound
from quorum.pricing import Cost, PriceNotFound
from quorum.registry import Registry, load_registry
from services.cost.prices import (
    check_budget_currency,
    estimate,
    list_prices,
    official,
    price_call,
)

T0 = 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z
T1 = 1_796_083_200 * 1_000_000  # 2026-12-01T00:00:00Z


def book(*, official: bool = True) -> Registry:
    data = config.defaults()
    if official:
        data["exchange_rates"] = [
            {"from": "USD", "to": "CNY", "rate": "7.3"},
            {"from": "USD", "to": "CNY", "rate": "7.1", "effective_from": "2026-12-01T00:00:00Z"},
        ]
    data["providers"]["reseller"] = {
        "base_url": "https://reseller.example/v1",
        "billing_currency": "CNY",
        "billing_rate": "1",
    }
    data["models"]["resold"] = {
        "provider": "reseller",
        "input_per_mtok": "2.00",
        "output_per_mtok": "8.00",
        "prices": [
            {
                "effective_from": "2026-12-01T00:00:00Z",
                "input_per_mtok": "1",
                "output_per_mtok": "4",
            }
        ],
    }
    data["models"]["unpriced"] = {"provider": "openai"}
    return load_registry(data)


def test_a_reseller_estimate_compares_with_the_official_rate_of_the_day() -> None:
    e = estimate(book(), "resold", TokenUsage(1000, 500), T0)
    assert e.bill.cost == Cost(6000, "CNY")
    assert e.bill.list_cost == Cost(6000, "USD")
    assert (e.bill.rate, e.bill.own_rate) == (Decimal(1), True)
    assert (e.official, e.official_rate) == (Cost(43_800, "CNY"), Decimal("7.3"))
    assert e.saving == Cost(37_800, "CNY")
    assert e.converted is None
    # at the new price and the new official rate
    e = estimate(book(), "resold", TokenUsage(1000, 500), T1)
    assert e.bill.cost == Cost(3000, "CNY")
    assert (e.official, e.saving) == (Cost(21_300, "CNY"), Cost(18_300, "CNY"))


def test_no_official_rate_means_nothing_to_compare_with() -> None:
    e = estimate(book(official=False), "resold", TokenUsage(1000, 500), T0)
    assert e.bill.cost == Cost(6000, "CNY")
    assert (e.official, e.official_rate, e.saving) == (None, None, None)


def test_an_estimate_converts_the_amount_billed_at_the_official_rate() -> None:
    e = estimate(book(), "resold", TokenUsage(1000, 500), T0, "USD")
    assert e.converted == Cost(822, "USD")  # 6000 micro-CNY / 7.3
    assert e.conversion_rate is not None and e.conversion_rate.quantize(Decimal("1e-6")) == Decimal(
        "0.136986"
    )
    e = estimate(book(), "gpt-4.1", TokenUsage(1000, 500), T1, "CNY")
    assert (e.converted, e.conversion_rate) == (Cost(42_600, "CNY"), Decimal("7.1"))


def test_a_currency_without_a_rate_is_not_found_naming_the_field() -> None:
    with pytest.raises(NotFound) as info:
        estimate(book(), "gpt-4.1", TokenUsage(1, 1), T0, "JPY")
    err = info.value
    assert err.reason == "EXCHANGE_RATE_NOT_FOUND"
    assert err.message.startswith("currency: ")
    assert err.metadata == {"field": "currency", "from": "USD", "to": "JPY"}


def test_price_call_names_the_model_and_refuses_one_without_a_price() -> None:
    name, b = price_call(book(), "gpt-4.1", TokenUsage(1000, 500, 1000), T0)
    assert (name, b.cost) == ("gpt-4.1", Cost(4000 + 2000, "USD"))
    with pytest.raises(PriceNotFound):
        price_call(book(), "unpriced", TokenUsage(1, 1), T0)
    with pytest.raises(NotFound):
        price_call(book(), "gpt-9", TokenUsage(1, 1), T0)


def test_the_price_table_now_or_with_its_history() -> None:
    now = list_prices(book(), T0)
    assert [r.model for r in now] == sorted(r.model for r in now)
    assert "unpriced" not in {r.model for r in now}
    (resold,) = [r for r in now if r.model == "resold"]
    assert (resold.price.input_per_mtok, resold.seen_at_us) == (Decimal("2.00"), T0)
    history = list_prices(book(), T0, model="resold", include_history=True)
    assert [(r.price.input_per_mtok, r.price.effective_from_us) for r in history] == [
        (Decimal("2.00"), None),
        (Decimal(1), T1),
    ]
    # the price in effect is seen from now, one yet to come from its own start
    assert [r.seen_at_us for r in history] == [T0, T1]
    assert list_prices(book(), T1, model="unpriced", include_history=True) == []
    with pytest.raises(NotFound):
        list_prices(book(), T0, model="gpt-9")


def test_the_official_cost_of_a_call_at_the_official_rate_of_its_time() -> None:
    reg = book()
    _, resold = price_call(reg, "resold", TokenUsage(1000, 500), T0)
    assert official(reg.rates, resold, T0) == (Cost(43_800, "CNY"), Decimal("7.3"))
    _, later = price_call(reg, "resold", TokenUsage(1000, 500), T1)
    assert official(reg.rates, later, T1) == (Cost(21_300, "CNY"), Decimal("7.1"))
    # billed in the list currency: the cost itself, at 1
    _, listed = price_call(reg, "gpt-4.1", TokenUsage(1000, 500), T0)
    assert official(reg.rates, listed, T0) == (Cost(6000, "USD"), Decimal(1))
    # no official rate: nothing official, never 0
    bare = book(official=False)
    _, resold = price_call(bare, "resold", TokenUsage(1000, 500), T0)
    assert official(bare.rates, resold, T0) is None


def currency_refusal(reg: Registry, currency: str, model: str, at_us: int) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as info:
        check_budget_currency(reg, currency, model, at_us)
    assert info.value.reason == "INVALID_FIELD"
    assert info.value.message.startswith("budget.limit.currency: no exchange rate converts ")
    return dict(info.value.metadata)


def test_a_budget_currency_must_count_every_call_the_budget_covers() -> None:
    reg = book()  # the models bill USD, the reseller CNY; one official USD/CNY rate
    for currency in ("USD", "CNY"):
        check_budget_currency(reg, currency, "", T0)
    refused = currency_refusal(reg, "EUR", "", T0)
    first = min(m.name for m in reg.models.values())  # the first model by name bills USD
    assert refused == {"field": "budget.limit.currency", "from": "USD", "to": "EUR", "model": first}
    assert currency_refusal(reg, "EUR", "resold", T0)["from"] == "CNY"
    # without the official rate a USD budget cannot count the reseller's CNY, but one for a
    # USD model can
    bare = book(official=False)
    assert currency_refusal(bare, "USD", "", T0)["model"] == "resold"
    check_budget_currency(bare, "USD", "gpt-4.1", T0)
    check_budget_currency(bare, "CNY", "resold", T0)


def test_a_budget_currency_needs_a_rate_in_effect_and_covers_the_prices_to_come() -> None:
    data = config.defaults()
    data["exchange_rates"] = [
        {"from": "USD", "to": "EUR", "rate": "0.9", "effective_from": "2026-12-01T00:00:00Z"}
    ]
    data["models"]["sterling-later"] = {
        "provider": "openai",
        "input_per_mtok": "1",
        "output_per_mtok": "1",
        "prices": [
            {"effective_from": "2026-12-01T00:00:00Z", "currency": "GBP",
             "input_per_mtok": "1", "output_per_mtok": "1"},
        ],
    }  # fmt: skip
    reg = load_registry(data)
    assert currency_refusal(reg, "EUR", "gpt-4.1", T0) == {
        "field": "budget.limit.currency", "from": "USD", "to": "EUR", "model": "gpt-4.1",
        "at": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    check_budget_currency(reg, "EUR", "gpt-4.1", T1)  # the rate is in effect from T1 on
    # a USD budget for a model whose next price is listed (so billed) in GBP: refused before
    # that price takes effect too
    assert currency_refusal(reg, "USD", "sterling-later", T0)["from"] == "GBP"
