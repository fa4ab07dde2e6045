"""Prices, billing and exchange rates in the configuration: the flat keys (the price since the
beginning), ``[[models.<key>.prices]]`` with dates, ``billing_currency`` / ``billing_rate``
on a provider or a model, ``[[exchange_rates]]``; strict validation naming the key."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from typing import Any

import pytest

from quorum import config
from quorum.money import ExchangeRate, Rates
from quorum.pricing import Billing, Price
from quorum.registry import ConfigError, load_registry

T0 = 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z
T1 = 1_796_083_200 * 1_000_000  # 2026-12-01T00:00:00Z


def registry(text: str) -> Any:
    """The registry of the embedded defaults with ``text`` (TOML) merged over them, as a
    ``--config`` file would be."""
    data = config.defaults()
    over = tomllib.loads(text)
    for key, value in over.items():
        if key in ("models", "providers"):
            for name, table in value.items():
                data[key][name] = {**data[key].get(name, {}), **table}
        else:
            data[key] = value
    return load_registry(data)


def test_flat_keys_are_the_price_since_the_beginning() -> None:
    r = registry(
        """
        [models.gpt-4-1]
        cached_input_per_mtok = "0.50"
        """
    )
    (p,) = r.get("gpt-4.1").pricing.prices
    assert p == Price(Decimal("2.00"), Decimal("8.00"), "USD", Decimal("0.50"), None)
    (d,) = r.get("deepseek-v3.2").pricing.prices
    assert d.cached_input == d.input_per_mtok == Decimal("0.14")  # default: the input price


def test_dated_prices_follow_the_flat_one() -> None:
    r = registry(
        """
        [[models.gpt-4-1.prices]]
        effective_from = "2026-01-01T00:00:00Z"
        input_per_mtok = "1.75"
        output_per_mtok = "7"

        [[models.gpt-4-1.prices]]
        effective_from = 2026-12-01T08:00:00+08:00   # a TOML date-time with an offset works too
        input_per_mtok = "1.50"
        output_per_mtok = "6.00"
        cached_input_per_mtok = "0.375"
        currency = "eur"
        """
    )
    prices = r.get("gpt-4.1").pricing.prices
    assert [(p.effective_from_us, p.input_per_mtok, p.currency) for p in prices] == [
        (None, Decimal("2.00"), "USD"),
        (T0, Decimal("1.75"), "USD"),
        (T1, Decimal("1.50"), "EUR"),
    ]
    assert prices[2].cached_input == Decimal("0.375")
    assert r.get("gpt-4.1").pricing.at(T1 - 1) is prices[1]


def test_a_model_may_have_only_dated_prices_or_none() -> None:
    r = registry(
        """
        [models.later]
        provider = "openai"
        [[models.later.prices]]
        effective_from = "2026-12-01T00:00:00.5Z"
        input_per_mtok = 1
        output_per_mtok = 2

        [models.unpriced]
        provider = "openai"
        """
    )
    (p,) = r.get("later").pricing.prices
    assert p.effective_from_us == T1 + 500_000
    assert r.get("later").pricing.at(T1) is None
    assert r.get("unpriced").pricing.prices == ()


def test_official_rates_and_billing_terms() -> None:
    r = registry(
        """
        [[exchange_rates]]
        from = "USD"
        to = "CNY"
        rate = "7.3"

        [[exchange_rates]]
        from = "USD"
        to = "CNY"
        rate = "7.1"
        effective_from = "2026-12-01T00:00:00Z"

        [providers.reseller]
        base_url = "https://reseller.example/v1"
        billing_currency = "CNY"
        billing_rate = "1"

        [providers.cn-official]
        base_url = "https://cn.example/v1"
        billing_currency = "CNY"

        [models.resold]
        provider = "reseller"
        input_per_mtok = "2"
        output_per_mtok = "8"

        [models.own-rate]
        provider = "reseller"
        input_per_mtok = "2"
        output_per_mtok = "8"
        billing_currency = "CNY"
        [[models.own-rate.billing_rates]]
        rate = "1"
        [[models.own-rate.billing_rates]]
        rate = "1.2"
        effective_from = "2026-12-01T00:00:00Z"

        [models.official]
        provider = "cn-official"
        input_per_mtok = "2"
        output_per_mtok = "8"

        [models.listed-in-cny]
        provider = "reseller"
        input_per_mtok = "14"
        output_per_mtok = "56"
        currency = "CNY"
        """
    )
    assert r.rates == Rates(
        [
            ExchangeRate("USD", "CNY", Decimal("7.3")),
            ExchangeRate("USD", "CNY", Decimal("7.1"), T1),
        ]
    )
    assert r.get("resold").pricing.billing == Billing(
        "CNY", Rates([ExchangeRate("USD", "CNY", Decimal(1))])
    )
    own = r.get("own-rate").pricing.billing
    assert own is not None and own.rates is not None
    assert own.rates.rate("USD", "CNY", T1) == Decimal("1.2")
    assert r.get("official").pricing.billing == Billing("CNY", None)
    # a provider billing in CNY needs no conversion for a model listed in CNY
    assert r.get("listed-in-cny").pricing.billing is None
    # the defaults bill in their list currency
    assert r.get("gpt-4.1").pricing.billing is None


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        # a price needs both of its halves; none is never $0
        (
            '[models.m]\nprovider = "openai"\ninput_per_mtok = "1"',
            r"models\.m\.output_per_mtok: required",
        ),
        (
            '[models.m]\nprovider = "openai"\noutput_per_mtok = "1"',
            r"models\.m\.input_per_mtok: required",
        ),
        (
            '[models.m]\nprovider = "openai"\ncached_input_per_mtok = "1"',
            r"models\.m\.input_per_mtok: required",
        ),
        # bad decimals and negatives
        (
            '[models.gpt-4-1]\ninput_per_mtok = "2,00"',
            r"models\.gpt-4-1\.input_per_mtok: '2,00' is not a decimal",
        ),
        (
            '[models.gpt-4-1]\ninput_per_mtok = "NaN"',
            r"input_per_mtok: must be a finite, non-negative",
        ),
        (
            '[models.gpt-4-1]\ncached_input_per_mtok = "-0.5"',
            r"cached_input_per_mtok: must be a finite, non-negative",
        ),
        ("[models.gpt-4-1]\noutput_per_mtok = true", r"output_per_mtok: True is not a decimal"),
        ("[models.gpt-4-1]\noutput_per_mtok = [1]", r"output_per_mtok: \[1\] is not a decimal"),
        # currencies
        ('[models.gpt-4-1]\ncurrency = "dollars"', r"models\.gpt-4-1\.currency: an ISO 4217 code"),
        ('[models.gpt-4-1]\ncurrency = "US$"', r"models\.gpt-4-1\.currency: an ISO 4217 code"),
        # the dated history
        (
            '[models.gpt-4-1]\nprices = "cheap"',
            r"models\.gpt-4-1\.prices: must be an array of tables",
        ),
        (
            '[[models.gpt-4-1.prices]]\ninput_per_mtok = "1"\noutput_per_mtok = "1"',
            r"models\.gpt-4-1\.prices\[0\]\.effective_from: required",
        ),
        (
            '[[models.gpt-4-1.prices]]\neffective_from = "2026-12-01T00:00:00"\ninput_per_mtok = "1"\noutput_per_mtok = "1"',
            r"prices\[0\]\.effective_from: '2026-12-01T00:00:00' is not an RFC 3339 date-time with a zone",
        ),
        (
            '[[models.gpt-4-1.prices]]\neffective_from = 2026-12-01T00:00:00\ninput_per_mtok = "1"\noutput_per_mtok = "1"',
            r"prices\[0\]\.effective_from: .* is not an RFC 3339 date-time with a zone",
        ),
        (
            '[[models.gpt-4-1.prices]]\neffective_from = "2026-12-01"\ninput_per_mtok = "1"\noutput_per_mtok = "1"',
            r"prices\[0\]\.effective_from: '2026-12-01' is not an RFC 3339",
        ),
        (
            '[[models.gpt-4-1.prices]]\neffective_from = "20261201T000000Z"\ninput_per_mtok = "1"\noutput_per_mtok = "1"',
            r"is not an RFC 3339",
        ),
        (
            '[[models.gpt-4-1.prices]]\neffective_from = "2026-12-01T00:00:00Z"\ninput_per_mtok = "1"',
            r"models\.gpt-4-1\.prices\[0\]\.output_per_mtok: required",
        ),
        (
            '[[models.gpt-4-1.prices]]\neffective_from = "2026-12-01T00:00:00Z"\ninput_per_mtok = "1"\noutput_per_mtok = "1"\nprice = "1"',
            r"models\.gpt-4-1\.prices\[0\]: unknown keys \['price'\]",
        ),
        (
            '[[models.gpt-4-1.prices]]\neffective_from = "2026-12-01T00:00:00Z"\ninput_per_mtok = "1"\noutput_per_mtok = "1"\n'
            '[[models.gpt-4-1.prices]]\neffective_from = "2026-12-01T01:00:00+01:00"\ninput_per_mtok = "2"\noutput_per_mtok = "2"',
            r"models\.gpt-4-1\.prices\[1\]\.effective_from: duplicate \(2026-12-01T00:00:00Z again\)",
        ),
        (
            '[[models.gpt-4-1.prices]]\neffective_from = "2026-12-01T00:00:00Z"\ninput_per_mtok = "1"\noutput_per_mtok = "1"\n'
            '[[models.gpt-4-1.prices]]\neffective_from = "2026-01-01T00:00:00Z"\ninput_per_mtok = "2"\noutput_per_mtok = "2"',
            r"models\.gpt-4-1\.prices\[1\]\.effective_from: entries must be in increasing order",
        ),
        (
            '[[models.gpt-4-1.prices]]\neffective_from = "2026-12-01T00:00:00Z"\ninput_per_mtok = "1"\noutput_per_mtok = "1"\ncurrency = "X"',
            r"models\.gpt-4-1\.prices\[0\]\.currency: an ISO 4217 code",
        ),
        # official exchange rates
        ('[[exchange_rates]]\nfrom = "USD"\nto = "CNY"', r"exchange_rates\[0\]\.rate: required"),
        (
            '[[exchange_rates]]\nfrom = "USD"\nto = "CNY"\nrate = "0"',
            r"exchange_rates\[0\]\.rate: must be greater than 0",
        ),
        (
            '[[exchange_rates]]\nfrom = "USD"\nto = "CNY"\nrate = "-7"',
            r"exchange_rates\[0\]\.rate: must be a finite, non-negative",
        ),
        (
            '[[exchange_rates]]\nfrom = "USD"\nto = "usd"\nrate = "1"',
            r"exchange_rates\[0\]\.to: a rate from USD to itself",
        ),
        (
            '[[exchange_rates]]\nfrom = "USD"\nto = "yuan"\nrate = "7"',
            r"exchange_rates\[0\]\.to: an ISO 4217 code",
        ),
        (
            '[[exchange_rates]]\nto = "CNY"\nrate = "7"',
            r"exchange_rates\[0\]\.from: an ISO 4217 code",
        ),
        (
            '[[exchange_rates]]\nfrom = "USD"\nto = "CNY"\nrate = "7"\nsource = "x"',
            r"exchange_rates\[0\]: unknown keys \['source'\]",
        ),
        ('exchange_rates = {from = "USD"}', r"exchange_rates: must be an array of tables"),
        (
            '[[exchange_rates]]\nfrom = "USD"\nto = "CNY"\nrate = "7"\neffective_from = "2026-12-01T00:00:00Z"\n'
            '[[exchange_rates]]\nfrom = "EUR"\nto = "CNY"\nrate = "8"\n'
            '[[exchange_rates]]\nfrom = "USD"\nto = "CNY"\nrate = "7.1"\neffective_from = "2026-12-01T00:00:00Z"',
            r"exchange_rates\[2\]\.effective_from: duplicate",
        ),
        (
            '[[exchange_rates]]\nfrom = "USD"\nto = "CNY"\nrate = "7"\neffective_from = "2026-12-01T00:00:00Z"\n'
            '[[exchange_rates]]\nfrom = "USD"\nto = "CNY"\nrate = "7.1"',
            r"exchange_rates\[1\]\.effective_from: required \(only the first entry may be undated\)",
        ),
        # billing terms
        (
            '[providers.openai]\nbilling_rate = "1"',
            r"providers\.openai\.billing_currency: required with a billing rate",
        ),
        (
            '[providers.openai]\nbilling_currency = "CNY"',
            r"providers\.openai\.billing_currency: no \[\[exchange_rates\]\] rate converts USD",
        ),
        (
            '[providers.openai]\nbilling_currency = "CNY"\nbilling_rate = "0"',
            r"providers\.openai\.billing_rate: must be greater than 0",
        ),
        (
            '[providers.openai]\nbilling_currency = "CNY"\nbilling_rate = "1"\nbilling_rates = [{rate = "1"}]',
            r"providers\.openai\.billing_rates: give billing_rate or billing_rates, not both",
        ),
        (
            '[models.gpt-4-1]\nbilling_currency = "USD"\nbilling_rate = "1"',
            r"models\.gpt-4-1\.billing_rate: the model is listed in USD already",
        ),
        (
            '[models.gpt-4-1]\nbilling_currency = "CNY"\nbilling_rates = []',
            r"billing_rates: at least one rate is required",
        ),
        (
            '[models.gpt-4-1]\nbilling_currency = "CNY"\nbilling_rates = [{rate = "1", effective_from = "2026-01-01T00:00:00Z"}]',
            r"models\.gpt-4-1\.billing_rates\[0\]\.effective_from: the provider's rate must be in effect",
        ),
        (
            '[models.gpt-4-1]\nbilling_currency = "CNY"\nbilling_rate = "1"\n'
            '[[models.gpt-4-1.prices]]\neffective_from = "2026-12-01T00:00:00Z"\ninput_per_mtok = "1"\noutput_per_mtok = "1"\ncurrency = "EUR"',
            r"models\.gpt-4-1\.billing_rate: models\.gpt-4-1 is listed in several currencies \(EUR, USD\)",
        ),
    ],
)
def test_bad_prices_rates_and_billing_fail_naming_the_key(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry(toml)
