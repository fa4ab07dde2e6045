"""Money and exchange rates. Pure: no I/O, no clock, no gRPC.

Money is an integer number of micro-units (1e-6) of an ISO 4217 currency, never a float.
Rates are exact decimals with the date they take effect; arithmetic is :class:`~decimal.Decimal`
with ample precision, rounded half-up to a whole micro-unit once, at the end.

    to_micros(exact) -> int               an exact amount of micro-units, rounded half-up
    is_currency(code) -> bool             three upper-case ASCII letters (ISO 4217's shape)
    format_instant(at_us) -> str          "2026-12-01T00:00:00Z", for messages
    ExchangeRate                          one rate: units of ``to`` per unit of ``from``,
                                          in effect from ``effective_from_us`` (None: always)
    Rates                                 dated rates; immutable
      .rate(from, to, at_us) -> Decimal   the rate in effect at ``at_us``
      .convert(micros, from, to, at_us)   an amount in another currency, rounded once
      .convert_exact(exact, from, ...)    the same, unrounded (to chain without rounding twice)
    NoExchangeRate                        no rate for the pair at that time (FailedPrecondition,
                                          reason NO_EXCHANGE_RATE, metadata from/to/at)

A pair configured in one direction converts the other way too, by dividing: a USD→CNY rate of
7.3 turns 7.3 CNY into 1 USD. When both directions are configured each uses its own rates.
There is no triangulation through a third currency: a missing pair is an error, never a guess.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal

from quorum.errors import FailedPrecondition

MICROS = 1_000_000
_ONE = Decimal(1)
#: enough digits that no product or quotient of amounts, prices and rates is ever cut short
#: before the one rounding at the end (amounts are below 1e19 micro-units)
_CTX = Context(prec=60, rounding=ROUND_HALF_EVEN)
_CURRENCY = re.compile(r"[A-Z]{3}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(exact: Decimal) -> int:
    """An exact number of micro-units as an integer, rounded half-up (away from zero)."""
    return int(exact.to_integral_value(rounding=ROUND_HALF_UP))


def is_currency(code: str) -> bool:
    """Whether ``code`` has the shape of an ISO 4217 code: three upper-case ASCII letters."""
    return bool(_CURRENCY.fullmatch(code))


def format_instant(at_us: int) -> str:
    """Microseconds since the Unix epoch as RFC 3339 in UTC, e.g. ``2026-12-01T00:00:00Z``."""
    try:
        text = (_EPOCH + timedelta(microseconds=at_us)).isoformat()
    except OverflowError:  # outside years 1..9999: for a message, the number will do
        return f"{at_us} microseconds after the epoch"
    return text.replace("+00:00", "Z")


class NoExchangeRate(FailedPrecondition):
    """No rate converts ``from`` into ``to`` at that time (none configured for the pair in
    either direction, or none in effect yet)."""

    default_reason = "NO_EXCHANGE_RATE"


@dataclass(frozen=True)
class ExchangeRate:
    """``rate`` units of ``to_currency`` per unit of ``from_currency``, from
    ``effective_from_us`` (microseconds since the epoch; None: since the beginning) until the
    next rate of the pair takes effect."""

    from_currency: str
    to_currency: str
    rate: Decimal
    effective_from_us: int | None = None


class Rates:
    """Exchange rates with their dates. Immutable once built.

    Raises ValueError when a rate is not a positive finite decimal, a currency is not an ISO
    4217 code, a pair converts a currency into itself, or a pair's rates are not in strictly
    increasing ``effective_from_us`` order (an undated rate, in effect since the beginning,
    can only be a pair's first).
    """

    __slots__ = ("_pairs", "_starts")

    def __init__(self, rates: Iterable[ExchangeRate] = ()) -> None:
        pairs: dict[tuple[str, str], list[ExchangeRate]] = {}
        for r in rates:
            for code in (r.from_currency, r.to_currency):
                if not is_currency(code):
                    raise ValueError(f"{code!r} is not an ISO 4217 currency code")
            if r.from_currency == r.to_currency:
                raise ValueError(f"a rate from {r.from_currency} to itself")
            if not r.rate.is_finite() or r.rate <= 0:
                raise ValueError(f"the rate {r.rate} is not a positive number")
            series = pairs.setdefault((r.from_currency, r.to_currency), [])
            if series:
                last = series[-1].effective_from_us
                if r.effective_from_us is None:
                    raise ValueError(
                        f"{r.from_currency}->{r.to_currency}: only the first rate of a pair "
                        "can be undated (in effect since the beginning)"
                    )
                if last is not None and r.effective_from_us <= last:
                    raise ValueError(
                        f"{r.from_currency}->{r.to_currency}: rates must be in increasing "
                        f"order of effective_from ({format_instant(r.effective_from_us)} "
                        f"is not after {format_instant(last)})"
                    )
            series.append(r)
        self._pairs: Mapping[tuple[str, str], tuple[ExchangeRate, ...]] = {
            k: tuple(v) for k, v in pairs.items()
        }
        self._starts: Mapping[tuple[str, str], tuple[int, ...]] = {
            k: tuple(_start(r) for r in v) for k, v in pairs.items()
        }

    def __iter__(self) -> Iterator[ExchangeRate]:
        for series in self._pairs.values():
            yield from series

    def __len__(self) -> int:
        return sum(len(s) for s in self._pairs.values())

    def __repr__(self) -> str:
        return f"Rates({list(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rates) and other._pairs == self._pairs

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._pairs.items())))

    def pairs(self) -> frozenset[tuple[str, str]]:
        """The configured (from, to) pairs, each in its configured direction."""
        return frozenset(self._pairs)

    def knows(self, from_currency: str, to_currency: str) -> bool:
        """Whether some rate converts between the two, in either direction, at some time."""
        return (
            from_currency == to_currency
            or (from_currency, to_currency) in self._pairs
            or (to_currency, from_currency) in self._pairs
        )

    def rate(self, from_currency: str, to_currency: str, at_us: int) -> Decimal:
        """Units of ``to_currency`` per unit of ``from_currency`` at ``at_us`` (1 for the same
        currency; for a pair configured the other way, 1 / its rate, to 60 digits). Raises
        NoExchangeRate."""
        rate, inverse = self._factor(from_currency, to_currency, at_us)
        return _CTX.divide(_ONE, rate) if inverse else rate

    def _factor(self, from_currency: str, to_currency: str, at_us: int) -> tuple[Decimal, bool]:
        """The configured rate that converts the pair at ``at_us``, and whether to divide by it
        (the pair is configured the other way)."""
        if from_currency == to_currency:
            return _ONE, False
        if (from_currency, to_currency) in self._pairs:
            return self._in_effect((from_currency, to_currency), at_us, False).rate, False
        if (to_currency, from_currency) in self._pairs:
            return self._in_effect((to_currency, from_currency), at_us, True).rate, True
        raise NoExchangeRate(
            f"no exchange rate from {from_currency} to {to_currency} is configured "
            "([[exchange_rates]])",
            metadata={"from": from_currency, "to": to_currency},
        )

    def convert_exact(
        self, amount_micros: Decimal | int, from_currency: str, to_currency: str, at_us: int
    ) -> Decimal:
        """``amount_micros`` of ``from_currency`` in micro-units of ``to_currency``, unrounded
        (a quotient to 60 significant digits: an amount converted the other way round is
        divided by the rate, never multiplied by a rounded inverse)."""
        rate, inverse = self._factor(from_currency, to_currency, at_us)
        amount = Decimal(amount_micros)
        return _CTX.divide(amount, rate) if inverse else _CTX.multiply(amount, rate)

    def convert(self, amount_micros: int, from_currency: str, to_currency: str, at_us: int) -> int:
        """``amount_micros`` micro-units of ``from_currency`` in micro-units of ``to_currency``
        at the rate in effect at ``at_us`` (microseconds since the epoch), rounded half-up
        once. The same currency returns the amount unchanged. Raises NoExchangeRate (a
        FailedPrecondition, reason ``NO_EXCHANGE_RATE``) when no rate converts the pair then.

        Its signature is ``(micros, from, to, at_us) -> micros``: a bound ``rates.convert``
        is a converter that budgets can hold."""
        if from_currency == to_currency:
            return amount_micros
        return to_micros(self.convert_exact(amount_micros, from_currency, to_currency, at_us))

    def _in_effect(self, pair: tuple[str, str], at_us: int, asked_inverse: bool) -> ExchangeRate:
        series = self._pairs[pair]
        i = bisect_right(self._starts[pair], at_us)
        if i == 0:
            first = series[0]
            assert first.effective_from_us is not None  # an undated first rate always applies
            src, dst = pair[::-1] if asked_inverse else pair
            raise NoExchangeRate(
                f"no exchange rate from {src} to {dst} is in effect at {format_instant(at_us)} "
                f"(the first takes effect {format_instant(first.effective_from_us)})",
                metadata={"from": src, "to": dst, "at": format_instant(at_us)},
            )
        return series[i - 1]


#: before any time a Timestamp can hold (year 1 is about -6.2e16 microseconds)
BEGINNING_US = -(2**63)


def _start(rate: ExchangeRate) -> int:
    return BEGINNING_US if rate.effective_from_us is None else rate.effective_from_us


def multiply(a: Decimal | int, b: Decimal | int) -> Decimal:
    """``a × b`` exactly (at the module's precision, far beyond any amount we handle)."""
    return _CTX.multiply(Decimal(a), Decimal(b))


def add(*terms: Decimal) -> Decimal:
    """The exact sum of ``terms``."""
    total = Decimal(0)
    for t in terms:
        total = _CTX.add(total, t)
    return total
