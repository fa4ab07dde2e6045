"""Pricing: tokens × the price in effect → integer micro-units of the billing currency. Pure
and exact.

A price of P currency units per million tokens is P micro-units per token, so the cost of
``n`` tokens is ``n × P`` micro-units. Input tokens the provider served from its prompt cache
cost the cached-input price instead of the input price. A model's prices form a history: each
takes effect at its ``effective_from`` (the first may have none: since the beginning), and a
call is priced at the price in effect when it happened. A model with no price in effect is an
error (:class:`PriceNotFound`), never a cost of zero: a free model says so with a price of 0.

A model may be billed in a currency other than its list price's (a reseller quoting USD list
prices and billing CNY): the exact list cost is converted at the provider's own rate when it
has one, else at the official exchange rate of that time (:class:`quorum.money.Rates`), and
rounded half-up to a whole micro-unit once, at the end.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from dataclasses import dataclass, field
from decimal import Decimal

from quorum import money
from quorum.backends.types import TokenUsage
from quorum.errors import FailedPrecondition
from quorum.money import Rates


@dataclass(frozen=True)
class Cost:
    micros: int
    currency: str


@dataclass(frozen=True)
class Price:
    """Price per million tokens in ``currency`` (exact decimals, never floats), in effect from
    ``effective_from_us`` (microseconds since the epoch; None: since the beginning)."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    currency: str = "USD"
    #: input tokens served from the provider's prompt cache; None: the input price
    cached_input_per_mtok: Decimal | None = None
    effective_from_us: int | None = None

    @property
    def cached_input(self) -> Decimal:
        """The cached-input price per million tokens (the input price unless set)."""
        if self.cached_input_per_mtok is None:
            return self.input_per_mtok
        return self.cached_input_per_mtok


@dataclass(frozen=True)
class Billing:
    """How a model's provider bills when it bills in another currency than its list price's:
    in ``currency``, converting the list cost at its own ``rates`` (from the list currency to
    ``currency``) or, when None, at the official exchange rate of the day."""

    currency: str
    rates: Rates | None = None


@dataclass(frozen=True)
class Pricing:
    """A model's prices, oldest first (strictly increasing ``effective_from_us``; only the
    first may be undated), and its billing when not in the list currency. No prices at all is
    a model that cannot be billed."""

    prices: tuple[Price, ...] = ()
    billing: Billing | None = None
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = tuple(
            money.BEGINNING_US if p.effective_from_us is None else p.effective_from_us
            for p in self.prices
        )
        if any(b <= a for a, b in itertools.pairwise(starts)):
            raise ValueError("prices must be in strictly increasing order of effective_from")
        object.__setattr__(self, "_starts", starts)

    def at(self, at_us: int) -> Price | None:
        """The price in effect at ``at_us``, or None (no price yet, or none at all)."""
        i = bisect_right(self._starts, at_us)
        return self.prices[i - 1] if i else None

    def billing_currency(self, price: Price) -> str:
        return self.billing.currency if self.billing is not None else price.currency


class PriceNotFound(FailedPrecondition):
    """A model has no price in effect at the time of a call: it cannot be billed."""

    default_reason = "PRICE_NOT_FOUND"


def price_at(model: str, pricing: Pricing, at_us: int) -> Price:
    """The price of ``model`` in effect at ``at_us``; PriceNotFound (metadata ``model``,
    ``at``) when it has none then."""
    price = pricing.at(at_us)
    if price is not None:
        return price
    when = money.format_instant(at_us)
    if pricing.prices:
        first = pricing.prices[0]
        assert first.effective_from_us is not None  # an undated first price always applies
        detail = f"its first price takes effect {money.format_instant(first.effective_from_us)}"
    else:
        detail = 'give it input_per_mtok and output_per_mtok ("0" for a free model)'
    raise PriceNotFound(
        f"model {model!r} has no price in effect at {when}: {detail}",
        metadata={"model": model[:100], "at": when},
    )


def check_usage(usage: TokenUsage) -> None:
    """ValueError when the counts are negative or more input was cached than there was."""
    if usage.input_tokens < 0 or usage.output_tokens < 0 or usage.cached_input_tokens < 0:
        raise ValueError("token counts cannot be negative")
    if usage.cached_input_tokens > usage.input_tokens:
        raise ValueError("cached input tokens cannot exceed input tokens")


def exact_cost(price: Price, usage: TokenUsage) -> Decimal:
    """What ``usage`` costs at ``price``, in micro-units of its currency, unrounded."""
    check_usage(usage)
    uncached = usage.input_tokens - usage.cached_input_tokens
    return money.add(
        money.multiply(uncached, price.input_per_mtok),
        money.multiply(usage.cached_input_tokens, price.cached_input),
        money.multiply(usage.output_tokens, price.output_per_mtok),
    )


def cost_of(price: Price, usage: TokenUsage) -> Cost:
    """What ``usage`` costs at ``price``, in its currency, rounded half-up once."""
    return Cost(money.to_micros(exact_cost(price, usage)), price.currency)


@dataclass(frozen=True)
class Bill:
    """A call priced: at ``price`` (the one in effect), ``list_cost`` in the list currency,
    ``cost`` in the billing currency (what the ledger records). ``rate`` is the billing rate
    applied (None when billed in the list currency); ``own_rate`` says whether it was the
    provider's own rather than the official one. ``exact_list_micros`` is the list cost
    before rounding, to convert further without rounding twice."""

    price: Price
    cost: Cost
    list_cost: Cost
    exact_list_micros: Decimal
    rate: Decimal | None = None
    own_rate: bool = False


def bill(model: str, pricing: Pricing, usage: TokenUsage, at_us: int, rates: Rates) -> Bill:
    """Price a call of ``model`` that happened at ``at_us``. Raises PriceNotFound when the
    model has no price then, NoExchangeRate when its billing currency differs from the list
    currency and no rate (its provider's own, or the official one in ``rates``) converts the
    pair then, and ValueError for impossible token counts."""
    price = price_at(model, pricing, at_us)
    exact = exact_cost(price, usage)
    list_cost = Cost(money.to_micros(exact), price.currency)
    billing = pricing.billing
    if billing is None or billing.currency == price.currency:
        return Bill(price, list_cost, list_cost, exact)
    own = billing.rates is not None
    table = billing.rates if billing.rates is not None else rates
    rate = table.rate(price.currency, billing.currency, at_us)
    billed = table.convert_exact(exact, price.currency, billing.currency, at_us)
    return Bill(price, Cost(money.to_micros(billed), billing.currency), list_cost, exact, rate, own)


def micros_per_mtok(amount: Decimal) -> int:
    """A per-million-token price as integer micro-units (for the API's price table)."""
    return money.to_micros(amount * 1_000_000)
