"""Usage reports, the pure part: keys in a time zone, sums per key and currency, simulated calls
apart."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from services.cost.accounts import QUARTER_US, UsageGroup
from services.cost.reports import Report, ReportRow, key_of, report, split, totals


def us(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1_000_000)


def g(
    tenant: str,
    model: str,
    currency: str,
    at: str | None,
    cost: int,
    n: int = 1,
    official: int | None = None,
    without: int = 0,
) -> UsageGroup:
    """A group whose official cost is its cost unless given."""
    quarter = None if at is None else us(at) // QUARTER_US * QUARTER_US
    known = cost if official is None else official
    return UsageGroup(tenant, model, currency, quarter, n, 10 * n, 20 * n, cost, 0, known, without)


def test_a_quarter_hour_belongs_to_the_day_and_month_of_the_time_zone() -> None:
    late = us("2026-11-30T15:45:00+00:00")  # 00:45 on 1 December in Tokyo
    assert key_of("t", "m", late, "day", "UTC") == "2026-11-30"
    assert key_of("t", "m", late, "day", "Asia/Tokyo") == "2026-12-01"
    assert key_of("t", "m", late, "month", "Asia/Tokyo") == "2026-12"
    # India is UTC+05:30: a quarter starting 18:30 UTC is local midnight of the next day
    assert key_of("t", "m", us("2026-11-30T18:30:00+00:00"), "day", "Asia/Kolkata") == "2026-12-01"
    assert key_of("t", "m", us("2026-11-30T18:15:00+00:00"), "day", "Asia/Kolkata") == "2026-11-30"


def test_rows_are_summed_per_key_and_currency_and_sorted() -> None:
    groups = [
        g("acme", "gpt-4.1", "USD", "2026-11-01T10:00:00+00:00", 100),
        g("acme", "gpt-4.1", "USD", "2026-11-01T23:00:00+00:00", 50, n=2),
        g("acme", "deepseek-v3.2", "CNY", "2026-11-02T01:00:00+00:00", 7),
        g("globex", "gpt-4.1", "USD", "2026-11-02T01:00:00+00:00", 1),
    ]
    assert report(groups, "day") == [
        ReportRow("2026-11-01", "USD", 3, 30, 60, 150, 0, 150, 0),
        ReportRow("2026-11-02", "CNY", 1, 10, 20, 7, 0, 7, 0),
        ReportRow("2026-11-02", "USD", 1, 10, 20, 1, 0, 1, 0),
    ]
    assert [(r.key, r.currency, r.cost_micros) for r in report(groups, "tenant")] == [
        ("acme", "CNY", 7), ("acme", "USD", 150), ("globex", "USD", 1),
    ]  # fmt: skip
    assert [r.key for r in report(groups, "month", "Asia/Tokyo")] == ["2026-11", "2026-11"]
    with pytest.raises(ValueError):
        report(groups, "week")


def test_a_row_has_an_official_cost_and_a_saving_only_when_every_request_has_one() -> None:
    day = "2026-11-01T10:00:00+00:00"
    groups = [
        # the reseller: billed 6,000 CNY-micros where the official rate makes 43,800
        g("acme", "resold-gpt", "CNY", day, 6_000, official=43_800),
        g("globex", "resold-gpt", "CNY", day, 6_000, official=43_800),
        # billed at the official rate: the same, no saving
        g("acme", "official-gpt", "CNY", day, 43_800),
        # no official rate at its time (or recorded before the ledger kept one)
        g("acme", "resold-eur", "CNY", day, 900, n=2, official=450, without=1),
    ]
    by_model = {r.key: r for r in report(groups, "model")}
    resold = by_model["resold-gpt"]
    assert (resold.cost_micros, resold.official_micros, resold.saving_micros) == (
        12_000, 87_600, 75_600,
    )  # fmt: skip
    assert (by_model["official-gpt"].official_micros, by_model["official-gpt"].saving_micros) == (
        43_800, 0,
    )  # fmt: skip
    partial = by_model["resold-eur"]
    assert partial.requests_without_official == 1
    assert partial.official_micros is None and partial.saving_micros is None  # never a part
    # a provider dearer than the official rate saves a negative amount
    (dear,) = report([g("a", "m", "CNY", None, 100, official=90)], "model")
    assert dear.saving_micros == -10
    (acme, globex) = report(groups, "tenant")
    assert acme.official_micros is None and acme.requests_without_official == 1
    assert (globex.official_micros, globex.saving_micros) == (43_800, 37_800)


def test_totals_sum_the_rows_per_currency() -> None:
    day = "2026-11-01T10:00:00+00:00"
    rows = report(
        [
            g("acme", "resold-gpt", "CNY", day, 6_000, official=43_800),
            g("acme", "gpt-4.1", "USD", day, 100),
            g("acme", "deepseek-v3.2", "USD", day, 7, n=3, without=3),
        ],
        "model",
    )
    cny, usd = totals(rows)
    assert (cny.key, cny.currency, cny.requests, cny.cost_micros) == ("CNY", "CNY", 1, 6_000)
    assert (cny.official_micros, cny.saving_micros) == (43_800, 37_800)
    assert (usd.requests, usd.cost_micros, usd.input_tokens) == (4, 107, 40)
    assert usd.official_micros is None and usd.requests_without_official == 3
    assert totals([]) == []


def test_simulated_groups_are_reported_apart_from_the_real_ones() -> None:
    real = g("acme", "gpt-4.1", "USD", None, 100)
    simulated = replace(g("acme", "gpt-4.1", "USD", None, 40, n=2), simulated=True)
    other = replace(g("globex", "gpt-4.1", "USD", None, 5), simulated=True)
    got = split([real, simulated, other], "tenant")
    assert got == Report(
        rows=[ReportRow("acme", "USD", 1, 10, 20, 100, 0, 100, 0)],
        simulated_rows=[
            ReportRow("acme", "USD", 2, 20, 40, 40, 0, 40, 0),
            ReportRow("globex", "USD", 1, 10, 20, 5, 0, 5, 0),
        ],
    )
    assert [t.cost_micros for t in totals(got.rows)] == [100]
    assert [t.cost_micros for t in totals(got.simulated_rows)] == [45]
    assert split([simulated], "model") == Report(
        [], [ReportRow("gpt-4.1", "USD", 2, 20, 40, 40, 0, 40, 0)]
    )
