"""Usage reports, the pure part: keys in a time zone, sums per key and currency."""

from __future__ import annotations

from datetime import datetime

import pytest

from services.cost.accounts import QUARTER_US, UsageGroup
from services.cost.reports import ReportRow, key_of, report


def us(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1_000_000)


def g(tenant: str, model: str, currency: str, at: str | None, cost: int, n: int = 1) -> UsageGroup:
    quarter = None if at is None else us(at) // QUARTER_US * QUARTER_US
    return UsageGroup(tenant, model, currency, quarter, n, 10 * n, 20 * n, cost, 0)


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
        ReportRow("2026-11-01", "USD", 3, 30, 60, 150, 0),
        ReportRow("2026-11-02", "CNY", 1, 10, 20, 7, 0),
        ReportRow("2026-11-02", "USD", 1, 10, 20, 1, 0),
    ]
    assert [(r.key, r.currency, r.cost_micros) for r in report(groups, "tenant")] == [
        ("acme", "CNY", 7), ("acme", "USD", 150), ("globex", "USD", 1),
    ]  # fmt: skip
    assert [r.key for r in report(groups, "month", "Asia/Tokyo")] == ["2026-11", "2026-11"]
    with pytest.raises(ValueError):
        report(groups, "week")
