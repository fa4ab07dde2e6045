"""Budgets and reservations in the ledger, on SQLite and on PostgreSQL (each test runs on
both): what a budget holds, hard limits, expiry, commit and release rules, rebuilding the
month's spend, and many clients (and two ledgers, as two replicas) racing on one budget."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from quorum.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from services.cost.accounts import OPEN, RELEASED
from services.cost.accounts import QUARTER_US as QUARTER
from services.cost.budgets import Budget, month_of
from services.cost.ledger import LedgerEntry, Recorded, now_us

if TYPE_CHECKING:
    from tests.cost.conftest import AnyLedger, LedgerStore

HOUR_US = 3_600 * 1_000_000
TTL = 60 * 1_000_000
LOTS = 10**12


def same_currency(micros: int, src: str, dst: str, at_us: int) -> int:
    raise AssertionError(f"no conversion expected ({src} -> {dst})")


def usage(
    request_id: str,
    cost: int,
    *,
    tenant: str = "acme",
    model: str = "m-a",
    at_us: int | None = None,
) -> LedgerEntry:
    return LedgerEntry(
        request_id=request_id,
        model=model,
        source="test",
        input_tokens=10,
        output_tokens=20,
        cost_micros=cost,
        currency="USD",
        occurred_at_us=now_us() if at_us is None else at_us,
        tenant=tenant,
    )


def budget(limit: int, *, tenant: str = "acme", model: str = "", **kw: object) -> Budget:
    return Budget(tenant=tenant, model=model, limit_micros=limit, currency="USD", **kw)  # type: ignore[arg-type]


async def reserve(led: AnyLedger, rid: str, amount: int, *, tenant: str = "acme",
                  model: str = "m-a", ttl_us: int = TTL):  # fmt: skip
    return await led.reserve(
        rid, tenant, model, amount, "USD", ttl_us=ttl_us, convert=same_currency
    )


async def spent_reserved(led: AnyLedger, tenant: str = "acme", model: str = "") -> tuple[int, int]:
    (h,) = await led.budget_holds(tenant, model)
    return h.spent.get("USD", 0), h.reserved.get("USD", 0)


async def test_a_budget_holds_what_its_tenant_spent_this_month(ledger: AnyLedger) -> None:
    start, _ = month_of(now_us(), "UTC")
    await ledger.record(usage("before", 1_000))  # counted: spent before the budget was set
    await ledger.record(usage("last-month", 5_000, at_us=start - HOUR_US))
    await ledger.record(usage("other-tenant", 7_000, tenant="globex"))
    await ledger.set_budget(budget(100_000))
    await ledger.record(usage("after", 2_000))
    assert await spent_reserved(ledger) == (3_000, 0)
    # a record repeated is not spent twice
    await ledger.record(usage("after", 2_000))
    assert await spent_reserved(ledger) == (3_000, 0)


async def test_simulated_calls_count_against_no_budget(ledger: AnyLedger) -> None:
    await ledger.record(replace(usage("sim-before", 4_000), simulated=True))
    await ledger.record(usage("real-before", 1_000))
    await ledger.set_budget(budget(10_000))
    await ledger.set_budget(budget(10_000, model="m-a"))
    # the month's spend, rebuilt when the budget was set, left the simulated call out
    assert await spent_reserved(ledger) == (1_000, 0)
    await ledger.record(replace(usage("sim-after", 50_000), simulated=True))
    await ledger.record_many([(replace(usage("sim-batch", 50_000), simulated=True), "")])
    await ledger.record(usage("real-after", 2_000))
    assert await spent_reserved(ledger) == (3_000, 0)
    assert await spent_reserved(ledger, model="m-a") == (3_000, 0)
    # past the limit in simulated calls, the hard budget still holds real ones
    await reserve(ledger, "r1", 7_000)
    # a simulated record that commits a reservation (made before it was known to be one)
    # closes it and adds nothing
    r = await reserve(ledger, "r2", 0)
    await ledger.commit(replace(usage("sim-commit", 9_000), simulated=True), r.id)
    assert await spent_reserved(ledger) == (3_000, 7_000)
    await ledger.set_budget(budget(10_000))  # rebuilt again: the same
    assert await spent_reserved(ledger) == (3_000, 7_000)


async def test_a_model_budget_counts_only_its_model(ledger: AnyLedger) -> None:
    await ledger.set_budget(budget(100_000, model="m-b"))
    await ledger.set_budget(budget(100_000))
    await ledger.record(usage("a", 1_000, model="m-a"))
    await ledger.record(usage("b", 2_000, model="m-b"))
    assert await spent_reserved(ledger, model="m-b") == (2_000, 0)
    assert await spent_reserved(ledger, model="") == (3_000, 0)
    await reserve(ledger, "r-a", 500, model="m-a")
    assert await spent_reserved(ledger, model="m-b") == (2_000, 0)
    assert await spent_reserved(ledger, model="") == (3_000, 500)


async def test_a_hard_budget_refuses_what_it_cannot_hold(ledger: AnyLedger) -> None:
    await ledger.set_budget(budget(10_000))
    await ledger.record(usage("spent", 6_000))
    first = await reserve(ledger, "r1", 3_000)
    with pytest.raises(ResourceExhausted) as refused:
        await reserve(ledger, "r2", 2_000)
    e = refused.value
    assert e.reason == "BUDGET_EXCEEDED"
    assert e.metadata | {} == {
        "tenant": "acme",
        "model": "",
        "currency": "USD",
        "limit_micros": "10000",
        "spent_micros": "6000",
        "reserved_micros": "3000",
        "requested_micros": "2000",
        "time_zone": "UTC",
    }
    await ledger.release(first.id)
    await reserve(ledger, "r2", 2_000)  # room again
    # another tenant has no budget: nothing refuses it
    await reserve(ledger, "r3", 10**9, tenant="globex")


async def test_an_alert_only_budget_never_refuses(ledger: AnyLedger) -> None:
    await ledger.set_budget(budget(1_000, alert_only=True))
    await reserve(ledger, "r1", 5_000)
    assert await spent_reserved(ledger) == (0, 5_000)


async def test_an_expired_reservation_holds_nothing_but_can_still_be_committed(
    ledger: AnyLedger,
) -> None:
    await ledger.set_budget(budget(10_000))
    stale = await reserve(ledger, "r1", 9_000, ttl_us=1)
    await asyncio.sleep(0.001)
    assert await spent_reserved(ledger) == (0, 0)  # a crashed caller blocks nobody
    await reserve(ledger, "r2", 9_000)
    # the call behind the expired reservation did happen: it is billed all the same
    late = await ledger.commit(usage("call-1", 4_000), stale.id)
    assert not late.duplicate
    assert await spent_reserved(ledger) == (4_000, 9_000)


async def test_commit_records_and_closes_the_reservation_once(ledger: AnyLedger) -> None:
    await ledger.set_budget(budget(LOTS))
    r = await reserve(ledger, "r1", 9_000)
    assert r.state == OPEN and r.id.startswith("rsv_")
    first = await ledger.commit(usage("call-1", 4_000), r.id)
    again = await ledger.commit(usage("call-1", 4_000), r.id)  # a retried commit
    assert not first.duplicate and again.duplicate
    assert await ledger.count() == 1
    with pytest.raises(FailedPrecondition) as e:
        await ledger.commit(usage("call-2", 4_000), r.id)
    assert e.value.reason == "RESERVATION_COMMITTED"
    with pytest.raises(FailedPrecondition) as e:
        await ledger.release(r.id)
    assert e.value.reason == "RESERVATION_COMMITTED"
    assert await ledger.count() == 1


async def test_commits_in_one_batch_are_as_if_one_after_the_other(ledger: AnyLedger) -> None:
    await ledger.set_budget(budget(LOTS))
    r1 = await reserve(ledger, "r1", 9_000)
    r2 = await reserve(ledger, "r2", 9_000)
    results = await ledger.record_many(
        [
            (usage("call-1", 4_000), r1.id),  # commits r1
            (usage("call-1", 4_000), r1.id),  # its retry: a duplicate
            (usage("call-2", 4_000), r1.id),  # another record for r1
            (usage("call-3", 1_000, tenant="globex"), r2.id),  # not r2's tenant
            (usage("call-4", 2_000), r2.id),  # commits r2
            (usage("call-5", 500), ""),  # needs no reservation
        ]
    )
    first, retry, other, wrong_tenant, fourth, fifth = results
    assert isinstance(first, Recorded) and not first.duplicate
    assert isinstance(retry, Recorded) and retry.duplicate
    assert isinstance(other, FailedPrecondition) and other.reason == "RESERVATION_COMMITTED"
    assert isinstance(wrong_tenant, InvalidArgument)
    assert wrong_tenant.metadata == {"field": "tenant"}
    assert isinstance(fourth, Recorded) and not fourth.duplicate
    assert isinstance(fifth, Recorded) and not fifth.duplicate
    assert await ledger.count() == 3  # the refused records left nothing behind
    assert await spent_reserved(ledger) == (6_500, 0)  # call-1 spent once, both committed
    with pytest.raises(FailedPrecondition):
        await ledger.release(r2.id)


async def test_release_is_idempotent_and_a_released_reservation_cannot_commit(
    ledger: AnyLedger,
) -> None:
    await ledger.set_budget(budget(LOTS))
    r = await reserve(ledger, "r1", 9_000)
    assert (await ledger.release(r.id)).state == RELEASED
    assert (await ledger.release(r.id)).state == RELEASED
    with pytest.raises(FailedPrecondition) as e:
        await ledger.commit(usage("call-1", 4_000), r.id)
    assert e.value.reason == "RESERVATION_RELEASED"
    assert await ledger.count() == 0  # nothing half-written


@pytest.mark.parametrize(
    ("entry", "error", "reason"),
    [
        (usage("c", 1, tenant="globex"), InvalidArgument, "INVALID_FIELD"),
        (usage("c", 1, model="m-b"), InvalidArgument, "INVALID_FIELD"),
    ],
)
async def test_a_commit_for_another_call_writes_nothing(
    ledger: AnyLedger, entry: LedgerEntry, error: type[Exception], reason: str
) -> None:
    await ledger.set_budget(budget(LOTS))
    r = await reserve(ledger, "r1", 9_000)
    with pytest.raises(error) as e:
        await ledger.commit(entry, r.id)
    assert getattr(e.value, "reason", None) == reason
    assert await ledger.count() == 0
    assert (await ledger.release(r.id)).state == RELEASED  # still open until now


async def test_unknown_reservations_and_budgets_are_not_found(ledger: AnyLedger) -> None:
    with pytest.raises(NotFound) as e:
        await ledger.commit(usage("c", 1), "rsv_nope")
    assert e.value.reason == "RESERVATION_NOT_FOUND"
    with pytest.raises(NotFound):
        await ledger.release("rsv_nope")
    with pytest.raises(NotFound) as e:
        await ledger.delete_budget("acme", "")
    assert e.value.reason == "BUDGET_NOT_FOUND"
    assert await ledger.count() == 0


async def test_reserve_is_idempotent_on_its_request_id(ledger: AnyLedger) -> None:
    await ledger.set_budget(budget(LOTS))
    a = await reserve(ledger, "r1", 9_000)
    b = await reserve(ledger, "r1", 9_000)
    assert a.id == b.id
    with pytest.raises(FailedPrecondition) as e:
        await reserve(ledger, "r1", 8_000)
    assert e.value.reason == "REQUEST_ID_REUSED"


async def test_setting_a_budget_again_replaces_it_and_delete_removes_it(
    ledger: AnyLedger,
) -> None:
    await ledger.set_budget(budget(10_000))
    await ledger.record(usage("a", 1_000))
    await ledger.set_budget(budget(20_000, time_zone="Asia/Tokyo", alerts=(0.5,)))
    (h,) = await ledger.budget_holds("acme")
    assert h.budget.limit_micros == 20_000 and h.budget.time_zone == "Asia/Tokyo"
    assert h.budget.alerts == (0.5,)
    assert h.spent == {"USD": 1_000}  # rebuilt for the Tokyo month
    await ledger.delete_budget("acme", "")
    assert await ledger.budget_holds("acme") == []


async def test_purge_drops_only_long_closed_reservations(ledger: AnyLedger) -> None:
    await ledger.set_budget(budget(LOTS))
    r = await reserve(ledger, "r1", 1)
    await ledger.release(r.id)
    await reserve(ledger, "r2", 1)
    assert await ledger.purge() == 0  # closed just now: kept for late commits and retries


async def test_many_clients_never_spend_past_the_budget(store: LedgerStore) -> None:
    """64 clients on two ledgers (two replicas of the cost service) reserve the most a call
    may cost, then commit what it did cost: spent never passes the limit."""
    a, b = await store.open(), await store.open()
    try:
        limit, most = 100_000, 3_000
        await a.set_budget(budget(limit))
        refused = 0

        async def client(i: int) -> None:
            nonlocal refused
            led = a if i % 2 else b
            for j in range(8):
                try:
                    r = await reserve(led, f"r-{i}-{j}", most)
                except ResourceExhausted:
                    refused += 1
                    continue
                await led.commit(usage(f"c-{i}-{j}", most - (i + j) % 7 * 100), r.id)

        await asyncio.gather(*(client(i) for i in range(64)))
        spent, reserved = await spent_reserved(a)
        assert reserved == 0
        assert limit - most < spent <= limit
        assert refused > 0
        assert (await a.summary()).totals[0].micros == spent
    finally:
        await a.close()
        await b.close()


async def test_two_ledgers_batching_the_same_calls_in_opposite_orders_never_deadlock(
    store: LedgerStore,
) -> None:
    """Two ledgers (two replicas) record the same calls of three budgeted tenants at once,
    in opposite orders, a batch each per round: their transactions want the same ids and
    budgets; each is still counted once, and neither fails."""
    a, b = await store.open(), await store.open()
    try:
        tenants = ("acme", "globex", "initech")
        for t in tenants:
            await a.set_budget(budget(LOTS, tenant=t))
        for round_ in range(5):
            calls = [
                (usage(f"c-{round_}-{i}", 100 + i, tenant=tenants[i % 3]), "") for i in range(30)
            ]
            forward, backward = await asyncio.gather(
                a.record_many(calls), b.record_many(calls[::-1])
            )
            assert all(isinstance(r, Recorded) for r in forward + backward)
            assert sum(not r.duplicate for r in forward + backward if isinstance(r, Recorded)) == 30
        for i, t in enumerate(tenants):
            spent = sum(100 + j for j in range(30) if j % 3 == i) * 5
            assert await spent_reserved(b, t) == (spent, 0)
    finally:
        await a.close()
        await b.close()


async def test_a_call_no_budget_covers_holds_nothing_and_needs_no_commit(
    ledger: AnyLedger,
) -> None:
    await ledger.set_budget(budget(LOTS, tenant="globex"))
    r = await reserve(ledger, "r1", 9_000)
    assert r.id == ""
    await ledger.record(usage("c", 1_000))
    assert await ledger.count() == 1
    with pytest.raises(NotFound):
        await ledger.release("")


async def test_usage_groups_per_tenant_model_currency_and_quarter_hour(ledger: AnyLedger) -> None:
    t0 = 1_800_000_000_000_000 // QUARTER * QUARTER  # a quarter-hour boundary
    await ledger.record(usage("a", 10, at_us=t0))
    await ledger.record(usage("b", 20, at_us=t0 + QUARTER - 1))
    await ledger.record(usage("c", 40, at_us=t0 + QUARTER))
    await ledger.record(usage("d", 80, at_us=t0, tenant="globex"))
    await ledger.record(replace(usage("e", 160, at_us=t0), estimated=True, model="m-b"))
    plain = await ledger.usage_groups()
    assert {(g.tenant, g.model, g.quarter_us, g.requests, g.cost_micros) for g in plain} == {
        ("acme", "m-a", None, 3, 70), ("globex", "m-a", None, 1, 80), ("acme", "m-b", None, 1, 160),
    }  # fmt: skip
    timed = await ledger.usage_groups(tenant="acme", model="m-a", by_time=True)
    assert sorted((g.quarter_us, g.requests, g.cost_micros) for g in timed) == [
        (t0, 2, 30), (t0 + QUARTER, 1, 40),
    ]  # fmt: skip
    (est,) = await ledger.usage_groups(model="m-b")
    assert est.estimated_requests == 1 and est.input_tokens == 10 and est.output_tokens == 20
    (late,) = await ledger.usage_groups(start_us=t0 + 1, end_us=t0 + QUARTER)
    assert (late.requests, late.cost_micros) == (1, 20)
    # simulated calls of the same tenant and model are a group of their own
    await ledger.record(replace(usage("f", 320, at_us=t0), simulated=True))
    both = await ledger.usage_groups(tenant="acme", model="m-a")
    assert sorted((g.simulated, g.requests, g.cost_micros) for g in both) == [
        (False, 3, 70), (True, 1, 320),
    ]  # fmt: skip
