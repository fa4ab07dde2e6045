"""Monthly budgets: the pure part (no storage, no gRPC).

A budget caps what one tenant spends in a calendar month, optionally on one model only,
in one currency; the month is the month of the budget's time zone. Alerts fire when the
spend reaches fractions of the limit (80% and 100% unless set). A *hard* budget also
refuses a :func:`reservation <admits>` that would take spent + reserved past the limit;
an ``alert_only`` one only reports.

Money is integer micro-units everywhere; the projection and the daily rate are rounded
half-up once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from quorum.errors import InvalidArgument

DEFAULT_ALERTS = (0.8, 1.0)
MAX_ALERTS = 10
#: the most a budget may be: a trillion currency units, far below int64 micro-units
MAX_LIMIT_MICROS = 10**18
DAY_US = 86_400 * 1_000_000


def invalid(field_name: str, problem: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field_name}: {problem}", reason="INVALID_FIELD", metadata={"field": field_name}
    )


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; InvalidArgument (field ``time_zone``) when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise invalid("time_zone", f"{name!r} is not an IANA time zone") from None


@dataclass(frozen=True)
class Budget:
    tenant: str
    #: "" for every model of the tenant
    model: str
    limit_micros: int
    currency: str
    time_zone: str = "UTC"
    #: fractions of the limit, ascending
    alerts: tuple[float, ...] = DEFAULT_ALERTS
    #: only report; never refuse a reservation
    alert_only: bool = False

    def covers(self, tenant: str, model: str) -> bool:
        return self.tenant == tenant and self.model in ("", model)


def check_budget(budget: Budget) -> Budget:
    """``budget`` with its alerts sorted and de-duplicated; InvalidArgument naming the field
    when a value is out of range."""
    if not 0 < budget.limit_micros <= MAX_LIMIT_MICROS:
        raise invalid("budget.limit.micros", f"must be between 1 and {MAX_LIMIT_MICROS}")
    if len(budget.currency) != 3 or not budget.currency.isalpha() or not budget.currency.isupper():
        raise invalid("budget.limit.currency", "must be an ISO 4217 code such as USD")
    zone(budget.time_zone)
    alerts = tuple(sorted(set(budget.alerts))) or DEFAULT_ALERTS
    if len(alerts) > MAX_ALERTS:
        raise invalid("budget.alert_thresholds", f"at most {MAX_ALERTS} thresholds")
    if any(not (math.isfinite(a) and 0 < a <= 10) for a in alerts):
        raise invalid("budget.alert_thresholds", "each must be a fraction in (0, 10]")
    return Budget(
        budget.tenant,
        budget.model,
        budget.limit_micros,
        budget.currency,
        budget.time_zone,
        alerts,
        budget.alert_only,
    )


def _us(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def month_of(at_us: int, time_zone: str) -> tuple[int, int]:
    """``(start_us, end_us)`` of the calendar month, in ``time_zone``, holding ``at_us``."""
    tz = zone(time_zone)
    local = datetime.fromtimestamp(at_us / 1e6, UTC).astimezone(tz)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = (start + timedelta(days=32)).replace(day=1)
    # replace() keeps the offset of ``local``; re-attach the zone so DST is right at each end
    start = start.replace(tzinfo=None).replace(tzinfo=tz)
    nxt = nxt.replace(tzinfo=None).replace(tzinfo=tz)
    return _us(start), _us(nxt)


@dataclass(frozen=True)
class Alert:
    threshold: float
    reached: bool


@dataclass(frozen=True)
class Status:
    """Where a budget stands at ``now_us`` (all money in the budget's currency)."""

    budget: Budget
    period_start_us: int
    period_end_us: int
    spent_micros: int
    reserved_micros: int
    remaining_micros: int
    #: spent per day so far this month
    daily_rate_micros: int
    #: days until the limit at that rate; None when nothing was spent (no rate)
    days_left: float | None
    #: spent + daily rate × the days left in the month
    projected_micros: int
    #: the limit spread evenly over the days of the month
    daily_budget_micros: int
    alerts: tuple[Alert, ...] = field(default=())

    @property
    def used(self) -> float:
        return self.spent_micros / self.budget.limit_micros

    @property
    def exceeded(self) -> bool:
        return self.spent_micros >= self.budget.limit_micros

    def reached(self) -> tuple[float, ...]:
        return tuple(a.threshold for a in self.alerts if a.reached)


def _half_up(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def status(budget: Budget, spent_micros: int, reserved_micros: int, now_us: int) -> Status:
    start, end = month_of(now_us, budget.time_zone)
    # at least one hour in, so the first minutes of a month do not project wildly
    elapsed_days = Decimal(max(now_us - start, DAY_US // 24)) / DAY_US
    rate = Decimal(spent_micros) / elapsed_days
    days_to_end = Decimal(max(end - now_us, 0)) / DAY_US
    remaining = budget.limit_micros - spent_micros
    days_left: float | None = None
    if spent_micros > 0:
        days_left = max(float(Decimal(remaining) / rate), 0.0)
    return Status(
        budget=budget,
        period_start_us=start,
        period_end_us=end,
        spent_micros=spent_micros,
        reserved_micros=reserved_micros,
        remaining_micros=remaining,
        daily_rate_micros=_half_up(rate),
        days_left=days_left,
        projected_micros=spent_micros + _half_up(rate * days_to_end),
        daily_budget_micros=_half_up(Decimal(budget.limit_micros) * DAY_US / (end - start)),
        alerts=tuple(
            Alert(a, spent_micros >= _half_up(Decimal(str(a)) * budget.limit_micros))
            for a in budget.alerts
        ),
    )


def admits(budget: Budget, spent_micros: int, reserved_micros: int, amount_micros: int) -> bool:
    """Whether a hard ``budget`` can hold ``amount_micros`` more: spent + everything held,
    this included, stays within the limit. An alert-only budget admits everything."""
    if budget.alert_only:
        return True
    return spent_micros + reserved_micros + amount_micros <= budget.limit_micros


def newly_reached(before: Sequence[float], now: Status) -> tuple[float, ...]:
    """The thresholds ``now`` has reached that ``before`` had not (for alert events)."""
    seen = set(before)
    return tuple(t for t in now.reached() if t not in seen)
