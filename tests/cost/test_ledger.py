"""The usage ledger on SQLite and on PostgreSQL (each test that takes ``ledger`` or ``store``
runs on both): idempotency, aggregation, time ranges, persistence, schema migrations,
concurrency, and a property test against a plain-Python oracle. Then what only one backend
has: SQLite's file and pragmas, PostgreSQL's schema table, advisory-locked migrations, timeouts
and lost connections."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quorum.errors import FailedPrecondition, QuorumError, ResourceExhausted, Unavailable
from quorum.ids import free_ports
from quorum.pgserver import TempPostgres
from quorum.registry import ConfigError
from services.cost.ledger import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Amount,
    LedgerEntry,
    ModelTotals,
    Recorded,
    SqliteLedger,
    migrate,
)
from services.cost.pgledger import PG_MIGRATIONS, PostgresLedger
from services.cost.pgledger import migrate as migrate_pg
from services.cost.pgledger import schema_version as pg_schema_version
from tests.cost.conftest import fresh_schema_url

if TYPE_CHECKING:
    from tests.cost.conftest import AnyLedger, LedgerStore


def rec(
    request_id: str = "req-1",
    model: str = "gpt-4.1",
    *,
    input_tokens: int = 1000,
    output_tokens: int = 500,
    cost_micros: int = 6000,
    currency: str = "USD",
    occurred_at_us: int = 1_700_000_000_000_000,
    source: str = "router",
    cached_input_tokens: int = 0,
    simulated: bool = False,
) -> LedgerEntry:
    return LedgerEntry(
        request_id=request_id,
        model=model,
        source=source,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_micros=cost_micros,
        currency=currency,
        occurred_at_us=occurred_at_us,
        cached_input_tokens=cached_input_tokens,
        simulated=simulated,
    )


# --- idempotency -----------------------------------------------------------------------------


async def test_first_record_is_stored(ledger: AnyLedger) -> None:
    r = await ledger.record(rec())
    assert not r.duplicate
    assert r.record == rec()
    assert r.recorded_at_us > 0
    assert await ledger.count() == 1


async def test_same_call_again_is_a_duplicate_with_the_first_cost(ledger: AnyLedger) -> None:
    first = await ledger.record(rec(cost_micros=6000, source="router"))
    # a retry: prices changed meanwhile, another source relays it, occurred_at defaulted anew
    again = await ledger.record(
        rec(cost_micros=9999, currency="CNY", source="voter", occurred_at_us=1)
    )
    assert again.duplicate
    assert again.record == first.record
    assert again.record.cost_micros == 6000
    assert again.record.currency == "USD"
    assert again.recorded_at_us == first.recorded_at_us
    assert await ledger.count() == 1
    summary = await ledger.summary()
    assert summary.requests == 1
    assert summary.totals == (Amount(6000, "USD"),)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "claude-sonnet-4.5"},
        {"input_tokens": 1001},
        {"output_tokens": 499},
        {"cached_input_tokens": 100},
        {"tenant": "globex"},
        {"simulated": True},  # a simulated answer is never the real call it shares an id with
    ],
)
async def test_reusing_a_request_id_for_another_call_is_an_error(
    ledger: AnyLedger, change: dict[str, object]
) -> None:
    await ledger.record(rec())
    with pytest.raises(FailedPrecondition) as info:
        await ledger.record(replace(rec(), **change))  # type: ignore[arg-type]
    assert info.value.reason == "REQUEST_ID_REUSED"
    assert info.value.metadata == {"request_id": "req-1"}
    assert "req-1" in info.value.message
    assert await ledger.count() == 1
    assert (await ledger.summary()).models[0].model == "gpt-4.1"


# --- aggregation -----------------------------------------------------------------------------


async def test_the_official_cost_is_stored_kept_on_a_retry_and_may_be_unknown(
    ledger: AnyLedger,
) -> None:
    first = await ledger.record(replace(rec("a", currency="CNY"), official_cost_micros=43_800))
    assert first.record.official_cost_micros == 43_800
    # a retry priced anew (another official rate since) gets the stored record back
    again = await ledger.record(replace(rec("a", currency="CNY"), official_cost_micros=1))
    assert again.duplicate and again.record.official_cost_micros == 43_800
    unknown = await ledger.record(rec("b", currency="CNY"))  # no official rate: None
    assert unknown.record.official_cost_micros is None
    again = await ledger.record(rec("b", currency="CNY"))
    assert again.duplicate and again.record.official_cost_micros is None
    (g,) = await ledger.usage_groups()
    assert (g.requests, g.cost_micros, g.official_known_micros, g.requests_without_official) == (
        2, 12_000, 43_800, 1,
    )  # fmt: skip
    (g,) = await ledger.usage_groups(end_us=1_700_000_000_000_001, by_time=True)
    assert (g.requests, g.requests_without_official) == (2, 1)
    assert await ledger.usage_groups(start_us=1_700_000_000_000_001) == []


async def test_summary_groups_per_model_and_currency(ledger: AnyLedger) -> None:
    await ledger.record(rec("a", "gpt-4.1", input_tokens=10, output_tokens=1, cost_micros=100))
    await ledger.record(rec("b", "gpt-4.1", input_tokens=20, output_tokens=2, cost_micros=200))
    await ledger.record(
        rec("c", "deepseek-v3.2", input_tokens=5, output_tokens=5, cost_micros=7, currency="CNY")
    )
    # the same model billed in another currency (e.g. after a reseller change): its own group
    await ledger.record(
        rec("d", "gpt-4.1", input_tokens=1, output_tokens=1, cost_micros=3, currency="CNY")
    )
    s = await ledger.summary()
    assert s.models == (
        ModelTotals("deepseek-v3.2", "CNY", 1, 5, 5, 7),
        ModelTotals("gpt-4.1", "CNY", 1, 1, 1, 3),
        ModelTotals("gpt-4.1", "USD", 2, 30, 3, 300),
    )
    assert (s.requests, s.input_tokens, s.output_tokens) == (4, 36, 9)
    assert s.totals == (Amount(10, "CNY"), Amount(300, "USD"))

    only = await ledger.summary(model="gpt-4.1")
    assert [(g.currency, g.requests) for g in only.models] == [("CNY", 1), ("USD", 2)]
    assert only.totals == (Amount(3, "CNY"), Amount(300, "USD"))


async def test_simulated_records_are_summed_apart_from_real_spend(ledger: AnyLedger) -> None:
    await ledger.record(rec("real", input_tokens=10, output_tokens=1, cost_micros=100))
    await ledger.record(rec("sim-a", input_tokens=20, output_tokens=2, cost_micros=200,
                            simulated=True))  # fmt: skip
    await ledger.record(
        rec("sim-b", "deepseek-v3.2", cost_micros=7, currency="CNY", simulated=True)
    )
    again = await ledger.record(rec("sim-a", input_tokens=20, output_tokens=2, cost_micros=1,
                                    simulated=True))  # fmt: skip
    assert again.duplicate and again.record.simulated and again.record.cost_micros == 200
    s = await ledger.summary()
    # the real totals hold the real call only
    assert s.models == (ModelTotals("gpt-4.1", "USD", 1, 10, 1, 100),)
    assert (s.requests, s.input_tokens, s.output_tokens, s.totals) == (
        1, 10, 1, (Amount(100, "USD"),),
    )  # fmt: skip
    assert s.simulated_models == (
        ModelTotals("deepseek-v3.2", "CNY", 1, 1000, 500, 7, simulated=True),
        ModelTotals("gpt-4.1", "USD", 1, 20, 2, 200, simulated=True),
    )
    assert s.simulated_requests == 2
    assert s.simulated_totals == (Amount(7, "CNY"), Amount(200, "USD"))
    only = await ledger.summary(model="deepseek-v3.2")
    assert (only.requests, only.simulated_requests) == (0, 1)
    groups = sorted(await ledger.usage_groups(), key=lambda g: (g.model, g.simulated))
    assert [(g.model, g.simulated, g.requests, g.cost_micros) for g in groups] == [
        ("deepseek-v3.2", True, 1, 7), ("gpt-4.1", False, 1, 100), ("gpt-4.1", True, 1, 200),
    ]  # fmt: skip


async def test_cached_input_tokens_are_stored_and_summed(ledger: AnyLedger) -> None:
    await ledger.record(rec("a", input_tokens=1000, cached_input_tokens=600))
    await ledger.record(rec("b", input_tokens=500, cached_input_tokens=500))
    await ledger.record(rec("c", "deepseek-v3.2", input_tokens=10))
    again = await ledger.record(rec("a", input_tokens=1000, cached_input_tokens=600))
    assert again.duplicate
    assert again.record.cached_input_tokens == 600
    s = await ledger.summary()
    assert s.cached_input_tokens == 1100
    assert [(g.model, g.input_tokens, g.cached_input_tokens) for g in s.models] == [
        ("deepseek-v3.2", 10, 0),
        ("gpt-4.1", 1500, 1100),
    ]


async def test_summary_of_an_empty_ledger_or_unknown_model_is_empty(ledger: AnyLedger) -> None:
    for s in (await ledger.summary(), await ledger.summary(model="no-such-model")):
        assert s.models == ()
        assert (s.requests, s.input_tokens, s.output_tokens, s.totals) == (0, 0, 0, ())


async def test_sums_stay_exact_integers_past_float_precision(ledger: AnyLedger) -> None:
    big = 2**53 + 1  # not representable as a float64
    await ledger.record(rec("a", cost_micros=big))
    await ledger.record(rec("b", cost_micros=big))
    s = await ledger.summary()
    assert s.totals == (Amount(2 * big, "USD"),)
    assert isinstance(s.totals[0].micros, int)


async def test_time_range_is_start_inclusive_end_exclusive(ledger: AnyLedger) -> None:
    for i, t in enumerate((100, 199, 200, 299, 300)):
        await ledger.record(rec(f"r{i}", occurred_at_us=t, cost_micros=t))
    assert (await ledger.summary(start_us=200, end_us=300)).totals == (Amount(200 + 299, "USD"),)
    assert (await ledger.summary(start_us=200)).requests == 3
    assert (await ledger.summary(end_us=200)).requests == 2
    assert (await ledger.summary(start_us=200, end_us=200)).requests == 0
    assert (await ledger.summary(start_us=301)).requests == 0
    assert (await ledger.summary()).requests == 5


# --- storage ---------------------------------------------------------------------------------


async def test_records_survive_a_reopen(store: LedgerStore) -> None:
    led = await store.open()
    await led.record(rec("a"))
    await led.record(rec("b", "deepseek-v3.2", cost_micros=350))
    await led.close()

    led = await store.open()
    try:
        assert await led.count() == 2
        again = await led.record(rec("a", cost_micros=1))
        assert again.duplicate
        assert again.record.cost_micros == 6000
        assert (await led.summary()).totals == (Amount(6350, "USD"),)
    finally:
        await led.close()


async def test_sqlite_database_uses_wal_and_the_current_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "ledger.sqlite3"  # directories are created
    led = await SqliteLedger.open(path)
    await led.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        cols = [r[1] for r in conn.execute("PRAGMA table_info(usage)")]
        assert cols == [
            "request_id", "model", "source", "input_tokens", "output_tokens",
            "cost_micros", "currency", "occurred_at_us", "recorded_at_us", "estimated", "tenant",
            "cached_input_tokens", "official_cost_micros", "simulated",
        ]  # fmt: skip
        indexes = {r[1]: r[2] for r in conn.execute("PRAGMA index_list(usage)")}
        assert "usage_occurred_at" in indexes
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM usage WHERE occurred_at_us >= 5"
        ).fetchall()
        assert "usage_occurred_at" in str(plan)
    finally:
        conn.close()


def test_sqlite_migrate_applies_only_the_missing_steps(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.sqlite3", isolation_level=None)
    try:
        assert migrate(conn, MIGRATIONS[:1]) == 1
        conn.execute(
            "INSERT INTO usage VALUES ('keep', 'm', 's', 1, 2, 3, 'USD', 4, 5)"
        )  # data of v1 must survive the later steps
        assert migrate(conn) == SCHEMA_VERSION
        assert conn.execute(
            "SELECT estimated, tenant, cached_input_tokens, official_cost_micros, simulated "
            "FROM usage"
        ).fetchall() == [(0, "default", 0, None, 0)]  # no official cost known for older rows

        def add_budgets(c: sqlite3.Connection) -> None:
            c.execute("CREATE TABLE later_step (name TEXT PRIMARY KEY, limit_micros INTEGER)")

        assert migrate(conn, (*MIGRATIONS, add_budgets)) == SCHEMA_VERSION + 1
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
        assert conn.execute("SELECT COUNT(*) FROM later_step").fetchone() == (0,)
        assert conn.execute("SELECT request_id FROM usage").fetchall() == [("keep",)]
        # idempotent: nothing runs again (CREATE TABLE would fail if it did)
        assert migrate(conn, (*MIGRATIONS, add_budgets)) == SCHEMA_VERSION + 1
    finally:
        conn.close()


def test_sqlite_failed_migration_step_leaves_the_previous_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.sqlite3", isolation_level=None)
    try:
        migrate(conn)

        def broken(c: sqlite3.Connection) -> None:
            c.execute("CREATE TABLE half_done (x INTEGER)")
            c.execute("THIS IS NOT SQL")

        with pytest.raises(sqlite3.OperationalError):
            migrate(conn, (*MIGRATIONS, broken))
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "half_done" not in tables
    finally:
        conn.close()


async def test_sqlite_newer_schema_than_this_build_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigError, match="newer"):
        await SqliteLedger.open(path)


async def test_sqlite_unusable_path_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot open the ledger database"):
        await SqliteLedger.open(blocker / "ledger.sqlite3")


async def test_a_closed_ledger_is_unavailable(store: LedgerStore) -> None:
    led = await store.open()
    assert await led.ping()
    await led.close()
    await led.close()  # idempotent
    assert not await led.ping()
    with pytest.raises(Unavailable) as info:
        await led.record(rec())
    assert info.value.reason == "LEDGER_UNAVAILABLE"


# --- concurrency -----------------------------------------------------------------------------


async def test_concurrent_retries_are_counted_once(ledger: AnyLedger) -> None:
    ids = [f"req-{i}" for i in range(50)]
    calls = [
        rec(rid, input_tokens=i, output_tokens=2 * i, cost_micros=10 * i)
        for _ in range(4)
        for i, rid in enumerate(ids)
    ]
    results = await asyncio.gather(*(ledger.record(c) for c in calls))
    assert len(results) == 200
    assert sum(not r.duplicate for r in results) == 50
    assert {r.record.request_id for r in results if not r.duplicate} == set(ids)
    assert await ledger.count() == 50
    s = await ledger.summary()
    assert s.requests == 50
    assert s.input_tokens == sum(range(50))
    assert s.output_tokens == 2 * sum(range(50))
    assert s.totals == (Amount(10 * sum(range(50)), "USD"),)


async def test_two_ledgers_racing_on_one_store_record_each_id_once(store: LedgerStore) -> None:
    """Two ledgers on the same store (two SQLite connections and worker threads, or two
    PostgreSQL pools as two replicas have): the primary key and ON CONFLICT, not a single
    worker, keep each request id once."""
    a = await store.open()
    b = await store.open()
    try:
        calls = [rec(f"req-{i % 50}", cost_micros=i % 50) for i in range(200)]
        results = await asyncio.gather(
            *((a if i % 2 else b).record(c) for i, c in enumerate(calls))
        )
        assert sum(not r.duplicate for r in results) == 50
        assert await a.count() == 50
        assert (await b.summary()).totals == (Amount(sum(range(50)), "USD"),)
    finally:
        await a.close()
        await b.close()


# --- group commit: many records, one transaction ---------------------------------------------


@contextlib.contextmanager
def fail_when_recorded(store: LedgerStore, request_id: str) -> Iterator[None]:
    """Inserting ``request_id`` fails in the database itself, as a full disk or an I/O error
    would: SQLite raises an OperationalError (a trigger evaluating broken JSON), PostgreSQL a
    ``disk_full`` error (a trigger). Rows inserted before it in the same transaction are
    already written when it fires."""
    if store.backend == "sqlite":
        conn = sqlite3.connect(store.database, isolation_level=None)
        try:
            conn.execute(
                "CREATE TRIGGER fail_on_insert AFTER INSERT ON usage "
                f"WHEN NEW.request_id = '{request_id}' BEGIN SELECT json('{{not json'); END"
            )
        finally:
            conn.close()
    else:
        with psycopg.connect(store.database, autocommit=True) as pg:
            pg.execute(
                "CREATE FUNCTION fail_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; END $$"
            )
            pg.execute(
                "CREATE TRIGGER fail_on_insert AFTER INSERT ON usage FOR EACH ROW "  # type: ignore[arg-type]
                f"WHEN (NEW.request_id = '{request_id}') EXECUTE FUNCTION fail_on_insert()"
            )
    yield


@contextlib.asynccontextmanager
async def writes_held(store: LedgerStore) -> AsyncIterator[None]:
    """Another session holds what every record needs (SQLite's write lock; PostgreSQL's
    usage table, locked against inserts) until the block ends: the ledger's writer waits."""
    if store.backend == "sqlite":
        conn = sqlite3.connect(store.database, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    else:
        async with await pg_connect(store.database) as other, other.transaction():
            await other.execute("LOCK TABLE usage IN EXCLUSIVE MODE")
            yield


async def test_concurrent_records_are_committed_together(ledger: AnyLedger) -> None:
    results = await asyncio.gather(
        *(ledger.record(rec(f"req-{i}", cost_micros=i)) for i in range(40))
    )
    assert [r.record.request_id for r in results] == [f"req-{i}" for i in range(40)]
    assert not any(r.duplicate for r in results)
    # one transaction: every record of it has the same recorded time
    assert len({r.recorded_at_us for r in results}) == 1
    assert await ledger.count() == 40
    assert (await ledger.summary()).totals == (Amount(sum(range(40)), "USD"),)


async def test_one_request_id_twice_in_a_batch_is_as_if_one_after_the_other(
    ledger: AnyLedger,
) -> None:
    first = rec("a", cost_micros=100)
    results = await ledger.record_many(
        [
            (first, ""),
            (rec("a", cost_micros=999, source="voter"), ""),  # a retry: a duplicate of the first
            (rec("a", output_tokens=1), ""),  # another call under the same id
            (rec("b", cost_micros=7), ""),
            (first, ""),
        ]
    )
    new_a, dup_a, reused, new_b, dup_again = results
    assert isinstance(new_a, Recorded) and not new_a.duplicate and new_a.record == first
    assert isinstance(dup_a, Recorded) and dup_a.duplicate and dup_a.record == first
    assert isinstance(reused, FailedPrecondition)
    assert reused.reason == "REQUEST_ID_REUSED"
    assert reused.metadata == {"request_id": "a"}
    assert isinstance(new_b, Recorded) and not new_b.duplicate
    assert isinstance(dup_again, Recorded) and dup_again.duplicate
    assert new_a.recorded_at_us == dup_a.recorded_at_us == new_b.recorded_at_us  # one batch
    assert await ledger.count() == 2
    assert (await ledger.summary()).totals == (Amount(107, "USD"),)


async def test_a_reused_id_in_a_batch_fails_that_record_only(ledger: AnyLedger) -> None:
    await ledger.record(rec("known"))
    calls = [rec("x1"), replace(rec("known"), input_tokens=1), rec("x2")]
    results = await asyncio.gather(*(ledger.record(c) for c in calls), return_exceptions=True)
    assert isinstance(results[0], Recorded) and isinstance(results[2], Recorded)
    assert isinstance(results[1], FailedPrecondition)
    assert results[1].reason == "REQUEST_ID_REUSED"
    assert results[0].recorded_at_us == results[2].recorded_at_us
    assert await ledger.count() == 3


async def test_a_storage_failure_mid_batch_fails_all_its_records_and_writes_none(
    store: LedgerStore, caplog: pytest.LogCaptureFixture
) -> None:
    led = await store.open()
    try:
        with fail_when_recorded(store, "boom"):
            calls = [rec("a"), rec("b"), rec("boom"), rec("c")]
            results = await asyncio.gather(*(led.record(c) for c in calls), return_exceptions=True)
        for r in results:
            assert isinstance(r, Unavailable), r
            assert r.reason == "LEDGER_UNAVAILABLE"
            assert r.message == "the usage ledger is unavailable"  # ours, not the driver's
        assert any(m.getMessage().startswith("ledger error: ") for m in caplog.records)
        assert await led.count() == 0  # "a" and "b" were rolled back with the rest
        # the writer goes on; the failed records were never written, so a retry is new
        again = await led.record_many([(rec("a"), ""), (rec("c"), "")])
        assert all(isinstance(r, Recorded) and not r.duplicate for r in again)
        assert await led.count() == 2
    finally:
        await led.close()


async def test_past_its_bound_the_queue_refuses_at_once(store: LedgerStore) -> None:
    led = await store.open(max_batch=1, max_queued=2)
    try:
        async with writes_held(store):
            taken = asyncio.ensure_future(led.record(rec("t")))
            await asyncio.sleep(0.2)  # the writer took "t" and waits for the other session
            queued = asyncio.ensure_future(led.record_many([(rec("q1"), ""), (rec("q2"), "")]))
            await asyncio.sleep(0)
            started = time.monotonic()
            with pytest.raises(ResourceExhausted) as info:
                await led.record(rec("one-too-many"))
            assert time.monotonic() - started < 0.5
            assert info.value.reason == "LEDGER_BUSY"
            assert not taken.done() and not queued.done()  # nothing answered before it is stored
        assert not (await taken).duplicate
        assert all(isinstance(r, Recorded) for r in await queued)
        assert await led.count() == 3
    finally:
        await led.close()


async def test_close_writes_the_queued_records_first(store: LedgerStore) -> None:
    led = await store.open(max_batch=7)
    pending = asyncio.ensure_future(
        led.record_many([(rec(f"r{i}", cost_micros=i), "") for i in range(30)])
    )
    await asyncio.sleep(0)
    await led.close()
    assert all(isinstance(r, Recorded) and not r.duplicate for r in await pending)
    with pytest.raises(Unavailable):
        await led.record(rec("late"))
    led = await store.open()
    try:
        assert await led.count() == 30
    finally:
        await led.close()


calls_st = st.lists(
    st.builds(
        rec,
        request_id=st.sampled_from("abcde"),
        model=st.sampled_from(("m-a", "m-b")),
        input_tokens=st.integers(0, 2),
        output_tokens=st.just(5),
        cost_micros=st.integers(0, 1000),
        occurred_at_us=st.integers(0, 1000),
        simulated=st.booleans(),
    ),
    max_size=20,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(calls=calls_st)
def test_a_batch_answers_what_the_records_one_by_one_would(
    new_store: Callable[[], LedgerStore], calls: list[LedgerEntry]
) -> None:
    """Records with few ids (repeats, retries with other costs, reused ids) in one
    ``record_many``, against the same records recorded one at a time in another store: the
    same answer for each and the same rows."""

    def outcome(r: Recorded | QuorumError) -> tuple[object, ...]:
        if isinstance(r, QuorumError):
            return (type(r).__name__, r.reason)
        return (r.duplicate, r.record)

    async def run() -> None:
        batched = await new_store().open()
        one_by_one = await new_store().open()
        try:
            got = await batched.record_many([(c, "") for c in calls])
            want: list[Recorded | QuorumError] = []
            for c in calls:
                try:
                    want.append(await one_by_one.record(c))
                except QuorumError as e:
                    want.append(e)
            assert [outcome(r) for r in got] == [outcome(r) for r in want]
            assert await batched.summary() == await one_by_one.summary()
        finally:
            await batched.close()
            await one_by_one.close()

    asyncio.run(run())


# --- property: the summary equals the sum of the distinct records ------------------------------

MODELS = ("m-a", "m-b", "m-c")
CURRENCIES = ("CNY", "USD")

records_st = st.lists(
    st.builds(
        rec,
        request_id=st.text(alphabet="abcdef0123", min_size=1, max_size=4),
        model=st.sampled_from(MODELS),
        input_tokens=st.integers(0, 10_000_000),
        output_tokens=st.integers(0, 10_000_000),
        cached_input_tokens=st.integers(0, 10_000_000),
        cost_micros=st.integers(0, 10**12),
        currency=st.sampled_from(CURRENCIES),
        occurred_at_us=st.integers(0, 1000),
        simulated=st.booleans(),
    ),
    unique_by=lambda r: r.request_id,
    max_size=25,
)
bound_st = st.none() | st.integers(-1, 1001)


@settings(
    max_examples=60,
    deadline=None,
    # new_store is used as a factory: every example gets a store of its own
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    records=records_st,
    data=st.data(),
    start=bound_st,
    end=bound_st,
    model=st.none() | st.sampled_from((*MODELS, "unknown")),
)
def test_summary_equals_the_sum_of_distinct_records(
    new_store: Callable[[], LedgerStore],
    records: list[LedgerEntry],
    data: st.DataObject,
    start: int | None,
    end: int | None,
    model: str | None,
) -> None:
    # every record once, some again (exact retries), in any order
    retries = data.draw(st.lists(st.sampled_from(records), max_size=25) if records else st.just([]))
    calls = data.draw(st.permutations([*records, *retries]))

    def oracle(simulated: bool) -> tuple[dict[tuple[str, str], ModelTotals], dict[str, int]]:
        """The real groups and totals, or the simulated ones."""
        groups: dict[tuple[str, str], list[LedgerEntry]] = defaultdict(list)
        for r in records:
            if start is not None and r.occurred_at_us < start:
                continue
            if end is not None and r.occurred_at_us >= end:
                continue
            if model is not None and r.model != model:
                continue
            if r.simulated != simulated:
                continue
            groups[r.model, r.currency].append(r)
        totals: dict[str, int] = defaultdict(int)
        out = {}
        for (m, c), rs in groups.items():
            out[m, c] = ModelTotals(
                m,
                c,
                len(rs),
                sum(r.input_tokens for r in rs),
                sum(r.output_tokens for r in rs),
                sum(r.cost_micros for r in rs),
                cached_input_tokens=sum(r.cached_input_tokens for r in rs),
                simulated=simulated,
            )
            totals[c] += out[m, c].cost_micros
        return out, dict(totals)

    async def run() -> None:
        led = await new_store().open()
        try:
            results = await asyncio.gather(*(led.record(c) for c in calls))
            assert sum(not r.duplicate for r in results) == len(records)
            assert await led.count() == len(records)
            s = await led.summary(start_us=start, end_us=end, model=model)
        finally:
            await led.close()
        groups, totals = oracle(simulated=False)
        assert {(g.model, g.currency): g for g in s.models} == groups
        assert len(s.models) == len(groups)
        assert list(s.models) == sorted(s.models, key=lambda g: (g.model, g.currency))
        assert s.totals == tuple(Amount(m, c) for c, m in sorted(totals.items()))
        assert s.requests == sum(g.requests for g in groups.values())
        assert s.input_tokens == sum(g.input_tokens for g in groups.values())
        assert s.output_tokens == sum(g.output_tokens for g in groups.values())
        assert s.cached_input_tokens == sum(g.cached_input_tokens for g in groups.values())
        # the simulated records: apart, and in none of the totals above
        sim_groups, sim_totals = oracle(simulated=True)
        assert {(g.model, g.currency): g for g in s.simulated_models} == sim_groups
        assert len(s.simulated_models) == len(sim_groups)
        assert s.simulated_totals == tuple(Amount(m, c) for c, m in sorted(sim_totals.items()))
        assert s.simulated_requests == sum(g.requests for g in sim_groups.values())

    asyncio.run(run())


# --- PostgreSQL only ---------------------------------------------------------------------------


@pytest.fixture
def pg_url(postgres_server: TempPostgres) -> str:
    return fresh_schema_url(postgres_server)


async def pg_connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5)


async def fetch(url: str, sql: str) -> list[tuple[Any, ...]]:
    async with await pg_connect(url) as conn:
        cur = await conn.execute(sql)  # type: ignore[arg-type]
        return await cur.fetchall()


async def test_postgres_schema_mirrors_sqlite_and_records_its_steps(pg_url: str) -> None:
    led = await PostgresLedger.open(pg_url)
    await led.close()
    cols = await fetch(
        pg_url,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'usage' AND table_schema = current_schema() ORDER BY ordinal_position",
    )
    assert cols == [
        ("request_id", "text"), ("model", "text"), ("source", "text"),
        ("input_tokens", "bigint"), ("output_tokens", "bigint"), ("cost_micros", "bigint"),
        ("currency", "text"), ("occurred_at_us", "bigint"), ("recorded_at_us", "bigint"),
        ("estimated", "boolean"), ("tenant", "text"), ("cached_input_tokens", "bigint"),
        ("official_cost_micros", "bigint"), ("simulated", "boolean"),
    ]  # fmt: skip
    indexes = await fetch(
        pg_url, "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    )
    assert {"usage_pkey", "usage_occurred_at"} <= {r[0] for r in indexes}
    versions = await fetch(pg_url, "SELECT version FROM ledger_schema ORDER BY version")
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert len(PG_MIGRATIONS) == len(MIGRATIONS)


async def test_postgres_migrate_applies_only_the_missing_steps(pg_url: str) -> None:
    async with await pg_connect(pg_url) as conn:
        assert await migrate_pg(conn, PG_MIGRATIONS[:1]) == 1
        # data of v1 must survive the later steps
        await conn.execute("INSERT INTO usage VALUES ('keep', 'm', 's', 1, 2, 3, 'USD', 4, 5)")
        assert await migrate_pg(conn) == SCHEMA_VERSION
        cur = await conn.execute(
            "SELECT estimated, tenant, cached_input_tokens, official_cost_micros, simulated "
            "FROM usage"
        )
        assert await cur.fetchall() == [(False, "default", 0, None, False)]

        add_budgets = ("CREATE TABLE later_step (name TEXT PRIMARY KEY, limit_micros BIGINT)",)
        assert await migrate_pg(conn, (*PG_MIGRATIONS, add_budgets)) == SCHEMA_VERSION + 1
        assert await pg_schema_version(conn) == SCHEMA_VERSION + 1
        # idempotent: nothing runs again (CREATE TABLE would fail if it did)
        assert await migrate_pg(conn, (*PG_MIGRATIONS, add_budgets)) == SCHEMA_VERSION + 1
        cur = await conn.execute("SELECT request_id FROM usage")
        assert await cur.fetchall() == [("keep",)]


async def test_postgres_failed_migration_step_leaves_the_previous_version(pg_url: str) -> None:
    async with await pg_connect(pg_url) as conn:
        await migrate_pg(conn)
        broken = ("CREATE TABLE half_done (x INTEGER)", "THIS IS NOT SQL")
        with pytest.raises(psycopg.errors.SyntaxError):
            await migrate_pg(conn, (*PG_MIGRATIONS, broken))
        assert await pg_schema_version(conn) == SCHEMA_VERSION
        cur = await conn.execute("SELECT to_regclass('half_done')")
        assert await cur.fetchone() == (None,)


async def test_postgres_newer_schema_than_this_build_refuses_to_open(pg_url: str) -> None:
    await (await PostgresLedger.open(pg_url)).close()
    async with await pg_connect(pg_url) as conn:
        await conn.execute("INSERT INTO ledger_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(ConfigError, match="newer"):
        await PostgresLedger.open(pg_url)


async def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    """Six replicas open one empty database at the same moment: the advisory lock lets one
    run each step; all of them open and share the rows."""
    ledgers = await asyncio.gather(*(PostgresLedger.open(pg_url) for _ in range(6)))
    try:
        versions = await fetch(pg_url, "SELECT version FROM ledger_schema ORDER BY version")
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        results = await asyncio.gather(*(led.record(rec()) for led in ledgers))
        assert sum(not r.duplicate for r in results) == 1
        assert {await led.count() for led in ledgers} == {1}
    finally:
        await asyncio.gather(*(led.close() for led in ledgers))


SECRET = "s3cret-Pa55"  # a marker that must never show up


async def test_an_unreachable_server_is_a_config_error_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    (port,) = free_ports(1)  # nothing listens there
    url = f"postgresql://quorum:{SECRET}@127.0.0.1:{port}/quorum"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as info:
        await PostgresLedger.open(url, timeout_s=1.0)
    assert f"postgresql://quorum:***@127.0.0.1:{port}/quorum" in str(info.value)
    assert SECRET not in str(info.value)
    assert caplog.records, "the driver's failure is logged"
    assert SECRET not in caplog.text


async def test_the_url_is_logged_with_the_password_masked(
    postgres_server: TempPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    # the test server trusts loopback, so any password is accepted and ignored
    url = postgres_server.url.replace("quorum@", f"quorum:{SECRET}@")
    caplog.set_level(logging.DEBUG)
    led = await PostgresLedger.open(url)
    try:
        await led.record(rec())
    finally:
        await led.close()
    assert "postgresql://quorum:***@127.0.0.1" in caplog.text
    assert SECRET not in caplog.text


async def test_a_lost_connection_is_unavailable_then_recovers(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    led = await PostgresLedger.open(pg_url, max_connections=1)
    try:
        await led.record(rec("a"))
        # the server ends the ledger's session (a restart, a failover, an admin)
        killed = await fetch(
            pg_url,
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "  # waits for it
            "WHERE pid <> pg_backend_pid() AND datname = current_database() "
            "AND backend_type = 'client backend'",
        )
        assert killed == [(True,)]
        with pytest.raises(Unavailable) as info:
            await led.record(rec("b"))
        assert info.value.reason == "LEDGER_UNAVAILABLE"
        assert info.value.message == "the usage ledger is unavailable"
        # the driver's message went to the log only
        logged = [r for r in caplog.records if r.name == "services.cost.pgledger"]
        assert any(r.getMessage().startswith("ledger error: ") for r in logged)
        again = await led.record(rec("b"))
        assert not again.duplicate
        assert await led.count() == 2
    finally:
        await led.close()


async def test_a_batch_that_deadlocks_is_run_again(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Another session inserts "b", then "a" while the ledger's batch holds "a" and waits for
    "b": a real deadlock. Only the ledger's backend looks for it (the other one's
    deadlock_timeout is long), so PostgreSQL rolls the batch back; it is run again once the
    other session committed, and answers duplicates of that session's rows, not an error."""
    led = await PostgresLedger.open(pg_url)
    caplog.set_level(logging.INFO, logger="services.cost.pgledger")
    try:
        async with await pg_connect(pg_url) as other:
            await other.execute("SET deadlock_timeout = '60s'")
            async with other.transaction():
                insert = (
                    "INSERT INTO usage VALUES (%s, 'gpt-4.1', 'x', 1000, 500, 6000, 'USD', "
                    "1, 2, false)"
                )
                await other.execute(insert, ("b",))
                batch = asyncio.ensure_future(led.record_many([(rec("a"), ""), (rec("b"), "")]))
                await asyncio.sleep(0.3)  # the batch inserted "a" and waits for "b"
                await other.execute(insert, ("a",))  # waits for the batch: PostgreSQL breaks it
            results = await batch
        assert all(isinstance(r, Recorded) and r.duplicate for r in results), results
        assert [r.record.source for r in results if isinstance(r, Recorded)] == ["x", "x"]
        assert "ledger transaction conflicted (40P01); running it again" in caplog.text
        assert await led.count() == 2
    finally:
        await led.close()


async def test_a_statement_waiting_on_a_lock_is_cut_off_unavailable(pg_url: str) -> None:
    """Another session holds an uncommitted insert of the same request id: our insert waits
    for it, but no longer than the ledger's timeout."""
    led = await PostgresLedger.open(pg_url, timeout_s=0.5)
    try:
        async with await pg_connect(pg_url) as other, other.transaction():
            await other.execute(
                "INSERT INTO usage VALUES ('req-1', 'gpt-4.1', 'x', 1000, 500, 6000, 'USD', "
                "1, 2, false)"
            )
            started = asyncio.get_running_loop().time()
            with pytest.raises(Unavailable) as info:
                await led.record(rec())
            assert asyncio.get_running_loop().time() - started < 2.0
            assert info.value.reason == "LEDGER_UNAVAILABLE"
            # the other session committed its row: it won, ours is a duplicate of it
        again = await led.record(rec())
        assert again.duplicate
        assert again.record.source == "x"
    finally:
        await led.close()
