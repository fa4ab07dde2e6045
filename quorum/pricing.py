"""Pricing: tokens × price per million tokens → integer micro-units. Pure and exact.

A price of P currency units per million tokens is P micro-units per token, so the cost of
``n`` tokens is ``n × P`` micro-units, rounded half-up to a whole micro-unit once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from quorum.backends.types import TokenUsage
from quorum.registry import Price


@dataclass(frozen=True)
class Cost:
    micros: int
    currency: str


def cost_of(price: Price, usage: TokenUsage) -> Cost:
    if usage.input_tokens < 0 or usage.output_tokens < 0:
        raise ValueError("token counts cannot be negative")
    exact = usage.input_tokens * price.input_per_mtok + usage.output_tokens * price.output_per_mtok
    return Cost(int(exact.to_integral_value(rounding=ROUND_HALF_UP)), price.currency)


def micros_per_mtok(amount: Decimal) -> int:
    """A per-million-token price as integer micro-units (for the API's price table)."""
    return int((amount * 1_000_000).to_integral_value(rounding=ROUND_HALF_UP))
