"""The usage ledger: one row per recorded model call, keyed by request id.

Storage only, no gRPC: typed dataclasses in and out, domain errors from :mod:`quorum.errors`.
:class:`Ledger` is the seam the servicer depends on; :class:`SqliteLedger` is the embedded
backend (a PostgreSQL backend for shared ledgers implements the same protocol and passes the
same tests).

Contract every backend keeps:

- ``record`` is idempotent on ``request_id``. The first record wins; recording the same
  request id again with the same model and token counts returns the *stored* record (its
  cost, even if prices changed since) with ``duplicate=True``. The same request id with a
  different model or different token counts raises :class:`~quorum.errors.FailedPrecondition`
  (reason ``REQUEST_ID_REUSED``). ``source`` and ``occurred_at`` are not compared: a retry
  that lets ``occurred_at`` default to "now" is still the same call.
- ``summary`` sums integers only (tokens and micro-units), grouped per model *and* currency,
  over ``start_us <= occurred_at_us < end_us``.
- A storage failure while serving raises :class:`~quorum.errors.Unavailable` (reason
  ``LEDGER_UNAVAILABLE``) with a message of ours; the driver's message is only logged.
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
from typing import Protocol, TypeVar

from quorum.errors import FailedPrecondition, Unavailable
from quorum.registry import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class UsageRecord:
    """One model call, priced. Times are integer microseconds since the Unix epoch."""

    request_id: str
    model: str
    source: str
    input_tokens: int
    output_tokens: int
    cost_micros: int
    currency: str
    occurred_at_us: int

    def same_call(self, other: UsageRecord) -> bool:
        """Whether ``other`` describes the same call (what a retry must repeat)."""
        return (self.request_id, self.model, self.input_tokens, self.output_tokens) == (
            other.request_id,
            other.model,
            other.input_tokens,
            other.output_tokens,
        )


@dataclass(frozen=True)
class Recorded:
    """What ``record`` stored: the first record for the request id, and whether this call
    was a repeat of it."""

    record: UsageRecord
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


@dataclass(frozen=True)
class Summary:
    """Totals over a time range. ``models`` is sorted by (model, currency); a model that
    billed in two currencies in the range has one entry per currency. ``totals`` has one
    amount per currency, sorted by currency."""

    models: tuple[ModelTotals, ...]
    requests: int
    input_tokens: int
    output_tokens: int
    totals: tuple[Amount, ...]

    @classmethod
    def of(cls, groups: Sequence[ModelTotals]) -> Summary:
        per_currency: dict[str, int] = {}
        for g in groups:
            per_currency[g.currency] = per_currency.get(g.currency, 0) + g.cost_micros
        return cls(
            models=tuple(sorted(groups, key=lambda g: (g.model, g.currency))),
            requests=sum(g.requests for g in groups),
            input_tokens=sum(g.input_tokens for g in groups),
            output_tokens=sum(g.output_tokens for g in groups),
            totals=tuple(Amount(m, c) for c, m in sorted(per_currency.items())),
        )


class Ledger(Protocol):
    """The usage ledger as the cost service sees it (see the module docstring)."""

    async def record(self, usage: UsageRecord) -> Recorded:
        """Store ``usage`` unless its request id is known; raises FailedPrecondition
        (REQUEST_ID_REUSED) when the known record is a different call."""
        ...

    async def summary(
        self,
        *,
        start_us: int | None = None,
        end_us: int | None = None,
        model: str | None = None,
    ) -> Summary:
        """Totals of the records with ``start_us <= occurred_at_us < end_us`` (an unset bound
        is open), only ``model``'s when given."""
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
        "(another model or other token counts)",
        reason="REQUEST_ID_REUSED",
        metadata={"request_id": request_id},
    )


def now_us() -> int:
    return time.time_ns() // 1000


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


#: Schema steps in order; step ``i`` takes ``PRAGMA user_version`` from ``i`` to ``i + 1``.
#: Append new steps (new tables, columns, indexes); never edit or reorder released ones.
MIGRATIONS: tuple[Migration, ...] = (_v1_usage,)
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


_COLUMNS = (
    "request_id, model, source, input_tokens, output_tokens, cost_micros, currency, "
    "occurred_at_us, recorded_at_us"
)


class SqliteLedger:
    """The ledger in one SQLite file (WAL, ``synchronous=NORMAL``, busy timeout).

    One connection, owned by one dedicated worker thread: every statement runs there, so the
    event loop never blocks on the database and statements never interleave. Open with
    :meth:`open`; close with :meth:`close`.
    """

    def __init__(self, path: Path, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self.path = path
        self._executor = executor
        self._conn = conn
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path, *, busy_timeout_s: float = 5.0) -> SqliteLedger:
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
        return cls(path, executor, conn)

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

    async def record(self, usage: UsageRecord) -> Recorded:
        return await self._run(self._record, usage)

    def _record(self, usage: UsageRecord) -> Recorded:
        recorded_at = now_us()
        cur = self._conn.execute(
            f"INSERT INTO usage ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
            "ON CONFLICT (request_id) DO NOTHING",
            (
                usage.request_id,
                usage.model,
                usage.source,
                usage.input_tokens,
                usage.output_tokens,
                usage.cost_micros,
                usage.currency,
                usage.occurred_at_us,
                recorded_at,
            ),
        )
        if cur.rowcount == 1:
            return Recorded(usage, recorded_at, duplicate=False)
        # rows are never updated or deleted, so the stored one is still there
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM usage WHERE request_id = ?",  # noqa: S608
            (usage.request_id,),
        ).fetchone()
        stored = UsageRecord(*row[:8])
        if not stored.same_call(usage):
            raise reused(usage.request_id)
        return Recorded(stored, int(row[8]), duplicate=True)

    async def summary(
        self,
        *,
        start_us: int | None = None,
        end_us: int | None = None,
        model: str | None = None,
    ) -> Summary:
        return await self._run(self._summary, start_us, end_us, model)

    def _summary(self, start_us: int | None, end_us: int | None, model: str | None) -> Summary:
        where: list[str] = []
        params: list[object] = []
        if start_us is not None:
            where.append("occurred_at_us >= ?")
            params.append(start_us)
        if end_us is not None:
            where.append("occurred_at_us < ?")
            params.append(end_us)
        if model is not None:
            where.append("model = ?")
            params.append(model)
        # the SQL is built from constant fragments only; every value is a bound parameter
        sql = (
            "SELECT model, currency, COUNT(*), SUM(input_tokens), SUM(output_tokens), "  # noqa: S608
            "SUM(cost_micros) FROM usage"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " GROUP BY model, currency ORDER BY model, currency"
        )
        groups = [
            ModelTotals(str(m), str(c), int(n), int(i), int(o), int(cost))
            for m, c, n, i, o, cost in self._conn.execute(sql, params)
        ]
        return Summary.of(groups)

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
        if self._closed:
            return
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
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000):d}")
        migrate(conn)
    except sqlite3.Error as e:
        conn.close()
        raise ConfigError(f"cannot open the ledger database {path}: {e}") from None
    except BaseException:
        conn.close()
        raise
    return conn
