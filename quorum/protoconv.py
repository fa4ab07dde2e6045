"""Conversions between domain values and the shared protobuf messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from quorum.backends.types import TokenUsage
from quorum.common.v1 import common_pb2
from quorum.pricing import Cost

_CATEGORY = {
    "violence": common_pb2.CATEGORY_VIOLENCE,
    "adult": common_pb2.CATEGORY_ADULT,
    "hate": common_pb2.CATEGORY_HATE,
    "spam": common_pb2.CATEGORY_SPAM,
    "harassment": common_pb2.CATEGORY_HARASSMENT,
    "injection": common_pb2.CATEGORY_INJECTION,
    "self_harm": common_pb2.CATEGORY_SELF_HARM,
}
_CATEGORY_NAME = {v: k for k, v in _CATEGORY.items()}


def category_scores(scores: Mapping[str, float]) -> list[common_pb2.CategoryScore]:
    return [
        common_pb2.CategoryScore(category=_CATEGORY[name], score=round(score, 6))
        for name, score in scores.items()
        if name in _CATEGORY
    ]


def category_name(value: int) -> str:
    return str(_CATEGORY_NAME.get(value, "unspecified"))  # type: ignore[call-overload]


def scores_dict(items: Iterable[common_pb2.CategoryScore]) -> dict[str, float]:
    return {category_name(c.category): c.score for c in items}


def usage(u: TokenUsage) -> common_pb2.Usage:
    return common_pb2.Usage(
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cached_input_tokens=u.cached_input_tokens,
    )


def money(c: Cost) -> common_pb2.Money:
    return common_pb2.Money(micros=c.micros, currency=c.currency)


def format_money(m: common_pb2.Money) -> str:
    """Human form, e.g. "$0.006000" style: amount with six decimals and the currency code."""
    sign = "-" if m.micros < 0 else ""
    whole, frac = divmod(abs(m.micros), 1_000_000)
    return f"{sign}{whole}.{frac:06d} {m.currency or 'USD'}"
