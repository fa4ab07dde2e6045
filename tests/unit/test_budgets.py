"""Budgets, the pure part: months in a time zone, the status arithmetic, alerts, limits."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorum.errors import InvalidArgument
from services.cost.budgets import (
    DAY_US,
    Budget,
    admits,
    check_budget,
    month_of,
    newly_reached,
    status,
)


def us(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1_000_000)


def test_the_month_is_the_month_of_the_time_zone() -> None:
    # 2026-11-30T20:00Z is already December in Tokyo (UTC+9)
    at = us("2026-11-30T20:00:00+00:00")
    assert month_of(at, "UTC") == (us("2026-11-01T00:00:00+00:00"), us("2026-12-01T00:00:00+00:00"))
    assert month_of(at, "Asia/Tokyo") == (
        us("2026-12-01T00:00:00+09:00"),
        us("2027-01-01T00:00:00+09:00"),
    )


def test_a_month_that_changes_its_utc_offset_starts_and_ends_at_local_midnight() -> None:
    # New York leaves daylight saving on 2026-11-01: October starts at -04:00, ends at -05:00
    start, end = month_of(us("2026-10-15T12:00:00+00:00"), "America/New_York")
    assert start == us("2026-10-01T00:00:00-04:00")
    assert end == us("2026-11-01T00:00:00-04:00")  # midnight, still in daylight time
    start, end = month_of(us("2026-11-15T12:00:00+00:00"), "America/New_York")
    assert start == us("2026-11-01T00:00:00-04:00")
    assert end == us("2026-12-01T00:00:00-05:00")


@given(st.integers(us("1990-01-01T00:00:00+00:00"), us("2090-01-01T00:00:00+00:00")),
       st.sampled_from(["UTC", "Asia/Kolkata", "America/St_Johns", "Australia/Lord_Howe",
                        "Europe/Berlin", "Pacific/Chatham"]))  # fmt: skip
def test_every_instant_lies_in_its_month(at: int, tz: str) -> None:
    start, end = month_of(at, tz)
    assert start <= at < end
    local = datetime.fromtimestamp(start / 1e6, UTC).astimezone(ZoneInfo(tz))
    assert (local.day, local.hour, local.minute) == (1, 0, 0)
    assert month_of(end, tz)[0] == end  # the next month starts where this one ends
    assert 28 * DAY_US - 2 * 3_600_000_000 < end - start < 31 * DAY_US + 2 * 3_600_000_000


def test_status_projects_the_month_from_the_daily_rate() -> None:
    b = Budget("acme", "", 100_000_000, "USD")  # $100
    now = us("2026-11-11T00:00:00+00:00")  # 10 days into a 30-day month
    s = status(b, spent_micros=40_000_000, reserved_micros=1_000_000, now_us=now)
    assert s.daily_rate_micros == 4_000_000
    assert s.projected_micros == 40_000_000 + 20 * 4_000_000
    assert s.daily_budget_micros == 3_333_333  # $100 over the 30 days of November
    assert s.remaining_micros == 60_000_000
    assert s.days_left == pytest.approx(15.0)
    assert s.reached() == ()
    assert not s.exceeded
    s = status(b, spent_micros=80_000_000, reserved_micros=0, now_us=now)
    assert s.reached() == (0.8,)
    assert newly_reached((), s) == (0.8,) and newly_reached((0.8,), s) == ()
    s = status(b, spent_micros=120_000_000, reserved_micros=0, now_us=now)
    assert s.reached() == (0.8, 1.0) and s.exceeded and s.days_left == 0.0
    assert s.remaining_micros == -20_000_000


def test_nothing_spent_has_no_rate_and_no_days_left() -> None:
    s = status(Budget("acme", "", 1, "USD"), 0, 0, us("2026-11-11T00:00:00+00:00"))
    assert s.daily_rate_micros == 0 and s.days_left is None and s.projected_micros == 0


def test_a_hard_budget_admits_up_to_its_limit_exactly() -> None:
    b = Budget("acme", "", 10_000, "USD")
    assert admits(b, 6_000, 3_000, 1_000)
    assert not admits(b, 6_000, 3_000, 1_001)
    assert admits(Budget("acme", "", 10_000, "USD", alert_only=True), 6_000, 3_000, 10**9)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"limit_micros": 0}, "budget.limit.micros"),
        ({"limit_micros": 10**19}, "budget.limit.micros"),
        ({"currency": "usd"}, "budget.limit.currency"),
        ({"currency": "US"}, "budget.limit.currency"),
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"time_zone": "../etc/passwd"}, "time_zone"),
        ({"alerts": (0.0,)}, "budget.alert_thresholds"),
        ({"alerts": (float("nan"),)}, "budget.alert_thresholds"),
        ({"alerts": tuple(i / 20 for i in range(1, 20))}, "budget.alert_thresholds"),
    ],
)
def test_bad_budgets_name_the_field(change: dict[str, object], field: str) -> None:
    fields: dict[str, object] = {
        "tenant": "acme", "model": "", "limit_micros": 1, "currency": "USD"
    } | change  # fmt: skip
    with pytest.raises(InvalidArgument) as e:
        check_budget(Budget(**fields))  # type: ignore[arg-type]
    assert e.value.metadata["field"] == field


def test_alerts_are_sorted_and_deduplicated_and_default_to_80_and_100_percent() -> None:
    b = check_budget(Budget("acme", "", 1, "USD", alerts=(1.0, 0.5, 0.5)))
    assert b.alerts == (0.5, 1.0)
    assert check_budget(Budget("acme", "", 1, "USD", alerts=())).alerts == (0.8, 1.0)
