"""Usage reports: the ledger's sums regrouped by model, tenant, local day or local month.
Pure: takes :class:`~services.cost.accounts.UsageGroup` rows, returns report rows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from services.cost.accounts import UsageGroup
from services.cost.budgets import zone

BY = ("model", "tenant", "day", "month")


@dataclass(frozen=True)
class ReportRow:
    """One group in one currency (a group billed in two currencies has two rows)."""

    key: str
    currency: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    estimated_requests: int = 0


def needs_time(by: str) -> bool:
    return by in ("day", "month")


def key_of(tenant: str, model: str, quarter_us: int | None, by: str, time_zone: str) -> str:
    if by == "model":
        return model
    if by == "tenant":
        return tenant
    assert quarter_us is not None, "grouping by time needs the rows' quarter-hours"
    local = datetime.fromtimestamp(quarter_us / 1e6, UTC).astimezone(zone(time_zone))
    return local.strftime("%Y-%m-%d" if by == "day" else "%Y-%m")


def report(groups: Iterable[UsageGroup], by: str, time_zone: str = "UTC") -> list[ReportRow]:
    """``groups`` summed per key and currency, sorted by both."""
    if by not in BY:
        raise ValueError(f"by must be one of {BY}")
    sums: dict[tuple[str, str], list[int]] = {}
    for g in groups:
        key = key_of(g.tenant, g.model, g.quarter_us, by, time_zone)
        acc = sums.setdefault((key, g.currency), [0, 0, 0, 0, 0])
        values = (g.requests, g.input_tokens, g.output_tokens, g.cost_micros, g.estimated_requests)
        for i, v in enumerate(values):
            acc[i] += v
    return [ReportRow(k, c, *v) for (k, c), v in sorted(sums.items())]
