"""What the ledger does in one transaction, written once for every backend.

Each operation here is a *program*: a generator that yields :class:`Sql` statements and is
sent back each statement's rows. It decides everything (which rows, which error) and does no
I/O, so SQLite (:class:`services.cost.ledger.SqliteLedger`, synchronous, on its own thread)
and PostgreSQL (:class:`services.cost.pgledger.PostgresLedger`, async) run the very same
logic, each in one transaction of its own: a program that raises leaves nothing written.

Statements use ``?`` placeholders (PostgreSQL's runner turns them into ``%s``) and the
portable subset both databases share (``ON CONFLICT``, ``RETURNING``). ``{lock}`` marks a
``SELECT`` whose rows must stay put until the transaction ends: ``FOR UPDATE`` in
PostgreSQL, nothing in SQLite, whose write transactions are already serialised
(``BEGIN IMMEDIATE``).

Tables (schema version 3; version 4 adds ``usage.cached_input_tokens``, version 5
``usage.official_cost_micros``, version 6 ``usage.simulated``): ``usage`` gains ``tenant``;
``budgets`` holds one row per (tenant, model or ""); ``budget_spend`` keeps, per budget and
month, what was spent per currency (kept up to date by every insert into ``usage``, rebuilt for
the current month when a budget is set); ``reservations`` holds amounts set aside before calls.

A usage row marked ``simulated`` (a simulated model answered the call) is kept apart from
real spend: no budget's spend counts it, and reports sum it in groups of its own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from quorum.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from services.cost.budgets import Budget, admits, month_of

T = TypeVar("T")

Rows = list[tuple[Any, ...]]


@dataclass(frozen=True)
class Sql:
    text: str
    params: tuple[object, ...] = ()


#: a ledger operation: yields statements, is sent their rows, returns its answer
Program = Generator[Sql, Rows, T]

# --- schema version 3 ----------------------------------------------------------------------

#: the same in both databases (BIGINT is an INTEGER column in SQLite)
V3_TABLES: tuple[str, ...] = (
    """
    CREATE TABLE budgets (
        tenant        TEXT NOT NULL,
        model         TEXT NOT NULL,
        limit_micros  BIGINT NOT NULL,
        currency      TEXT NOT NULL,
        time_zone     TEXT NOT NULL,
        alerts        TEXT NOT NULL,
        alert_only    INTEGER NOT NULL,
        updated_at_us BIGINT NOT NULL,
        PRIMARY KEY (tenant, model)
    )
    """,
    """
    CREATE TABLE budget_spend (
        tenant          TEXT NOT NULL,
        model           TEXT NOT NULL,
        period_start_us BIGINT NOT NULL,
        currency        TEXT NOT NULL,
        micros          BIGINT NOT NULL,
        PRIMARY KEY (tenant, model, period_start_us, currency)
    )
    """,
    """
    CREATE TABLE reservations (
        id            TEXT PRIMARY KEY,
        request_id    TEXT NOT NULL UNIQUE,
        tenant        TEXT NOT NULL,
        model         TEXT NOT NULL,
        amount_micros BIGINT NOT NULL,
        currency      TEXT NOT NULL,
        created_at_us BIGINT NOT NULL,
        expires_at_us BIGINT NOT NULL,
        state         TEXT NOT NULL,
        committed_as  TEXT,
        closed_at_us  BIGINT
    )
    """,
    "CREATE INDEX reservations_open ON reservations (tenant, state, expires_at_us)",
    "CREATE INDEX usage_tenant ON usage (tenant, occurred_at_us)",
)
V3_USAGE_TENANT = "ALTER TABLE usage ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default'"

#: schema version 5, the same in both databases: what the call would have cost at the official
#: exchange rate, in the row's currency; NULL when no official rate converted the pair at the
#: call's time, and for every row recorded before version 5 (nothing here can price those)
V5_USAGE_OFFICIAL = "ALTER TABLE usage ADD COLUMN official_cost_micros BIGINT"

#: schema version 6, per database (each spells a flag as its ``estimated`` column does): the
#: call was answered by a simulated model; false for every row recorded before version 6
V6_USAGE_SIMULATED_SQLITE = "ALTER TABLE usage ADD COLUMN simulated INTEGER NOT NULL DEFAULT 0"
V6_USAGE_SIMULATED_PG = "ALTER TABLE usage ADD COLUMN simulated BOOLEAN NOT NULL DEFAULT false"

OPEN, COMMITTED, RELEASED = "open", "committed", "released"
#: how long closed or expired reservations are kept (for late commits and for answers to
#: retried calls) before :func:`purge` drops them
KEEP_CLOSED_US = 7 * 86_400 * 1_000_000


@dataclass(frozen=True)
class Reservation:
    id: str
    request_id: str
    tenant: str
    model: str
    amount_micros: int
    currency: str
    created_at_us: int
    expires_at_us: int
    state: str = OPEN
    committed_as: str | None = None

    def expired(self, now_us: int) -> bool:
        return self.state == OPEN and self.expires_at_us <= now_us


_RESERVATION_COLUMNS = (
    "id, request_id, tenant, model, amount_micros, currency, created_at_us, expires_at_us, "
    "state, committed_as"
)


def _reservation(row: Sequence[Any]) -> Reservation:
    return Reservation(
        str(row[0]),
        str(row[1]),
        str(row[2]),
        str(row[3]),
        int(row[4]),
        str(row[5]),
        int(row[6]),
        int(row[7]),
        str(row[8]),
        None if row[9] is None else str(row[9]),
    )


_BUDGET_COLUMNS = "tenant, model, limit_micros, currency, time_zone, alerts, alert_only"


def _budget(row: Sequence[Any]) -> Budget:
    return Budget(
        tenant=str(row[0]),
        model=str(row[1]),
        limit_micros=int(row[2]),
        currency=str(row[3]),
        time_zone=str(row[4]),
        alerts=tuple(float(a) for a in json.loads(row[5])),
        alert_only=bool(row[6]),
    )


def covering(tenant: str, model: str) -> Program[list[Budget]]:
    """The budgets that a call of ``model`` by ``tenant`` counts against, locked, in key
    order (every program takes budget locks in that order)."""
    rows = yield Sql(
        f"SELECT {_BUDGET_COLUMNS} FROM budgets WHERE tenant = ? AND model IN ('', ?) "  # noqa: S608
        "ORDER BY model{lock}",
        (tenant, model),
    )
    return [_budget(r) for r in rows]


def lock_budgets(calls: Iterable[tuple[str, str]]) -> Program[dict[tuple[str, str], list[Budget]]]:
    """Lock every budget that a call of one of the (tenant, model) ``calls`` counts against,
    in (tenant, model) order, and answer them per call (what :func:`covering` would answer,
    for every call at once). A transaction that records several calls takes these first, so
    it never waits for a budget while holding another budget that a second such transaction
    needs next; they stay locked, so they stay what they were until it ends."""
    pairs = sorted(set(calls))
    if not pairs:
        return {}
    where = " OR ".join(["(tenant = ? AND model IN ('', ?))"] * len(pairs))
    params = tuple(v for pair in pairs for v in pair)
    rows = yield Sql(
        f"SELECT {_BUDGET_COLUMNS} FROM budgets WHERE {where} "  # noqa: S608
        "ORDER BY tenant, model{lock}",
        params,
    )
    found = [_budget(r) for r in rows]
    return {
        (tenant, model): [b for b in found if b.tenant == tenant and b.model in ("", model)]
        for tenant, model in pairs
    }


# --- usage ---------------------------------------------------------------------------------

USAGE_COLUMNS = (
    "request_id, model, source, input_tokens, output_tokens, cost_micros, currency, "
    "occurred_at_us, estimated, recorded_at_us, tenant, cached_input_tokens, "
    "official_cost_micros, simulated"
)


@dataclass(frozen=True)
class Inserted:
    """What :func:`insert_usage` found: the row was new (``stored`` is None), or the stored
    row for its request id (columns as in ``USAGE_COLUMNS``)."""

    stored: tuple[Any, ...] | None


def insert_usage(
    values: tuple[object, ...],
    *,
    tenant: str,
    model: str,
    cost: int,
    currency: str,
    occurred_at_us: int,
    budgets: Sequence[Budget] | None = None,
    simulated: bool = False,
) -> Program[Inserted]:
    """Insert one usage row (``values`` in ``USAGE_COLUMNS`` order) unless its request id is
    known; a new row is added to the spend of every budget it counts against: ``budgets``
    when the caller has them locked already (:func:`lock_budgets`), else :func:`covering`.
    A ``simulated`` row counts against no budget."""
    rows = yield Sql(
        f"INSERT INTO usage ({USAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
        "ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
        values,
    )
    if not rows:
        stored = yield Sql(
            f"SELECT {USAGE_COLUMNS} FROM usage WHERE request_id = ?",  # noqa: S608
            (values[0],),
        )
        return Inserted(stored[0])
    if simulated:
        return Inserted(None)
    if budgets is None:
        budgets = yield from covering(tenant, model)
    for budget in budgets:
        start, _ = month_of(occurred_at_us, budget.time_zone)
        yield Sql(
            "INSERT INTO budget_spend (tenant, model, period_start_us, currency, micros) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, model, period_start_us, currency) "
            "DO UPDATE SET micros = budget_spend.micros + excluded.micros",
            (budget.tenant, budget.model, start, currency, cost),
        )
    return Inserted(None)


def find_reservation(reservation_id: str) -> Program[Reservation]:
    rows = yield Sql(
        f"SELECT {_RESERVATION_COLUMNS} FROM reservations WHERE id = ?{{lock}}",  # noqa: S608
        (reservation_id,),
    )
    if not rows:
        raise NotFound(
            f"reservation_id: no reservation {reservation_id!r} (never made, or closed long ago)",
            reason="RESERVATION_NOT_FOUND",
            metadata={"field": "reservation_id", "reservation_id": reservation_id},
        )
    return _reservation(rows[0])


def commit_check(r: Reservation, request_id: str, tenant: str, model: str) -> None:
    """Raise when a usage record for ``request_id`` may not commit ``r``."""
    meta = {"reservation_id": r.id}
    if r.state == RELEASED:
        raise FailedPrecondition(
            f"reservation {r.id!r} was released: its call was reported as not made",
            reason="RESERVATION_RELEASED",
            metadata=meta,
        )
    if r.state == COMMITTED and r.committed_as != request_id:
        raise FailedPrecondition(
            f"reservation {r.id!r} was already committed by another usage record",
            reason="RESERVATION_COMMITTED",
            metadata=meta | {"committed_as": r.committed_as or ""},
        )
    if tenant != r.tenant:
        raise InvalidArgument(
            f"tenant: the reservation is {r.tenant!r}'s, not {tenant!r}'s",
            reason="INVALID_FIELD",
            metadata={"field": "tenant"},
        )
    if model != r.model:
        raise InvalidArgument(
            f"model: the reservation is for {r.model!r}, not {model!r}",
            reason="INVALID_FIELD",
            metadata={"field": "model"},
        )


def close(
    reservation_id: str, state: str, now_us: int, committed_as: str | None = None
) -> Program[None]:
    yield Sql(
        "UPDATE reservations SET state = ?, committed_as = ?, closed_at_us = ? WHERE id = ?",
        (state, committed_as, now_us, reservation_id),
    )


def release(reservation_id: str, now_us: int) -> Program[Reservation]:
    """Give back what ``reservation_id`` held (idempotent); FailedPrecondition when it was
    committed."""
    r = yield from find_reservation(reservation_id)
    if r.state == COMMITTED:
        raise FailedPrecondition(
            f"reservation {r.id!r} was committed; it cannot be released",
            reason="RESERVATION_COMMITTED",
            metadata={"reservation_id": r.id},
        )
    if r.state == OPEN:
        yield from close(r.id, RELEASED, now_us)
    return replace(r, state=RELEASED)


# --- budgets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """A budget and, in the current month, what was spent and what is reserved against it,
    per currency (the caller converts into the budget's currency)."""

    budget: Budget
    spent: dict[str, int]
    reserved: dict[str, int]


def held(budget: Budget, now_us: int) -> Program[Held]:
    start, _ = month_of(now_us, budget.time_zone)
    spent = yield Sql(
        "SELECT currency, micros FROM budget_spend "
        "WHERE tenant = ? AND model = ? AND period_start_us = ?",
        (budget.tenant, budget.model, start),
    )
    model_filter = " AND model = ?" if budget.model else ""
    params: tuple[object, ...] = (budget.tenant, OPEN, now_us)
    reserved = yield Sql(
        "SELECT currency, SUM(amount_micros) FROM reservations "  # noqa: S608
        "WHERE tenant = ? AND state = ? AND expires_at_us > ?"
        + model_filter
        + " GROUP BY currency",
        params + ((budget.model,) if budget.model else ()),
    )
    return Held(
        budget,
        {str(c): int(m) for c, m in spent},
        {str(c): int(m) for c, m in reserved},
    )


def set_budget(budget: Budget, now_us: int) -> Program[Budget]:
    """Create or replace a budget and rebuild its spend for the current month from the
    usage rows that are not simulated (the month depends on the time zone, which may have
    changed)."""
    yield Sql(
        f"INSERT INTO budgets ({_BUDGET_COLUMNS}, updated_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
        "ON CONFLICT (tenant, model) DO UPDATE SET limit_micros = excluded.limit_micros, "
        "currency = excluded.currency, time_zone = excluded.time_zone, "
        "alerts = excluded.alerts, alert_only = excluded.alert_only, "
        "updated_at_us = excluded.updated_at_us",
        (
            budget.tenant,
            budget.model,
            budget.limit_micros,
            budget.currency,
            budget.time_zone,
            json.dumps(list(budget.alerts)),
            int(budget.alert_only),
            now_us,
        ),
    )
    yield Sql(
        "DELETE FROM budget_spend WHERE tenant = ? AND model = ?", (budget.tenant, budget.model)
    )
    start, end = month_of(now_us, budget.time_zone)
    model_filter = " AND model = ?" if budget.model else ""
    yield Sql(
        "INSERT INTO budget_spend (tenant, model, period_start_us, currency, micros) "  # noqa: S608
        "SELECT tenant, ?, ?, currency, SUM(cost_micros) FROM usage "
        "WHERE tenant = ? AND occurred_at_us >= ? AND occurred_at_us < ? AND NOT simulated"
        + model_filter
        + " GROUP BY tenant, currency",
        (budget.model, start, budget.tenant, start, end)
        + ((budget.model,) if budget.model else ()),
    )
    return budget


def delete_budget(tenant: str, model: str) -> Program[None]:
    rows = yield Sql(
        "DELETE FROM budgets WHERE tenant = ? AND model = ? RETURNING tenant", (tenant, model)
    )
    if not rows:
        raise NotFound(
            f"no budget for tenant {tenant!r}" + (f" and model {model!r}" if model else ""),
            reason="BUDGET_NOT_FOUND",
            metadata={"tenant": tenant, "model": model},
        )
    yield Sql("DELETE FROM budget_spend WHERE tenant = ? AND model = ?", (tenant, model))


def budgets(tenant: str | None) -> Program[list[Budget]]:
    if tenant is None:
        rows = yield Sql(
            f"SELECT {_BUDGET_COLUMNS} FROM budgets ORDER BY tenant, model"  # noqa: S608
        )
    else:
        rows = yield Sql(
            f"SELECT {_BUDGET_COLUMNS} FROM budgets WHERE tenant = ? ORDER BY model",  # noqa: S608
            (tenant,),
        )
    return [_budget(r) for r in rows]


def budget_holds(tenant: str | None, model: str | None, now_us: int) -> Program[list[Held]]:
    """Every budget of ``tenant`` (all tenants when None; one (tenant, model) when ``model``
    is given, "" being the tenant-wide one), each with what it holds now."""
    found = yield from budgets(tenant)
    if model is not None:
        found = [b for b in found if b.model == model]
    out = []
    for b in found:
        out.append((yield from held(b, now_us)))
    return out


# --- reservations --------------------------------------------------------------------------

#: converts micro-units between currencies at a time: (micros, from, to, at_us) -> micros
Convert = Callable[[int, str, str, int], int]


def _in(amounts: dict[str, int], currency: str, convert: Convert, now_us: int) -> int:
    return sum(m if c == currency else convert(m, c, currency, now_us) for c, m in amounts.items())


@dataclass(frozen=True)
class Refusal:
    """Why a hard budget refused a reservation, in its currency."""

    budget: Budget
    spent_micros: int
    reserved_micros: int
    requested_micros: int


def reserve(
    request_id: str,
    *,
    tenant: str,
    model: str,
    amount_micros: int,
    currency: str,
    ttl_us: int,
    now_us: int,
    convert: Convert,
) -> Program[Reservation]:
    """Set ``amount_micros`` aside against every budget the call counts against, all or
    none; ResourceExhausted (BUDGET_EXCEEDED) naming the first hard budget it would take past
    its limit. Idempotent on ``request_id``: the same call again gets the same reservation.
    When no budget covers the call nothing is stored and the reservation's id is ""."""
    found = yield Sql(
        f"SELECT {_RESERVATION_COLUMNS} FROM reservations WHERE request_id = ?",  # noqa: S608
        (request_id,),
    )
    if found:
        r = _reservation(found[0])
        if (r.tenant, r.model, r.amount_micros, r.currency) != (
            tenant,
            model,
            amount_micros,
            currency,
        ):
            raise FailedPrecondition(
                f"request_id {request_id!r} already holds a reservation for another call",
                reason="REQUEST_ID_REUSED",
                metadata={"request_id": request_id, "reservation_id": r.id},
            )
        return r
    budgets_found = yield from covering(tenant, model)
    if not budgets_found:
        # nothing to hold against: nothing is stored, and the record needs no commit
        return Reservation("", request_id, tenant, model, amount_micros, currency, now_us, now_us)
    for budget in budgets_found:
        h = yield from held(budget, now_us)
        spent = _in(h.spent, budget.currency, convert, now_us)
        reserved = _in(h.reserved, budget.currency, convert, now_us)
        wanted = _in({currency: amount_micros}, budget.currency, convert, now_us)
        if not admits(budget, spent, reserved, wanted):
            raise budget_exceeded(Refusal(budget, spent, reserved, wanted))
    r = Reservation(
        id="rsv_" + uuid.uuid4().hex,
        request_id=request_id,
        tenant=tenant,
        model=model,
        amount_micros=amount_micros,
        currency=currency,
        created_at_us=now_us,
        expires_at_us=now_us + ttl_us,
    )
    yield Sql(
        f"INSERT INTO reservations ({_RESERVATION_COLUMNS}) "  # noqa: S608
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            r.id,
            r.request_id,
            r.tenant,
            r.model,
            r.amount_micros,
            r.currency,
            r.created_at_us,
            r.expires_at_us,
            r.state,
            None,
        ),
    )
    return r


def budget_exceeded(refusal: Refusal) -> ResourceExhausted:
    b = refusal.budget
    scope = f"tenant {b.tenant!r}" + (f", model {b.model!r}" if b.model else "")
    return ResourceExhausted(
        f"the monthly budget of {scope} cannot hold this call: "
        f"{refusal.spent_micros} spent + {refusal.reserved_micros} reserved + "
        f"{refusal.requested_micros} asked > {b.limit_micros} micro-{b.currency}",
        reason="BUDGET_EXCEEDED",
        metadata={
            "tenant": b.tenant,
            "model": b.model,
            "currency": b.currency,
            "limit_micros": str(b.limit_micros),
            "spent_micros": str(refusal.spent_micros),
            "reserved_micros": str(refusal.reserved_micros),
            "requested_micros": str(refusal.requested_micros),
            "time_zone": b.time_zone,
        },
    )


def purge(now_us: int) -> Program[int]:
    """Drop reservations closed or expired more than ``KEEP_CLOSED_US`` ago."""
    cutoff = now_us - KEEP_CLOSED_US
    rows = yield Sql(
        "DELETE FROM reservations WHERE (state <> ? AND closed_at_us < ?) "
        "OR (state = ? AND expires_at_us < ?) RETURNING id",
        (OPEN, cutoff, OPEN, cutoff),
    )
    return len(rows)


# --- reports -------------------------------------------------------------------------------

#: the finest time a report groups by: a quarter of an hour, which every UTC offset in use is
#: a multiple of, so that quarters add up to local days and months in any time zone
QUARTER_US = 900 * 1_000_000


@dataclass(frozen=True)
class UsageGroup:
    """Usage of one tenant's model in one currency (in one quarter-hour when asked)."""

    tenant: str
    model: str
    currency: str
    #: start of the quarter-hour (µs since the epoch), or None when not grouped by time
    quarter_us: int | None
    requests: int
    input_tokens: int
    output_tokens: int
    cost_micros: int
    estimated_requests: int
    #: the official costs of the requests that have one, summed (see V5_USAGE_OFFICIAL)
    official_known_micros: int
    #: how many of the requests have none
    requests_without_official: int
    #: the requests were answered by a simulated model
    simulated: bool = False


def usage_groups(
    *,
    start_us: int | None,
    end_us: int | None,
    tenant: str | None,
    model: str | None,
    by_time: bool,
) -> Program[list[UsageGroup]]:
    """The usage rows in ``[start_us, end_us)`` (bounds optional), of one tenant and one
    model when given, summed per tenant, model, currency, simulated or not and, with
    ``by_time``, quarter-hour, with the sum of their official costs and how many have none."""
    where: list[str] = []
    params: list[object] = []
    for clause, value in (
        ("occurred_at_us >= ?", start_us),
        ("occurred_at_us < ?", end_us),
        ("tenant = ?", tenant),
        ("model = ?", model),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    quarter = f"occurred_at_us / {QUARTER_US:d}" if by_time else "0"
    rows = yield Sql(
        f"SELECT tenant, model, currency, {quarter}, COUNT(*), SUM(input_tokens), "  # noqa: S608
        "SUM(output_tokens), SUM(cost_micros), SUM(CASE WHEN estimated THEN 1 ELSE 0 END), "
        "SUM(official_cost_micros), COUNT(*) - COUNT(official_cost_micros), simulated FROM usage"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " GROUP BY tenant, model, currency, simulated"
        + (f", {quarter}" if by_time else ""),
        tuple(params),
    )
    return [_group(row, by_time) for row in rows]


def _group(row: Sequence[Any], by_time: bool) -> UsageGroup:
    t, m, c, q, n, i, o, cost, est, official, without, sim = row
    quarter = int(q) * QUARTER_US if by_time else None
    return UsageGroup(
        str(t), str(m), str(c), quarter, int(n), int(i), int(o), int(cost), int(est),
        0 if official is None else int(official), int(without), bool(sim),
    )  # fmt: skip
