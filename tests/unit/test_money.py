"""quorum.money: dated exchange rates, conversion rounded half-up once, errors for a pair
with no rate. The properties check conversion against exact rational arithmetic."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorum.errors import FailedPrecondition
from quorum.money import ExchangeRate, NoExchangeRate, Rates, format_instant, is_currency, to_micros

DAY_US = 86_400 * 1_000_000
T0 = 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z
T1 = T0 + 334 * DAY_US  # 2026-12-01T00:00:00Z


def usd_cny() -> Rates:
    return Rates(
        [
            ExchangeRate("USD", "CNY", Decimal("7.3")),
            ExchangeRate("USD", "CNY", Decimal("7.1"), T1),
            ExchangeRate("EUR", "USD", Decimal("1.08"), T0),
        ]
    )


def test_format_instant_is_rfc3339_utc() -> None:
    assert format_instant(T0) == "2026-01-01T00:00:00Z"
    assert format_instant(T1) == "2026-12-01T00:00:00Z"
    assert format_instant(T0 + 1) == "2026-01-01T00:00:00.000001Z"


def test_to_micros_rounds_half_up_away_from_zero() -> None:
    assert to_micros(Decimal("0.5")) == 1
    assert to_micros(Decimal("0.4999999")) == 0
    assert to_micros(Decimal("2.5")) == 3
    assert to_micros(Decimal("-2.5")) == -3


@pytest.mark.parametrize(
    ("code", "ok"), [("USD", True), ("CNY", True), ("usd", False), ("US", False), ("ÜSD", False)]
)
def test_is_currency(code: str, ok: bool) -> None:
    assert is_currency(code) is ok


def test_the_rate_in_effect_at_a_time() -> None:
    rates = usd_cny()
    assert rates.rate("USD", "CNY", 0) == Decimal("7.3")  # undated: since the beginning
    assert rates.rate("USD", "CNY", T1 - 1) == Decimal("7.3")
    assert rates.rate("USD", "CNY", T1) == Decimal("7.1")  # takes effect at its instant
    assert rates.rate("USD", "USD", T0) == 1


def test_convert_rounds_once_half_up() -> None:
    rates = usd_cny()
    assert rates.convert(1_000_000, "USD", "CNY", T0) == 7_300_000
    assert rates.convert(1_000_000, "USD", "CNY", T1) == 7_100_000
    # 5 × 7.3 = 36.5 → 37; 15 × 7.1 = 106.5 → 107
    assert rates.convert(5, "USD", "CNY", T0) == 37
    assert rates.convert(15, "USD", "CNY", T1) == 107
    assert rates.convert(123, "EUR", "EUR", T0) == 123


def test_a_pair_converts_the_other_way_by_division() -> None:
    rates = usd_cny()
    assert rates.convert(7_300_000, "CNY", "USD", T0) == 1_000_000
    # 1 micro-CNY / 7.3 = 0.137 → 0; 73 / 7.3 = 10 exactly; 36.5 / 7.3 = 5
    assert rates.convert(1, "CNY", "USD", T0) == 0
    assert rates.convert(73, "CNY", "USD", T0) == 10
    # 121 / 22 is exactly 5.5: division keeps it exact, so it rounds up (multiplying by a
    # 60-digit 1/22 would give 5.4999... and round down)
    halves = Rates([ExchangeRate("USD", "JPY", Decimal("22"))])
    assert halves.convert(121, "JPY", "USD", 0) == 6
    assert rates.rate("USD", "EUR", T0).quantize(Decimal("1e-12")) == Decimal("0.925925925926")


def test_both_directions_configured_each_use_their_own() -> None:
    rates = Rates(
        [ExchangeRate("USD", "CNY", Decimal("7.3")), ExchangeRate("CNY", "USD", Decimal("0.14"))]
    )
    assert rates.convert(1_000_000, "USD", "CNY", 0) == 7_300_000
    assert rates.convert(1_000_000, "CNY", "USD", 0) == 140_000


def test_an_unknown_pair_is_a_clear_error() -> None:
    with pytest.raises(NoExchangeRate) as info:
        usd_cny().convert(1, "USD", "JPY", T0)
    err = info.value
    assert isinstance(err, FailedPrecondition)
    assert err.reason == "NO_EXCHANGE_RATE"
    assert err.metadata == {"from": "USD", "to": "JPY"}
    assert "USD to JPY" in err.message
    # no triangulation: EUR→USD and USD→CNY do not make EUR→CNY
    with pytest.raises(NoExchangeRate):
        usd_cny().convert(1, "EUR", "CNY", T1)


def test_before_a_pairs_first_rate_there_is_none() -> None:
    with pytest.raises(NoExchangeRate) as info:
        usd_cny().convert(1_000_000, "EUR", "USD", T0 - 1)
    assert info.value.metadata == {"from": "EUR", "to": "USD", "at": "2025-12-31T23:59:59.999999Z"}
    assert "2026-01-01T00:00:00Z" in info.value.message
    # the same holds the other way round
    with pytest.raises(NoExchangeRate) as info:
        usd_cny().convert(1_000_000, "USD", "EUR", T0 - 1)
    assert (info.value.metadata["from"], info.value.metadata["to"]) == ("USD", "EUR")
    assert usd_cny().convert(1_080_000, "USD", "EUR", T0) == 1_000_000


@pytest.mark.parametrize(
    ("rates", "message"),
    [
        ([ExchangeRate("USD", "CNY", Decimal(0))], "not a positive number"),
        ([ExchangeRate("USD", "CNY", Decimal(-1))], "not a positive number"),
        ([ExchangeRate("USD", "CNY", Decimal("NaN"))], "not a positive number"),
        ([ExchangeRate("usd", "CNY", Decimal(1))], "ISO 4217"),
        ([ExchangeRate("USD", "USD", Decimal(1))], "to itself"),
        (
            [
                ExchangeRate("USD", "CNY", Decimal(7), T1),
                ExchangeRate("USD", "CNY", Decimal(7), T0),
            ],
            "increasing order",
        ),
        (
            [
                ExchangeRate("USD", "CNY", Decimal(7), T0),
                ExchangeRate("USD", "CNY", Decimal(8), T0),
            ],
            "increasing order",
        ),
        (
            [ExchangeRate("USD", "CNY", Decimal(7), T0), ExchangeRate("USD", "CNY", Decimal(8))],
            "only the first rate of a pair can be undated",
        ),
    ],
)
def test_bad_rates_are_refused(rates: list[ExchangeRate], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rates(rates)


def test_rates_are_values() -> None:
    assert usd_cny() == usd_cny()
    assert hash(usd_cny()) == hash(usd_cny())
    assert len(usd_cny()) == 3
    assert usd_cny().pairs() == {("USD", "CNY"), ("EUR", "USD")}
    assert usd_cny().knows("CNY", "USD")
    assert not usd_cny().knows("CNY", "EUR")


# --- properties: exact rational arithmetic as the oracle ------------------------------------

rates_st = st.decimals(
    min_value=Decimal("0.000001"), max_value=Decimal("100000"), places=6, allow_nan=False
)
amounts_st = st.integers(-(10**18), 10**18)


def half_up(x: Fraction) -> int:
    sign = -1 if x < 0 else 1
    whole, rest = divmod(abs(x), 1)
    return sign * int(whole + (1 if rest >= Fraction(1, 2) else 0))


@given(amount=amounts_st, rate=rates_st)
def test_convert_equals_exact_rounding_both_ways(amount: int, rate: Decimal) -> None:
    rates = Rates([ExchangeRate("USD", "CNY", rate)])
    assert rates.convert(amount, "USD", "CNY", 0) == half_up(Fraction(amount) * Fraction(rate))
    assert rates.convert(amount, "CNY", "USD", 0) == half_up(Fraction(amount) / Fraction(rate))


@given(amount=amounts_st, rate=rates_st)
def test_convert_exact_then_round_is_convert(amount: int, rate: Decimal) -> None:
    rates = Rates([ExchangeRate("USD", "CNY", rate)])
    for src, dst in (("USD", "CNY"), ("CNY", "USD")):
        assert to_micros(rates.convert_exact(amount, src, dst, 0)) == rates.convert(
            amount, src, dst, 0
        )


@given(
    starts=st.lists(st.integers(0, 10**17), min_size=1, max_size=6, unique=True),
    at=st.integers(-(10**17), 2 * 10**17),
)
def test_the_latest_rate_not_after_the_time_applies(starts: list[int], at: int) -> None:
    starts.sort()
    rates = Rates(
        [ExchangeRate("USD", "CNY", Decimal(i + 1), start) for i, start in enumerate(starts)]
    )
    in_effect = [i for i, start in enumerate(starts) if start <= at]
    if not in_effect:
        with pytest.raises(NoExchangeRate):
            rates.rate("USD", "CNY", at)
    else:
        assert rates.rate("USD", "CNY", at) == in_effect[-1] + 1
