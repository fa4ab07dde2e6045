"""The cost service's price book: what a call costs, the price table, estimates. Pure: the
registry (models, their prices and billing, the official exchange rates) in, domain values
out; no gRPC, no storage, no clock (every time is passed in, in microseconds since the epoch).

Errors are :mod:`quorum.errors` exceptions: an unknown model is NotFound (MODEL_NOT_FOUND); a
model with no price at the time is FailedPrecondition (PRICE_NOT_FOUND); a billing currency
no rate converts into at the time is FailedPrecondition (NO_EXCHANGE_RATE); a currency asked
for an estimate that no official rate converts into is NotFound (EXCHANGE_RATE_NOT_FOUND,
field ``currency``); a budget currency that some call the budget covers could not be counted
in is InvalidArgument (INVALID_FIELD, field ``budget.limit.currency``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from quorum import money
from quorum.backends.types import TokenUsage
from quorum.errors import InvalidArgument, NotFound
from quorum.money import NoExchangeRate, Rates
from quorum.pricing import Bill, Billing, Cost, Price, bill
from quorum.registry import ModelSpec, Registry

_ONE = Decimal(1)


def price_call(registry: Registry, model: str, usage: TokenUsage, at_us: int) -> tuple[str, Bill]:
    """The registry name of ``model`` and what ``usage`` cost at ``at_us``: at the price then
    in effect, in the model's billing currency."""
    spec = registry.get(model)
    return spec.name, bill(spec.name, spec.pricing, usage, at_us, registry.rates)


def official(rates: Rates, priced: Bill, at_us: int) -> tuple[Cost, Decimal] | None:
    """What ``priced`` costs at the official exchange rate of ``at_us`` (its list cost
    converted into its billing currency, rounded half-up once) and that rate; None when no
    official rate converts the pair then. A call billed in its list currency, or at the
    official rate, costs exactly that already: its cost, at its own rate (1 for none)."""
    if not priced.own_rate:
        return priced.cost, _ONE if priced.rate is None else priced.rate
    listed, billed = priced.price.currency, priced.cost.currency
    try:
        rate = rates.rate(listed, billed, at_us)
        exact = rates.convert_exact(priced.exact_list_micros, listed, billed, at_us)
    except NoExchangeRate:
        return None  # nothing official to compare with
    return Cost(money.to_micros(exact), billed), rate


@dataclass(frozen=True)
class Listed:
    """One row of the price table. ``seen_at_us`` is the time its billing rate is shown for:
    now for the price in effect now, else the price's own start."""

    model: str
    price: Price
    billing: Billing | None
    seen_at_us: int


def list_prices(
    registry: Registry, at_us: int, *, model: str | None = None, include_history: bool = False
) -> list[Listed]:
    """The price in effect at ``at_us`` of every model (sorted by name; a model with none then
    is left out), or of ``model`` only; with ``include_history``, every price of each, past
    and scheduled, oldest first."""
    specs = [registry.get(model)] if model else [m for _, m in sorted(registry.models.items())]
    rows: list[Listed] = []
    for spec in specs:
        now = spec.pricing.at(at_us)
        shown = spec.pricing.prices if include_history else () if now is None else (now,)
        for p in shown:
            start = money.BEGINNING_US if p.effective_from_us is None else p.effective_from_us
            seen = at_us if p is now else start
            rows.append(Listed(spec.name, p, spec.pricing.billing, seen))
    return rows


@dataclass(frozen=True)
class Estimate:
    """What a call would cost at ``at_us``.

    ``bill`` is what RecordUsage would record. For a model its provider bills at its own rate,
    ``official`` is the list cost at the official rate in the billing currency (with that
    ``official_rate``), and ``saving`` is ``official - cost``; both None when no official
    rate converts the pair. ``converted`` is the cost (the amount billed) in the currency asked
    for, at the official ``conversion_rate``; None when none was asked."""

    model: str
    at_us: int
    bill: Bill
    billing: Billing | None
    official: Cost | None = None
    official_rate: Decimal | None = None
    saving: Cost | None = None
    converted: Cost | None = None
    conversion_rate: Decimal | None = None


def estimate(
    registry: Registry, model: str, usage: TokenUsage, at_us: int, currency: str | None = None
) -> Estimate:
    """Price ``usage`` of ``model`` at ``at_us`` without recording it, and convert the cost
    into ``currency`` (an ISO 4217 code) at the official rate when given."""
    name, priced = price_call(registry, model, usage, at_us)
    spec = registry.get(name)
    rates = registry.rates
    cost = priced.cost
    out = Estimate(name, at_us, priced, spec.pricing.billing)
    found = official(rates, priced, at_us) if priced.own_rate else None
    if found is not None:
        at_official, rate = found
        out = replace(
            out,
            official=at_official,
            official_rate=rate,
            saving=Cost(at_official.micros - cost.micros, cost.currency),
        )
    if currency:
        try:
            rate = rates.rate(cost.currency, currency, at_us)
            converted = rates.convert(cost.micros, cost.currency, currency, at_us)
        except NoExchangeRate as e:
            raise NotFound(
                f"currency: no exchange rate converts {cost.currency} (the billing currency of "
                f"{name}) into {currency} at {money.format_instant(at_us)} "
                "(add one in [[exchange_rates]])",
                reason="EXCHANGE_RATE_NOT_FOUND",
                metadata={**e.metadata, "field": "currency"},
            ) from None
        out = replace(out, converted=Cost(converted, currency), conversion_rate=rate)
    return out


def _name(spec: ModelSpec) -> str:
    return spec.name


def check_budget_currency(registry: Registry, currency: str, model: str, at_us: int) -> None:
    """Make sure a budget in ``currency`` (for ``model``; "" for every model) can count every
    call it covers: an official exchange rate in effect at ``at_us`` must convert into it the
    billing currency of each covered model's price in effect then and of each later one. (A
    rate in effect stays in effect until the pair's next one, so what converts now converts
    for good, as long as the configuration keeps it.) A model with no price is never billed,
    and a free one is billed 0 in its currency, which must convert all the same: every
    reservation and every status sums the budget's calls in its currency.

    Raises InvalidArgument (INVALID_FIELD, field ``budget.limit.currency``) naming the first
    model (by name) whose billing currency does not convert, with ``from``, ``to`` and
    ``model`` in the metadata."""
    specs = [registry.get(model)] if model else sorted(registry.models.values(), key=_name)
    for spec in specs:
        pricing = spec.pricing
        current = pricing.at(at_us)
        start = 0 if current is None else pricing.prices.index(current)
        for billed in dict.fromkeys(pricing.billing_currency(p) for p in pricing.prices[start:]):
            try:
                registry.rates.rate(billed, currency, at_us)
            except NoExchangeRate as e:
                field = "budget.limit.currency"
                raise InvalidArgument(
                    f"{field}: no exchange rate converts {billed} (the billing currency of "
                    f"{spec.name}) into {currency} at {money.format_instant(at_us)}, so the "
                    "budget could not count its calls (add one in [[exchange_rates]], or "
                    "give the budget in a currency its models are billed in)",
                    reason="INVALID_FIELD",
                    metadata={**e.metadata, "field": field, "model": spec.name[:100]},
                ) from None
