"""The usage ledger: one row per recorded model call, keyed by request id.

Storage only, no gRPC: typed dataclasses in and out, domain errors from :mod:`quorum.errors`.
:class:`Ledger` is the seam the servicer depends on; :class:`SqliteLedger` is the embedded
backend, and :class:`services.cost.pgledger.PostgresLedger` the one for a ledger that several
replicas share; both pass the same tests.

Contract every backend keeps:

- ``record`` is idempotent on ``request_id``. The first record wins; recording the same
  request id again with the same tenant, model, token counts (cached input tokens included)
  and ``simulated`` flag returns the *stored* record (its cost and official cost, even if
  prices or rates changed since) with ``duplicate=True``. The same request id with a
  different tenant, model, token counts or ``simulated`` flag raises
  :class:`~quorum.errors.FailedPrecondition` (reason ``REQUEST_ID_REUSED``): a simulated
  call is never the same call as a real one. ``source`` and ``occurred_at`` are not
  compared: a retry that lets ``occurred_at`` default to "now" is still the same call.
- A ``simulated`` record (a simulated model answered the call) is stored and priced like any
  other but is no one's spend: no budget counts it, and ``summary`` and the report groups
  keep it apart from the real records.
- ``summary`` sums integers only (tokens and micro-units), grouped per model *and* currency
  (and simulated or not), over ``start_us <= occurred_at_us < end_us``.
- A storage failure while serving raises :class:`~quorum.errors.Unavailable` (reason
  ``LEDGER_UNAVAILABLE``) with a message of ours; the driver's message is only logged.
- Records are written behind a bounded queue, many callers' records in one transaction
  (group commit, :mod:`services.cost.groupcommit`): ``record`` answers only once the
  transaction that holds its record has committed. Within a batch the records run one
  after the other (:func:`record_batch`), so the outcome of each is exactly what it would
  have been had they been recorded one by one: two records with the same request id in one
  batch are a new record and a duplicate (or ``REQUEST_ID_REUSED``), and one record's error
  is its own and leaves nothing of it written. A storage failure fails every record of the
  batch with ``LEDGER_UNAVAILABLE`` and leaves none of them written (the transaction rolls
  back); a full queue answers ``RESOURCE_EXHAUSTED`` (``LEDGER_BUSY``) at once. Records that commit
  together share their ``recorded_at_us``. (Records of one ``record_many`` call larger than
  a batch, written by two writers at once, commit in either order.)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from quorum.errors import FailedPrecondition, QuorumError, Unavailable
from quorum.ids import DEFAULT_TENANT
from quorum.registry import ConfigError
from services.cost import accounts
from services.cost.accounts import Convert, Held, Program, Reservation, Rows, Sql, UsageGroup
from services.cost.budgets import Budget
from services.cost.groupcommit import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUED, GroupCommit

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class LedgerEntry:
    """One model call, priced. Times are integer microseconds since the Unix epoch."""

    request_id: str
    model: str
    source: str
    input_tokens: int
    output_tokens: int
    cost_micros: int
    currency: str
    occurred_at_us: int
    #: the tokens were counted by Quorum, not reported by the provider
    estimated: bool = False
    #: who made the call (the budgets it counts against)
    tenant: str = DEFAULT_TENANT
    #: the part of ``input_tokens`` served from the provider's prompt cache
    cached_input_tokens: int = 0
    #: what the call would have cost at its list price converted at the official exchange
    #: rate of its time, in ``currency`` (``cost_micros`` itself unless its provider bills at
    #: a rate of its own); None when no official rate converted the pair then, and for records
    #: stored before the ledger kept it (schema version 5)
    official_cost_micros: int | None = None
    #: answered by a simulated model: no budget counts it, reports keep it apart
    simulated: bool = False

    def same_call(self, other: LedgerEntry) -> bool:
        """Whether ``other`` describes the same call (what a retry must repeat)."""
        return self._key() == other._key()

    def _key(self) -> tuple[str, str, str, int, int, int, bool]:
        return (
            self.request_id,
            self.tenant,
            self.model,
            self.input_tokens,
            self.output_tokens,
            self.cached_input_tokens,
            self.simulated,
        )

    def values(self, recorded_at_us: int) -> tuple[object, ...]:
        """The row's values, in :data:`services.cost.accounts.USAGE_COLUMNS` order."""
        return (
            self.request_id,
            self.model,
            self.source,
            self.input_tokens,
            self.output_tokens,
            self.cost_micros,
            self.currency,
            self.occurred_at_us,
            self.estimated,
            recorded_at_us,
            self.tenant,
            self.cached_input_tokens,
            self.official_cost_micros,
            self.simulated,
        )


@dataclass(frozen=True)
class Recorded:
    """What ``record`` stored: the first record for the request id, and whether this call
    was a repeat of it."""

    record: LedgerEntry
    recorded_at_us: int
    duplicate: bool


@dataclass(frozen=True)
class Amount:
    micros: int
    currency: str


@dataclass(frozen=True)
class ModelTotals:
    model: str
    currency: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_micros: int
    estimated_requests: int = 0
    cached_input_tokens: int = 0
    #: the calls were answered by a simulated model
    simulated: bool = False


def model_totals(row: Sequence[Any]) -> ModelTotals:
    """A summary query's row: model, currency, then the sums of requests, input tokens,
    output tokens, cost, estimated requests and cached input tokens, then simulated."""
    m, c, n, i, o, cost, est, ci, sim = row
    return ModelTotals(
        str(m), str(c), int(n), int(i), int(o), int(cost), int(est), int(ci), bool(sim)
    )


def _per_currency(groups: Sequence[ModelTotals]) -> tuple[Amount, ...]:
    sums: dict[str, int] = {}
    for g in groups:
        sums[g.currency] = sums.get(g.currency, 0) + g.cost_micros
    return tuple(Amount(m, c) for c, m in sorted(sums.items()))


@dataclass(frozen=True)
class Summary:
    """Totals over a time range: real spend, and apart from it what simulated calls would
    have cost. ``models`` (real) and ``simulated_models`` are sorted by (model, currency); a
    model that billed in two currencies in the range has one entry per currency. ``totals``
    (real) and ``simulated_totals`` have one amount per currency, sorted by currency; every
    other total counts the real calls only."""

    models: tuple[ModelTotals, ...]
    requests: int
    input_tokens: int
    output_tokens: int
    totals: tuple[Amount, ...]
    estimated_requests: int = 0
    cached_input_tokens: int = 0
    simulated_models: tuple[ModelTotals, ...] = ()
    simulated_requests: int = 0
    simulated_totals: tuple[Amount, ...] = ()

    @classmethod
    def of(cls, groups: Sequence[ModelTotals]) -> Summary:
        ordered = sorted(groups, key=lambda g: (g.model, g.currency))
        real = [g for g in ordered if not g.simulated]
        simulated = [g for g in ordered if g.simulated]
        return cls(
            models=tuple(real),
            requests=sum(g.requests for g in real),
            input_tokens=sum(g.input_tokens for g in real),
            output_tokens=sum(g.output_tokens for g in real),
            totals=_per_currency(real),
            estimated_requests=sum(g.estimated_requests for g in real),
            cached_input_tokens=sum(g.cached_input_tokens for g in real),
            simulated_models=tuple(simulated),
            simulated_requests=sum(g.requests for g in simulated),
            simulated_totals=_per_currency(simulated),
        )


#: a usage to record and the reservation it commits ("" for none)
ToRecord = tuple[LedgerEntry, str]


class Ledger(Protocol):
    """The usage ledger as the cost service sees it (see the module docstring)."""

    async def record(self, usage: LedgerEntry) -> Recorded:
        """Store ``usage`` unless its request id is known; raises FailedPrecondition
        (REQUEST_ID_REUSED) when the known record is a different call."""
        ...

    async def summary(
        self,
        *,
        start_us: int | None = None,
        end_us: int | None = None,
        model: str | None = None,
        tenant: str | None = None,
    ) -> Summary:
        """Totals of the records with ``start_us <= occurred_at_us < end_us`` (an unset bound
        is open), only ``model``'s and ``tenant``'s when given."""
        ...

    async def commit(self, usage: LedgerEntry, reservation_id: str) -> Recorded:
        """``record`` that also closes the reservation ``usage`` was made under, in one
        transaction (see :func:`record_program`)."""
        ...

    async def record_many(self, usages: Sequence[ToRecord]) -> list[Recorded | QuorumError]:
        """``record`` (or ``commit``, for a usage given with a reservation id) of each, in
        order, as if one after the other; one result per usage, or the error that usage alone
        failed with (REQUEST_ID_REUSED, a reservation's error, LEDGER_BUSY, ...)."""
        ...

    async def reserve(
        self,
        request_id: str,
        tenant: str,
        model: str,
        amount_micros: int,
        currency: str,
        *,
        ttl_us: int,
        convert: Convert,
    ) -> Reservation:
        """See :func:`services.cost.accounts.reserve`."""
        ...

    async def release(self, reservation_id: str) -> Reservation:
        """See :func:`services.cost.accounts.release`."""
        ...

    async def set_budget(self, budget: Budget) -> Budget: ...

    async def delete_budget(self, tenant: str, model: str) -> None: ...

    async def budget_holds(self, tenant: str | None, model: str | None = None) -> list[Held]:
        """Budgets with what they hold now (see :func:`services.cost.accounts.budget_holds`)."""
        ...

    async def purge(self) -> int:
        """Drop reservations closed or expired long ago; returns how many."""
        ...

    async def usage_groups(
        self,
        *,
        start_us: int | None = None,
        end_us: int | None = None,
        tenant: str | None = None,
        model: str | None = None,
        by_time: bool = False,
    ) -> list[UsageGroup]:
        """See :func:`services.cost.accounts.usage_groups`."""
        ...

    async def ping(self) -> bool:
        """True when the store answers a trivial query; never raises."""
        ...

    async def close(self) -> None:
        """Release the store. Idempotent; later calls raise Unavailable."""
        ...


def reused(request_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"request_id {request_id!r} was already recorded for a different call "
        "(another tenant, model or token counts, or simulated where it was real or the "
        "other way round)",
        reason="REQUEST_ID_REUSED",
        metadata={"request_id": request_id},
    )


def now_us() -> int:
    return time.time_ns() // 1000


def repeat_of(usage: LedgerEntry, row: Sequence[Any]) -> Recorded:
    """The stored row (columns as in :data:`services.cost.accounts.USAGE_COLUMNS`) that
    ``usage`` repeats; raises FailedPrecondition (REQUEST_ID_REUSED) when it is another call."""
    stored = LedgerEntry(
        request_id=str(row[0]),
        model=str(row[1]),
        source=str(row[2]),
        input_tokens=int(row[3]),
        output_tokens=int(row[4]),
        cost_micros=int(row[5]),
        currency=str(row[6]),
        occurred_at_us=int(row[7]),
        estimated=bool(row[8]),
        tenant=str(row[10]),
        cached_input_tokens=int(row[11]),
        official_cost_micros=None if row[12] is None else int(row[12]),
        simulated=bool(row[13]),
    )
    if not stored.same_call(usage):
        raise reused(usage.request_id)
    return Recorded(stored, int(row[9]), duplicate=True)


def summary_filter(
    start_us: int | None,
    end_us: int | None,
    model: str | None,
    placeholder: str,
    tenant: str | None = None,
) -> tuple[str, list[object]]:
    """The ``WHERE`` clause of a summary (built from constant fragments only; every value is
    a bound parameter, written ``placeholder``) and its parameters."""
    where: list[str] = []
    params: list[object] = []
    if start_us is not None:
        where.append(f"occurred_at_us >= {placeholder}")
        params.append(start_us)
    if end_us is not None:
        where.append(f"occurred_at_us < {placeholder}")
        params.append(end_us)
    if model is not None:
        where.append(f"model = {placeholder}")
        params.append(model)
    if tenant is not None:
        where.append(f"tenant = {placeholder}")
        params.append(tenant)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def record_program(
    usage: LedgerEntry,
    reservation_id: str | None,
    now_us: int,
    budgets: Sequence[Budget] | None = None,
) -> Program[Recorded]:
    """Record ``usage`` (idempotent on its request id, see the module docstring) and, with a
    ``reservation_id``, commit that reservation: it must be open (or expired: the call was
    made, so it is billed all the same) or already committed by this very record.
    ``budgets``: the ones ``usage`` counts against, when the caller has them locked."""
    held_by = None
    if reservation_id:
        held_by = yield from accounts.find_reservation(reservation_id)
        accounts.commit_check(held_by, usage.request_id, usage.tenant, usage.model)
    found = yield from accounts.insert_usage(
        usage.values(now_us),
        tenant=usage.tenant,
        model=usage.model,
        cost=usage.cost_micros,
        currency=usage.currency,
        occurred_at_us=usage.occurred_at_us,
        budgets=budgets,
        simulated=usage.simulated,
    )
    recorded = (
        Recorded(usage, now_us, duplicate=False)
        if found.stored is None
        else repeat_of(usage, found.stored)
    )
    if held_by is not None and held_by.state == accounts.OPEN:
        yield from accounts.close(held_by.id, accounts.COMMITTED, now_us, usage.request_id)
    return recorded


#: one savepoint per record of a batch (released before the next one is taken)
_SAVEPOINT = "record"


class SavepointsNeeded(Exception):
    """A record of a batch run without savepoints failed after a statement that may have
    written: the batch's transaction must be rolled back and the batch run again with
    savepoints (:func:`record_batch`)."""


def _may_write(sql: Sql) -> bool:
    return not sql.text.lstrip().upper().startswith("SELECT")


def record_batch(
    usages: Sequence[ToRecord], now_us: int, *, savepoints: bool = False
) -> Program[list[Recorded | QuorumError]]:
    """:func:`record_program` for each of ``usages`` in the caller's one transaction, one
    after the other: a record that fails with a domain error (REQUEST_ID_REUSED, a
    reservation's error) has it as its result and leaves nothing written, and the others go
    on. Every record is given ``now_us`` as its recorded time; the results come in the order
    of ``usages``.

    A record's writes are undone by a savepoint of its own; as that costs two statements per
    record (two round trips to PostgreSQL), a batch is first run without them, and a record
    that fails *after* a statement that may have written (any but a ``SELECT``) raises
    :class:`SavepointsNeeded` instead: the caller rolls the transaction back and runs the
    batch again with ``savepoints``. (Today that is only a reused request id: its ``INSERT``
    did nothing, but no rule of the programs promises so.)

    The records run in request-id order (records with the same id in the order given),
    after the budgets they count against have been locked (:func:`accounts.lock_budgets`):
    every batch takes its locks in one global order (budgets, then request ids), so batches
    of two replicas that share ids or budgets wait for each other but never deadlock. (A
    simulated record counts against no budget: it locks none.)"""
    budgets = yield from accounts.lock_budgets(
        (u.tenant, u.model) for u, _ in usages if not u.simulated
    )
    out: list[Recorded | QuorumError | None] = [None] * len(usages)
    for i in sorted(range(len(usages)), key=lambda i: usages[i][0].request_id):
        usage, reservation_id = usages[i]
        program = record_program(
            usage, reservation_id or None, now_us, budgets.get((usage.tenant, usage.model), [])
        )
        if savepoints:
            yield Sql(f"SAVEPOINT {_SAVEPOINT}")
        wrote = False
        try:
            sql = next(program)
            while True:
                wrote = wrote or _may_write(sql)
                sql = program.send((yield sql))
        except StopIteration as done:
            out[i] = done.value
        except QuorumError as e:
            if not savepoints and wrote:
                raise SavepointsNeeded from e
            if savepoints:
                yield Sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            out[i] = e
        if savepoints:
            yield Sql(f"RELEASE SAVEPOINT {_SAVEPOINT}")
    return [r for r in out if r is not None]


# --- SQLite ---------------------------------------------------------------------------------

Migration = Callable[[sqlite3.Connection], None]


def _v1_usage(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE usage (
            request_id     TEXT PRIMARY KEY,
            model          TEXT NOT NULL,
            source         TEXT NOT NULL,
            input_tokens   INTEGER NOT NULL,
            output_tokens  INTEGER NOT NULL,
            cost_micros    INTEGER NOT NULL,
            currency       TEXT NOT NULL,
            occurred_at_us INTEGER NOT NULL,
            recorded_at_us INTEGER NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX usage_occurred_at ON usage (occurred_at_us)")


def _v2_estimated(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE usage ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0")


def _v3_budgets(conn: sqlite3.Connection) -> None:
    conn.execute(accounts.V3_USAGE_TENANT)
    for statement in accounts.V3_TABLES:
        conn.execute(statement)


def _v4_cached_input(conn: sqlite3.Connection) -> None:
    # the part of input_tokens served from the provider's prompt cache (0 for older rows)
    conn.execute("ALTER TABLE usage ADD COLUMN cached_input_tokens INTEGER NOT NULL DEFAULT 0")


def _v5_official_cost(conn: sqlite3.Connection) -> None:
    # the official cost of each call (NULL for older rows: nothing here can price them)
    conn.execute(accounts.V5_USAGE_OFFICIAL)


def _v6_simulated(conn: sqlite3.Connection) -> None:
    # calls answered by a simulated model (every older row was recorded as a real call)
    conn.execute(accounts.V6_USAGE_SIMULATED_SQLITE)


#: Schema steps in order; step ``i`` takes ``PRAGMA user_version`` from ``i`` to ``i + 1``.
#: Append new steps (new tables, columns, indexes); never edit or reorder released ones.
MIGRATIONS: tuple[Migration, ...] = (
    _v1_usage,
    _v2_estimated,
    _v3_budgets,
    _v4_cached_input,
    _v5_official_cost,
    _v6_simulated,
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the schema up to ``len(migrations)``, one transaction per step (SQLite DDL and
    ``user_version`` are transactional, so a failed step leaves the previous version).
    ``conn`` must be in autocommit mode (``isolation_level=None``). Returns the version."""
    target = len(migrations)
    version = schema_version(conn)
    if version > target:
        raise ConfigError(
            f"ledger schema version {version} is newer than this build knows ({target})"
        )
    for step in range(version, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # re-read inside the write lock: another process may have migrated meanwhile
            if schema_version(conn) == step:
                migrations[step](conn)
                conn.execute(f"PRAGMA user_version = {step + 1:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("ledger schema migrated to version %d", step + 1)
    return target


#: reservations and releases commit without waiting for the disk: one lost to a power cut
#: changes no bill (the call's usage record, which is durable, still comes), it only stops
#: holding its amount early, as an expired one would
RESERVATIONS_DURABLE = False


class ProgramLedger:
    """What both backends do the same way, in terms of their own :meth:`_program` (run one
    transaction program) and ``_records`` (the group-commit writer of usage records)."""

    _records: GroupCommit[ToRecord, Recorded]

    async def _program(self, program: Program[T], *, write: bool = True, durable: bool = True) -> T:
        raise NotImplementedError

    async def record(self, usage: LedgerEntry) -> Recorded:
        return await self._records.run((usage, ""))

    async def commit(self, usage: LedgerEntry, reservation_id: str) -> Recorded:
        return await self._records.run((usage, reservation_id))

    async def record_many(self, usages: Sequence[ToRecord]) -> list[Recorded | QuorumError]:
        return await self._records.run_many(usages)

    async def reserve(
        self,
        request_id: str,
        tenant: str,
        model: str,
        amount_micros: int,
        currency: str,
        *,
        ttl_us: int,
        convert: Convert,
    ) -> Reservation:
        return await self._program(
            accounts.reserve(
                request_id,
                tenant=tenant,
                model=model,
                amount_micros=amount_micros,
                currency=currency,
                ttl_us=ttl_us,
                now_us=now_us(),
                convert=convert,
            ),
            durable=RESERVATIONS_DURABLE,
        )

    async def release(self, reservation_id: str) -> Reservation:
        return await self._program(
            accounts.release(reservation_id, now_us()), durable=RESERVATIONS_DURABLE
        )

    async def set_budget(self, budget: Budget) -> Budget:
        return await self._program(accounts.set_budget(budget, now_us()))

    async def delete_budget(self, tenant: str, model: str) -> None:
        await self._program(accounts.delete_budget(tenant, model))

    async def budget_holds(self, tenant: str | None, model: str | None = None) -> list[Held]:
        return await self._program(accounts.budget_holds(tenant, model, now_us()))

    async def purge(self) -> int:
        return await self._program(accounts.purge(now_us()))

    async def usage_groups(
        self,
        *,
        start_us: int | None = None,
        end_us: int | None = None,
        tenant: str | None = None,
        model: str | None = None,
        by_time: bool = False,
    ) -> list[UsageGroup]:
        return await self._program(
            accounts.usage_groups(
                start_us=start_us, end_us=end_us, tenant=tenant, model=model, by_time=by_time
            ),
            write=False,
        )


class SqliteLedger(ProgramLedger):
    """The ledger in one SQLite file (WAL, ``synchronous=FULL``, busy timeout).

    One connection, owned by one dedicated worker thread: every statement runs there, so the
    event loop never blocks on the database and statements never interleave. Records are
    group-committed (see the module docstring): a queue of at most ``max_queued`` records in
    front of one writer, at most ``max_batch`` records per transaction. Open with
    :meth:`open`; close with :meth:`close`.

    Durability: in WAL mode ``synchronous=FULL`` syncs the WAL file at every commit, so a
    record that was answered survives a process crash *and* a power loss or OS crash (as far
    as the disk honours fsync). ``NORMAL`` would survive a process crash only: the last
    commits before a power loss could roll back, after the router had been told its records
    were taken and had dropped them from its journal. Group commit pays that sync once per
    batch, not once per record.
    """

    def __init__(
        self,
        path: Path,
        executor: ThreadPoolExecutor,
        conn: sqlite3.Connection,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self.path = path
        self._executor = executor
        self._conn = conn
        self._closing = False
        self._closed = False
        self._records: GroupCommit[ToRecord, Recorded] = GroupCommit(
            self._write, max_batch=max_batch, max_queued=max_queued, name="ledger-writer"
        )

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        busy_timeout_s: float = 5.0,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> SqliteLedger:
        """Open (creating the file and its directory if needed) and migrate. Raises
        ConfigError when the file cannot be opened or its schema is unknown."""
        path = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cost-ledger")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, path, busy_timeout_s)
        except BaseException:
            executor.shutdown(wait=True)
            raise
        log.info("ledger open: %s (schema version %d)", path, SCHEMA_VERSION)
        return cls(path, executor, conn, max_batch=max_batch, max_queued=max_queued)

    async def _run(self, fn: Callable[..., T], /, *args: object) -> T:
        if self._closed:
            raise Unavailable("the usage ledger is closed", reason="LEDGER_UNAVAILABLE")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.OperationalError as e:  # locked past the busy timeout, I/O, disk full
            log.warning("ledger error: %s", e)
            raise Unavailable(
                "the usage ledger is unavailable", reason="LEDGER_UNAVAILABLE"
            ) from None

    def _transaction(self, program: Program[T], write: bool = True, durable: bool = True) -> T:
        """Run ``program`` in one transaction (rolled back if it raises); a write one takes
        the database's write lock at once, a read one lets writers go on. One that need not
        be ``durable`` commits without syncing (``synchronous=NORMAL`` for it alone; the
        next durable commit syncs it too)."""
        conn = self._conn
        if not durable:
            conn.execute("PRAGMA synchronous = NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
            try:
                rows: Rows = []
                sql: Sql = next(program)
                while True:
                    rows = conn.execute(sql.text.replace("{lock}", ""), sql.params).fetchall()
                    sql = program.send(rows)
            except StopIteration as done:
                conn.execute("COMMIT")
                return done.value  # type: ignore[no-any-return]
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            if not durable:
                conn.execute("PRAGMA synchronous = FULL")

    async def _program(self, program: Program[T], *, write: bool = True, durable: bool = True) -> T:
        return await self._run(self._transaction, program, write, durable)

    async def _write(self, usages: list[ToRecord]) -> list[Recorded | QuorumError]:
        try:
            return await self._program(record_batch(usages, now_us()))
        except SavepointsNeeded:  # rolled back: nothing of it was written
            return await self._program(record_batch(usages, now_us(), savepoints=True))

    async def summary(
        self,
        *,
        start_us: int | None = None,
        end_us: int | None = None,
        model: str | None = None,
        tenant: str | None = None,
    ) -> Summary:
        return await self._run(self._summary, start_us, end_us, model, tenant)

    def _summary(
        self, start_us: int | None, end_us: int | None, model: str | None, tenant: str | None
    ) -> Summary:
        where, params = summary_filter(start_us, end_us, model, "?", tenant)
        sql = (
            "SELECT model, currency, COUNT(*), SUM(input_tokens), SUM(output_tokens), "  # noqa: S608
            "SUM(cost_micros), SUM(estimated), SUM(cached_input_tokens), simulated FROM usage"
            + where
            + " GROUP BY model, currency, simulated"
        )
        return Summary.of([model_totals(row) for row in self._conn.execute(sql, params)])

    async def ping(self) -> bool:
        try:
            return await self._run(self._ping)
        except Exception:
            return False

    def _ping(self) -> bool:
        return bool(self._conn.execute("SELECT 1").fetchone() == (1,))

    async def count(self) -> int:
        """Rows in the ledger (for tests and operators)."""
        return await self._run(self._count)

    def _count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0])

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        await self._records.close()  # the records already queued are written first
        loop = asyncio.get_running_loop()
        self._closed = True  # queued statements still run first: the worker is FIFO
        try:
            await loop.run_in_executor(self._executor, self._conn.close)
        finally:
            self._executor.shutdown(wait=True)
        log.info("ledger closed: %s", self.path)


def _connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    except (OSError, sqlite3.Error) as e:
        raise ConfigError(f"cannot open the ledger database {path}: {e}") from None
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"the ledger database {path} cannot use WAL (journal mode {mode})")
        conn.execute("PRAGMA synchronous = FULL")  # see SqliteLedger
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000):d}")
        migrate(conn)
    except sqlite3.Error as e:
        conn.close()
        raise ConfigError(f"cannot open the ledger database {path}: {e}") from None
    except BaseException:
        conn.close()
        raise
    return conn
