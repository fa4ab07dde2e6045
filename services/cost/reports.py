"""Usage reports: the ledger's sums regrouped by model, tenant, local day or local month.
Pure: takes :class:`~services.cost.accounts.UsageGroup` rows, returns report rows.

Each row has what was billed and, from the official cost each record keeps (its list price at
the official exchange rate of its time, in the currency it was billed in), what the official
rate would have cost and the saving. A row holding any record without an official cost (no
official rate converted its pair then, or it was recorded before the ledger kept one) has no
official figure at all, and says how many records lack one: a sum over part of the row would
compare with nothing.

Calls answered by simulated models are reported apart (:func:`split`): their rows never mix
with the real ones, nor their totals with real spend."""

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
    #: the official costs of the requests that have one, summed
    official_known_micros: int = 0
    #: how many of the requests have no official cost
    requests_without_official: int = 0

    @property
    def official_micros(self) -> int | None:
        """What the row's requests would have cost at the official rates, in ``currency``;
        None when any of them has no official cost."""
        return None if self.requests_without_official else self.official_known_micros

    @property
    def saving_micros(self) -> int | None:
        """``official - cost`` (negative when the provider's own rate was the dearer); None
        with ``official_micros``."""
        official = self.official_micros
        return None if official is None else official - self.cost_micros


_FIELDS = 7


def _values(r: ReportRow | UsageGroup) -> tuple[int, ...]:
    return (
        r.requests, r.input_tokens, r.output_tokens, r.cost_micros, r.estimated_requests,
        r.official_known_micros, r.requests_without_official,
    )  # fmt: skip


def _add(acc: list[int], values: tuple[int, ...]) -> None:
    for i, v in enumerate(values):
        acc[i] += v


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
        _add(sums.setdefault((key, g.currency), [0] * _FIELDS), _values(g))
    return [ReportRow(k, c, *v) for (k, c), v in sorted(sums.items())]


@dataclass(frozen=True)
class Report:
    """A report's rows: the real calls', and apart from them the simulated calls'."""

    rows: list[ReportRow]
    simulated_rows: list[ReportRow]


def split(groups: Iterable[UsageGroup], by: str, time_zone: str = "UTC") -> Report:
    """:func:`report` of the real groups and, apart, of the simulated ones."""
    real: list[UsageGroup] = []
    simulated: list[UsageGroup] = []
    for g in groups:
        (simulated if g.simulated else real).append(g)
    return Report(report(real, by, time_zone), report(simulated, by, time_zone))


def totals(rows: Iterable[ReportRow]) -> list[ReportRow]:
    """``rows`` summed per currency (each keyed by its currency), sorted by currency."""
    sums: dict[str, list[int]] = {}
    for r in rows:
        _add(sums.setdefault(r.currency, [0] * _FIELDS), _values(r))
    return [ReportRow(c, c, *v) for c, v in sorted(sums.items())]
