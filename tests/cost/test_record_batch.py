"""The batch program on its own (no database): which statements it runs, in which order, and
when it asks to be run again with savepoints. The rows a database would answer are given by
a small stand-in that keys on the statement; the programs against real SQLite and
PostgreSQL are in test_ledger.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from quorum.errors import FailedPrecondition, NotFound, QuorumError
from services.cost.accounts import Program, Rows, Sql
from services.cost.ledger import LedgerEntry, Recorded, SavepointsNeeded, record_batch

NOW = 1_700_000_000_000_000


def entry(request_id: str, output_tokens: int = 5) -> LedgerEntry:
    return LedgerEntry(request_id, "m", "test", 1, output_tokens, 10, "USD", 1, tenant="t")


def stored_row(e: LedgerEntry) -> tuple[Any, ...]:
    return e.values(NOW - 1)


def run(
    program: Program[list[Recorded | QuorumError]], answer: Callable[[Sql], Rows]
) -> tuple[list[str], list[Recorded | QuorumError]]:
    """Drive ``program``: (the statements it ran, first words only; its result)."""
    ran: list[str] = []
    try:
        sql = next(program)
        while True:
            ran.append(" ".join(sql.text.split()[:2]))
            sql = program.send(answer(sql))
    except StopIteration as done:
        return ran, done.value


def database(stored: dict[str, LedgerEntry]) -> Callable[[Sql], Rows]:
    """Answers as a database holding ``stored`` (and nothing else: no budgets, no
    reservations) would."""

    def answer(sql: Sql) -> Rows:
        words = sql.text.split()
        if words[0] == "INSERT" and words[2] == "usage":
            rid = str(sql.params[0])
            return [] if rid in stored else [(rid,)]
        if words[0] == "SELECT" and "FROM usage WHERE request_id" in sql.text:
            return [stored_row(stored[str(sql.params[0])])]
        return []

    return answer


def test_new_records_take_one_statement_each_after_the_budget_lock() -> None:
    ran, results = run(record_batch([(entry("b"), ""), (entry("a"), "")], NOW), database({}))
    assert ran == ["SELECT tenant,", "INSERT INTO", "INSERT INTO"]
    assert [r.record.request_id for r in results if isinstance(r, Recorded)] == ["b", "a"]
    assert all(isinstance(r, Recorded) and r.recorded_at_us == NOW for r in results)


def test_records_run_in_request_id_order_and_answer_in_the_order_given() -> None:
    order: list[str] = []

    def answer(sql: Sql) -> Rows:
        if sql.text.startswith("INSERT INTO usage"):
            order.append(str(sql.params[0]))
            return [(sql.params[0],)]
        return []

    usages = [(entry(rid), "") for rid in ("c", "a", "b", "a2")]
    _, results = run(record_batch(usages, NOW), answer)
    assert order == ["a", "a2", "b", "c"]
    assert [r.record.request_id for r in results if isinstance(r, Recorded)] == [
        "c", "a", "b", "a2",
    ]  # fmt: skip


def test_a_reused_id_after_an_insert_asks_for_savepoints() -> None:
    """The INSERT of the reused id may have written (no rule says a program fails only
    before it writes): without savepoints the batch cannot undo that record alone."""
    known = {"a": entry("a", output_tokens=7)}
    with pytest.raises(SavepointsNeeded) as info:
        run(record_batch([(entry("b"), ""), (entry("a"), "")], NOW), database(known))
    assert isinstance(info.value.__cause__, FailedPrecondition)


def test_with_savepoints_a_reused_id_fails_alone_and_is_rolled_back() -> None:
    known = {"a": entry("a", output_tokens=7)}
    usages = [(entry("b"), ""), (entry("a"), ""), (entry("a", output_tokens=7), "")]
    ran, results = run(record_batch(usages, NOW, savepoints=True), database(known))
    assert ran == [
        "SELECT tenant,",
        # "a" (another call): its INSERT did nothing, its SELECT found the other call
        "SAVEPOINT record", "INSERT INTO", "SELECT request_id,", "ROLLBACK TO",
        "RELEASE SAVEPOINT",
        # "a" again, the same call as the stored one: a duplicate
        "SAVEPOINT record", "INSERT INTO", "SELECT request_id,", "RELEASE SAVEPOINT",
        "SAVEPOINT record", "INSERT INTO", "RELEASE SAVEPOINT",  # "b": new
    ]  # fmt: skip
    new_b, reused, dup = results
    assert isinstance(new_b, Recorded) and not new_b.duplicate
    assert isinstance(reused, FailedPrecondition) and reused.reason == "REQUEST_ID_REUSED"
    assert isinstance(dup, Recorded) and dup.duplicate


def test_an_error_before_any_write_needs_no_savepoint() -> None:
    """A reservation that is not there fails its record at the first (reading) statement:
    nothing of it was written, so the batch goes on without savepoints."""
    ran, results = run(record_batch([(entry("a"), "rsv_gone"), (entry("b"), "")], NOW),
                       database({}))  # fmt: skip
    assert "SAVEPOINT record" not in ran
    gone, new_b = results
    assert isinstance(gone, NotFound) and gone.reason == "RESERVATION_NOT_FOUND"
    assert isinstance(new_b, Recorded) and not new_b.duplicate
