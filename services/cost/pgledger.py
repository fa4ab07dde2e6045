"""The usage ledger in PostgreSQL: several cost replicas share one ledger.

:class:`PostgresLedger` keeps the contract in :mod:`services.cost.ledger` (the same tests run
against it and :class:`~services.cost.ledger.SqliteLedger`):

- Every operation is a program of :mod:`services.cost.accounts` run in one transaction
  (READ COMMITTED); records are group-committed, a batch of them per transaction
  (:func:`services.cost.ledger.record_batch`: one ``INSERT`` per new record, the budgets
  locked once per batch), :data:`DEFAULT_WRITERS` batches at a time. A record's
  ``INSERT ... ON CONFLICT (request_id) DO NOTHING`` is race-free across replicas: when
  another session is inserting the same id, PostgreSQL makes ours wait for that one to
  commit or roll back; rows are never updated or deleted, so the ``SELECT`` that follows (a
  new snapshot) always finds the row that won. Every batch takes its locks in one order
  (budgets, then request ids), so batches do not deadlock each other; one that conflicts
  all the same (a deadlock PostgreSQL breaks, a serialization failure) is rolled back and
  run again (:data:`CONFLICT_ATTEMPTS` times in all).
- Every statement is bounded: ``statement_timeout`` and ``lock_timeout`` on each connection,
  a bounded wait for a pooled connection, ``connect_timeout``, and a client-side timeout
  around each operation (a stalled network is not a statement the server can cancel).
- Schema steps mirror SQLite's (:data:`PG_MIGRATIONS`, one per step of
  :data:`services.cost.ledger.MIGRATIONS`); the applied version is the largest in the
  ``ledger_schema`` table. Each step runs in its own transaction holding a transaction-level
  advisory lock, and re-reads the version inside it, so replicas that start together migrate
  once and a failed step leaves the previous version.

Connection URLs are ``postgresql://`` or ``postgres://`` (libpq's URI syntax). The password may
come in the URL or from ``PGPASSWORD``; it is never logged or put in an error: logs show the
URL with the password masked, and the driver's messages are logged with it blanked out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg_pool import AsyncConnectionPool

from quorum.errors import QuorumError, Unavailable
from quorum.registry import ConfigError
from services.cost import accounts
from services.cost.accounts import Program, Rows, Sql
from services.cost.groupcommit import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUED, GroupCommit
from services.cost.ledger import (
    SCHEMA_VERSION,
    ProgramLedger,
    Recorded,
    SavepointsNeeded,
    Summary,
    ToRecord,
    model_totals,
    now_us,
    record_batch,
    summary_filter,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMES = ("postgresql://", "postgres://")
MASK = "***"


def is_postgres_url(value: str) -> bool:
    return value.strip().lower().startswith(SCHEMES)


class PostgresUrl:
    """A PostgreSQL connection URL and its password, kept apart: ``str()`` and ``repr()`` give
    the URL with the password masked; only :meth:`conninfo` (handed to the driver) holds it."""

    __slots__ = ("_conninfo", "_secrets", "masked")

    def __init__(self, url: str, env: Mapping[str, str] | None = None) -> None:
        """Parse ``url``; without a password in it, ``PGPASSWORD`` from ``env`` (default: the
        process environment) is used. Raises ConfigError (naming the masked URL only)."""
        env = os.environ if env is None else env
        url = url.strip()
        scheme, sep, rest = url.partition("://")
        url = f"{scheme.lower()}{sep}{rest}"  # libpq knows the scheme in lower case only
        self.masked = mask_url(url)
        if not is_postgres_url(url):
            raise ConfigError(f"{self.masked!r} is not a postgresql:// URL")
        try:
            params = pg_conninfo.conninfo_to_dict(url)
        except psycopg.Error:
            raise ConfigError(f"{self.masked!r} is not a valid PostgreSQL URL") from None
        password = params.get("password")
        secrets = {str(password)} if password else set()
        parts = urlsplit(url)
        if parts.password:
            secrets.add(parts.password)  # as written (percent-encoded) too
        if not password and env.get("PGPASSWORD"):
            password = env["PGPASSWORD"]
            secrets.add(str(password))
            self._conninfo = pg_conninfo.make_conninfo(url, password=password)
        else:
            self._conninfo = url
        self._secrets = tuple(sorted(secrets, key=len, reverse=True))

    def conninfo(self) -> str:
        """What the driver connects with (holds the password)."""
        return self._conninfo

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of the password blanked out."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"PostgresUrl({self.masked!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PostgresUrl) and other._conninfo == self._conninfo

    def __hash__(self) -> int:
        return hash(self._conninfo)


def mask_url(url: str) -> str:
    """``url`` with the password (after ``user:`` or in a ``password=`` parameter) masked."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hosts = netloc.rpartition("@")
            user, sep, _ = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{hosts}" if sep else netloc
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(k == "password" for k, _ in pairs):
                query = urlencode([(k, MASK if k == "password" else v) for k, v in pairs])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<an unparseable URL>"


# --- schema ------------------------------------------------------------------------------------

PgMigration = Sequence[str]

#: SQLite's _v4_cached_input: the part of input_tokens served from the provider's prompt cache
_PG_V4_CACHED_INPUT: PgMigration = (
    "ALTER TABLE usage ADD COLUMN cached_input_tokens BIGINT NOT NULL DEFAULT 0",
)

#: Schema steps in order, one per step of SQLite's MIGRATIONS; step ``i`` takes the version
#: from ``i`` to ``i + 1``. Append new steps; never edit or reorder released ones.
PG_MIGRATIONS: tuple[PgMigration, ...] = (
    (
        """
        CREATE TABLE usage (
            request_id     TEXT PRIMARY KEY,
            model          TEXT NOT NULL,
            source         TEXT NOT NULL,
            input_tokens   BIGINT NOT NULL,
            output_tokens  BIGINT NOT NULL,
            cost_micros    BIGINT NOT NULL,
            currency       TEXT NOT NULL,
            occurred_at_us BIGINT NOT NULL,
            recorded_at_us BIGINT NOT NULL
        )
        """,
        "CREATE INDEX usage_occurred_at ON usage (occurred_at_us)",
    ),
    ("ALTER TABLE usage ADD COLUMN estimated BOOLEAN NOT NULL DEFAULT false",),
    (accounts.V3_USAGE_TENANT, *accounts.V3_TABLES),
    _PG_V4_CACHED_INPUT,
    (accounts.V5_USAGE_OFFICIAL,),
    (accounts.V6_USAGE_SIMULATED_PG,),
)
assert len(PG_MIGRATIONS) == SCHEMA_VERSION, "PostgreSQL and SQLite schemas must step together"

#: pg_advisory_xact_lock key held while a schema step runs (b"quorumlg" as an integer)
MIGRATION_LOCK_KEY = int.from_bytes(b"quorumlg", "big") - 2**63

_SCHEMA_TABLE = """
    CREATE TABLE IF NOT EXISTS ledger_schema (
        version    INTEGER PRIMARY KEY,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
"""


async def schema_version(conn: psycopg.AsyncConnection[Any]) -> int:
    """The applied version (0 for an empty database)."""
    cur = await conn.execute("SELECT to_regclass('ledger_schema') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM ledger_schema")
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


async def migrate(
    conn: psycopg.AsyncConnection[Any], migrations: Sequence[PgMigration] = PG_MIGRATIONS
) -> int:
    """Bring the schema up to ``len(migrations)``, one transaction per step under the advisory
    lock (DDL is transactional in PostgreSQL: a failed step leaves the previous version).
    ``conn`` must be in autocommit mode. Returns the version."""
    target = len(migrations)
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            await conn.execute(_SCHEMA_TABLE)
            # read inside the lock: another replica may have migrated meanwhile
            version = await schema_version(conn)
            if version > target:
                raise ConfigError(
                    f"ledger schema version {version} is newer than this build knows ({target})"
                )
            if version == target:
                return target
            for statement in migrations[version]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO ledger_schema (version) VALUES (%s)", (version + 1,))
        log.info("ledger schema migrated to version %d", version + 1)


# --- the ledger ----------------------------------------------------------------------------------


#: a batch that conflicted (deadlock, serialization failure) is run this many times in all
CONFLICT_ATTEMPTS = 3
#: batches written at once, each on a connection of its own: while one commits (its WAL
#: flush on the server), the next one runs its statements
DEFAULT_WRITERS = 2
_CONFLICTS = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


async def execute(
    conn: psycopg.AsyncConnection[Any], program: Program[T], *, durable: bool = True
) -> T:
    """Run ``program`` on ``conn`` in one transaction (rolled back if it raises); one that
    need not be ``durable`` does not wait for its commit to reach the disk."""
    async with conn.transaction():
        if not durable:
            await conn.execute("SET LOCAL synchronous_commit TO OFF")
        rows: Rows = []
        try:
            sql: Sql = next(program)
            while True:
                text = sql.text.replace("?", "%s").replace("{lock}", " FOR UPDATE")
                cur = await conn.execute(text, sql.params)  # type: ignore[arg-type]
                rows = await cur.fetchall() if cur.description else []
                sql = program.send(rows)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


class PostgresLedger(ProgramLedger):
    """The ledger in a PostgreSQL database, through a small pool of autocommit connections.
    Records are group-committed (see :mod:`services.cost.ledger`): a queue of at most
    ``max_queued`` records in front of ``writers`` writers, at most ``max_batch`` records
    per transaction. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(
        self,
        url: PostgresUrl,
        pool: AsyncConnectionPool[Any],
        *,
        timeout_s: float,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queued: int = DEFAULT_MAX_QUEUED,
        writers: int = DEFAULT_WRITERS,
    ) -> None:
        self.url = url
        self._pool = pool
        self._timeout_s = timeout_s
        self._closing = False
        self._closed = False
        self._records: GroupCommit[ToRecord, Recorded] = GroupCommit(
            self._write,
            max_batch=max_batch,
            max_queued=max_queued,
            writers=writers,
            name="ledger-writer",
        )

    @classmethod
    async def open(
        cls,
        url: PostgresUrl | str,
        *,
        timeout_s: float = 5.0,
        min_connections: int = 1,
        max_connections: int = 8,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queued: int = DEFAULT_MAX_QUEUED,
        writers: int = DEFAULT_WRITERS,
    ) -> PostgresLedger:
        """Connect and migrate. ``timeout_s`` bounds the connect, the wait for a pooled
        connection and each statement. Raises ConfigError when the database cannot be reached
        or its schema is unknown (the message names the masked URL only)."""
        if isinstance(url, str):
            url = PostgresUrl(url)
        statement_ms = max(1, round(timeout_s * 1000))

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            # SET cannot take bind parameters; the values are integers we computed
            await conn.execute(f"SET statement_timeout = {statement_ms:d}")
            await conn.execute(f"SET lock_timeout = {statement_ms:d}")
            await conn.execute(f"SET idle_in_transaction_session_timeout = {statement_ms * 2:d}")

        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url.conninfo(),
            min_size=min_connections,
            max_size=max_connections,
            kwargs={"autocommit": True, "connect_timeout": max(2, math.ceil(timeout_s))},
            configure=configure,
            timeout=timeout_s,
            open=False,
            name="cost-ledger",
        )
        try:
            async with asyncio.timeout(timeout_s * 3):
                await pool.open(wait=True, timeout=timeout_s)
                async with pool.connection(timeout=timeout_s) as conn:
                    version = await migrate(conn)
        except (psycopg.Error, TimeoutError) as e:
            await pool.close(timeout=timeout_s)
            log.warning("cannot open the ledger database %s: %s", url, url.redact(str(e)))
            raise ConfigError(f"cannot open the ledger database {url}") from None
        except BaseException:
            await pool.close(timeout=timeout_s)
            raise
        log.info("ledger open: %s (schema version %d)", url, version)
        return cls(
            url,
            pool,
            timeout_s=timeout_s,
            max_batch=max_batch,
            max_queued=max_queued,
            writers=writers,
        )

    async def _run(
        self, op: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]], *, attempts: int = 1
    ) -> T:
        """``op`` on a pooled connection; run again (up to ``attempts`` in all) when its
        transaction conflicted."""
        if self._closed:
            raise Unavailable("the usage ledger is closed", reason="LEDGER_UNAVAILABLE")
        attempt = 1
        while True:
            try:
                # the server cancels a statement after timeout_s; this also bounds the wait for
                # a connection and a network that stopped answering
                async with asyncio.timeout(self._timeout_s * 2):
                    async with self._pool.connection(timeout=self._timeout_s) as conn:
                        return await op(conn)
            except _CONFLICTS as e:
                if attempt >= attempts:
                    raise self._unavailable(e) from None
                log.info("ledger transaction conflicted (%s); running it again", e.sqlstate)
                attempt += 1
            except (psycopg.Error, TimeoutError) as e:  # down, timed out, failed over, closed
                raise self._unavailable(e) from None

    def _unavailable(self, e: Exception) -> Unavailable:
        log.warning("ledger error: %s", self.url.redact(f"{type(e).__name__}: {e}"))
        return Unavailable("the usage ledger is unavailable", reason="LEDGER_UNAVAILABLE")

    async def _program(self, program: Program[T], *, write: bool = True, durable: bool = True) -> T:
        """Run ``program`` in one transaction (rolled back if it raises)."""
        return await self._run(lambda conn: execute(conn, program, durable=durable))

    async def _write(self, usages: list[ToRecord]) -> list[Recorded | QuorumError]:
        async def run(conn: psycopg.AsyncConnection[Any]) -> list[Recorded | QuorumError]:
            # a fresh program per attempt: a conflicted one is half consumed
            try:
                return await execute(conn, record_batch(usages, now_us()))
            except SavepointsNeeded:  # rolled back: nothing of it was written
                return await execute(conn, record_batch(usages, now_us(), savepoints=True))

        return await self._run(run, attempts=CONFLICT_ATTEMPTS)

    async def summary(
        self,
        *,
        start_us: int | None = None,
        end_us: int | None = None,
        model: str | None = None,
        tenant: str | None = None,
    ) -> Summary:
        where, params = summary_filter(start_us, end_us, model, "%s", tenant)
        # SUM of BIGINT is NUMERIC in PostgreSQL: exact, read back as Decimal, turned into int
        sql = (
            "SELECT model, currency, COUNT(*), SUM(input_tokens), SUM(output_tokens), "  # noqa: S608
            "SUM(cost_micros), COUNT(*) FILTER (WHERE estimated), SUM(cached_input_tokens), "
            "simulated FROM usage" + where + " GROUP BY model, currency, simulated"
        )

        async def query(conn: psycopg.AsyncConnection[Any]) -> Summary:
            cur = await conn.execute(sql, params)
            return Summary.of([model_totals(row) for row in await cur.fetchall()])

        return await self._run(query)

    async def ping(self) -> bool:
        async def one(conn: psycopg.AsyncConnection[Any]) -> bool:
            cur = await conn.execute("SELECT 1")
            return await cur.fetchone() == (1,)

        try:
            return await self._run(one)
        except Exception:
            return False

    async def count(self) -> int:
        """Rows in the ledger (for tests and operators)."""

        async def query(conn: psycopg.AsyncConnection[Any]) -> int:
            cur = await conn.execute("SELECT COUNT(*) FROM usage")
            row = await cur.fetchone()
            return int(row[0]) if row is not None else 0

        return await self._run(query)

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        await self._records.close()  # the records already queued are written first
        self._closed = True
        await self._pool.close(timeout=self._timeout_s)
        log.info("ledger closed: %s", self.url)
