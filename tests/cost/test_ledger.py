"""The SQLite usage ledger: idempotency, aggregation, time ranges, persistence, schema
migrations, concurrency, and a property test against a plain-Python oracle."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quorum.errors import FailedPrecondition, Unavailable
from quorum.registry import ConfigError
from services.cost.ledger import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Amount,
    ModelTotals,
    SqliteLedger,
    UsageRecord,
    migrate,
)


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
) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        model=model,
        source=source,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_micros=cost_micros,
        currency=currency,
        occurred_at_us=occurred_at_us,
    )


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqliteLedger]:
    led = await SqliteLedger.open(tmp_path / "ledger.sqlite3")
    try:
        yield led
    finally:
        await led.close()


# --- idempotency -----------------------------------------------------------------------------


async def test_first_record_is_stored(ledger: SqliteLedger) -> None:
    r = await ledger.record(rec())
    assert not r.duplicate
    assert r.record == rec()
    assert r.recorded_at_us > 0
    assert await ledger.count() == 1


async def test_same_call_again_is_a_duplicate_with_the_first_cost(ledger: SqliteLedger) -> None:
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
    ],
)
async def test_reusing_a_request_id_for_another_call_is_an_error(
    ledger: SqliteLedger, change: dict[str, object]
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


async def test_summary_groups_per_model_and_currency(ledger: SqliteLedger) -> None:
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


async def test_summary_of_an_empty_ledger_or_unknown_model_is_empty(ledger: SqliteLedger) -> None:
    for s in (await ledger.summary(), await ledger.summary(model="no-such-model")):
        assert s.models == ()
        assert (s.requests, s.input_tokens, s.output_tokens, s.totals) == (0, 0, 0, ())


async def test_sums_stay_exact_integers_past_float_precision(ledger: SqliteLedger) -> None:
    big = 2**53 + 1  # not representable as a float64
    await ledger.record(rec("a", cost_micros=big))
    await ledger.record(rec("b", cost_micros=big))
    s = await ledger.summary()
    assert s.totals == (Amount(2 * big, "USD"),)
    assert isinstance(s.totals[0].micros, int)


async def test_time_range_is_start_inclusive_end_exclusive(ledger: SqliteLedger) -> None:
    for i, t in enumerate((100, 199, 200, 299, 300)):
        await ledger.record(rec(f"r{i}", occurred_at_us=t, cost_micros=t))
    assert (await ledger.summary(start_us=200, end_us=300)).totals == (Amount(200 + 299, "USD"),)
    assert (await ledger.summary(start_us=200)).requests == 3
    assert (await ledger.summary(end_us=200)).requests == 2
    assert (await ledger.summary(start_us=200, end_us=200)).requests == 0
    assert (await ledger.summary(start_us=301)).requests == 0
    assert (await ledger.summary()).requests == 5


# --- storage ---------------------------------------------------------------------------------


async def test_records_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    led = await SqliteLedger.open(path)
    await led.record(rec("a"))
    await led.record(rec("b", "deepseek-v3.2", cost_micros=350))
    await led.close()

    led = await SqliteLedger.open(path)
    try:
        assert await led.count() == 2
        again = await led.record(rec("a", cost_micros=1))
        assert again.duplicate
        assert again.record.cost_micros == 6000
        assert (await led.summary()).totals == (Amount(6350, "USD"),)
    finally:
        await led.close()


async def test_database_uses_wal_and_the_current_schema_version(tmp_path: Path) -> None:
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
            "cost_micros", "currency", "occurred_at_us", "recorded_at_us",
        ]  # fmt: skip
        indexes = {r[1]: r[2] for r in conn.execute("PRAGMA index_list(usage)")}
        assert "usage_occurred_at" in indexes
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM usage WHERE occurred_at_us >= 5"
        ).fetchall()
        assert "usage_occurred_at" in str(plan)
    finally:
        conn.close()


def test_migrate_applies_only_the_missing_steps(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.sqlite3", isolation_level=None)
    try:
        assert migrate(conn) == SCHEMA_VERSION
        conn.execute(
            "INSERT INTO usage VALUES ('keep', 'm', 's', 1, 2, 3, 'USD', 4, 5)"
        )  # data of v1 must survive v2

        def add_budgets(c: sqlite3.Connection) -> None:
            c.execute("CREATE TABLE budgets (name TEXT PRIMARY KEY, limit_micros INTEGER)")

        assert migrate(conn, (*MIGRATIONS, add_budgets)) == SCHEMA_VERSION + 1
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
        assert conn.execute("SELECT COUNT(*) FROM budgets").fetchone() == (0,)
        assert conn.execute("SELECT request_id FROM usage").fetchall() == [("keep",)]
        # idempotent: nothing runs again (CREATE TABLE would fail if it did)
        assert migrate(conn, (*MIGRATIONS, add_budgets)) == SCHEMA_VERSION + 1
    finally:
        conn.close()


def test_a_failed_migration_step_leaves_the_previous_version(tmp_path: Path) -> None:
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


async def test_a_newer_schema_than_this_build_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigError, match="newer"):
        await SqliteLedger.open(path)


async def test_an_unusable_path_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot open the ledger database"):
        await SqliteLedger.open(blocker / "ledger.sqlite3")


async def test_a_closed_ledger_is_unavailable(tmp_path: Path) -> None:
    led = await SqliteLedger.open(tmp_path / "ledger.sqlite3")
    assert await led.ping()
    await led.close()
    await led.close()  # idempotent
    assert not await led.ping()
    with pytest.raises(Unavailable) as info:
        await led.record(rec())
    assert info.value.reason == "LEDGER_UNAVAILABLE"


# --- concurrency -----------------------------------------------------------------------------


async def test_concurrent_retries_are_counted_once(ledger: SqliteLedger) -> None:
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


async def test_two_connections_racing_on_one_file_record_each_id_once(tmp_path: Path) -> None:
    """Two ledgers (two connections, two worker threads) on the same file: the primary key
    and ON CONFLICT, not the single worker, keep each request id once."""
    path = tmp_path / "ledger.sqlite3"
    a = await SqliteLedger.open(path)
    b = await SqliteLedger.open(path)
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
        cost_micros=st.integers(0, 10**12),
        currency=st.sampled_from(CURRENCIES),
        occurred_at_us=st.integers(0, 1000),
    ),
    unique_by=lambda r: r.request_id,
    max_size=25,
)
bound_st = st.none() | st.integers(-1, 1001)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=records_st,
    data=st.data(),
    start=bound_st,
    end=bound_st,
    model=st.none() | st.sampled_from((*MODELS, "unknown")),
)
def test_summary_equals_the_sum_of_distinct_records(
    records: list[UsageRecord],
    data: st.DataObject,
    start: int | None,
    end: int | None,
    model: str | None,
) -> None:
    # every record once, some again (exact retries), in any order
    retries = data.draw(st.lists(st.sampled_from(records), max_size=25) if records else st.just([]))
    calls = data.draw(st.permutations([*records, *retries]))

    def oracle() -> tuple[dict[tuple[str, str], ModelTotals], dict[str, int]]:
        groups: dict[tuple[str, str], list[UsageRecord]] = defaultdict(list)
        for r in records:
            if start is not None and r.occurred_at_us < start:
                continue
            if end is not None and r.occurred_at_us >= end:
                continue
            if model is not None and r.model != model:
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
            )
            totals[c] += out[m, c].cost_micros
        return out, dict(totals)

    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            led = await SqliteLedger.open(Path(tmp) / "ledger.sqlite3")
            try:
                results = await asyncio.gather(*(led.record(c) for c in calls))
                assert sum(not r.duplicate for r in results) == len(records)
                assert await led.count() == len(records)
                s = await led.summary(start_us=start, end_us=end, model=model)
            finally:
                await led.close()
        groups, totals = oracle()
        assert {(g.model, g.currency): g for g in s.models} == groups
        assert len(s.models) == len(groups)
        assert list(s.models) == sorted(s.models, key=lambda g: (g.model, g.currency))
        assert s.totals == tuple(Amount(m, c) for c, m in sorted(totals.items()))
        assert s.requests == sum(g.requests for g in groups.values())
        assert s.input_tokens == sum(g.input_tokens for g in groups.values())
        assert s.output_tokens == sum(g.output_tokens for g in groups.values())

    asyncio.run(run())
