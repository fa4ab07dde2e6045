"""The cost service's domain, between the servicer (protos) and the ledger (storage): prices
calls, records them, holds and reports budgets, and tells watchers when a tenant's budgets
may have changed. No gRPC here.

Which tenants exist is the API keys' business (:mod:`quorum.auth`): with keys on, a budget
set, a budget status or watch, a usage summary or report that names a tenant no key belongs
to is NotFound (``TENANT_NOT_FOUND``, the field named) before anything is read or written.
Usage records and reservations are taken for any tenant all the same (a call that was made
is billed, whatever became of its keys), and deleting a budget needs only the budget (one
set while keys were off can be removed). With keys off, any tenant name is taken."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from quorum.backends.types import TokenUsage
from quorum.errors import NotFound, QuorumError, ResourceExhausted
from quorum.pricing import Cost
from quorum.registry import Registry
from services.cost import prices
from services.cost.accounts import Convert, Held, Reservation
from services.cost.budgets import (
    Budget,
    Status,
    check_budget,
    newly_reached,
    status,
    zone,
)
from services.cost.ledger import Ledger, LedgerEntry, Recorded, Summary, ToRecord, now_us
from services.cost.reports import Report, needs_time, split

log = logging.getLogger(__name__)

DEFAULT_TTL_US = 600 * 1_000_000
MAX_TTL_US = 86_400 * 1_000_000
#: how often a watcher looks again when nothing in this process said a budget changed (other
#: replicas write to the same ledger), and the least time between two looks
WATCH_POLL_S = 2.0
WATCH_MIN_INTERVAL_S = 0.2
MAX_WATCHERS = 256
#: how often reservations closed long ago are dropped
PURGE_EVERY_US = 3_600 * 1_000_000

#: whether a tenant exists (some API key belongs to it); None: keys are off, any tenant does
Tenants = Callable[[str], bool]


@dataclass(frozen=True)
class Call:
    """One model call to record, before pricing."""

    request_id: str
    tenant: str
    model: str
    source: str
    usage: TokenUsage
    occurred_at_us: int
    estimated: bool = False
    #: answered by a simulated model: recorded apart from real spend
    simulated: bool = False


class Spending:
    def __init__(
        self,
        registry: Registry,
        ledger: Ledger,
        *,
        convert: Convert | None = None,
        clock: Callable[[], int] = now_us,
        watch_poll_s: float = WATCH_POLL_S,
        tenants: Tenants | None = None,
    ) -> None:
        self._registry = registry
        self._ledger = ledger
        self._tenants = tenants
        # budgets count costs in other currencies at the official rates of the day
        self._convert = convert or registry.rates.convert
        self._clock = clock
        self._watch_poll_s = watch_poll_s
        self._changed = asyncio.Condition()
        self._version = 0
        self._watchers = 0
        self._purged_at = clock()
        self._purging: asyncio.Task[None] | None = None

    def known_tenant(self, tenant: str, field: str) -> str:
        """``tenant`` when requests may name it (see the module docstring); NotFound
        (TENANT_NOT_FOUND) naming ``field`` otherwise."""
        if self._tenants is not None and not self._tenants(tenant):
            raise NotFound(
                f"{field}: no tenant {tenant!r} (no API key belongs to it)",
                reason="TENANT_NOT_FOUND",
                metadata={"field": field, "tenant": tenant},
            )
        return tenant

    def price(self, model: str, usage: TokenUsage, at_us: int) -> tuple[str, Cost]:
        """The registry name of ``model`` (NotFound MODEL_NOT_FOUND) and what ``usage`` costs
        at ``at_us``, in the model's billing currency (FailedPrecondition PRICE_NOT_FOUND when
        no price was in effect then, NO_EXCHANGE_RATE when it cannot be converted)."""
        name, bill = prices.price_call(self._registry, model, usage, at_us)
        return name, bill.cost

    def entry(self, call: Call) -> LedgerEntry:
        """``call`` priced at its time, as the ledger stores it, with what it would have cost
        at the official exchange rate of that time (None when no official rate converts the
        pair then); NotFound MODEL_NOT_FOUND, FailedPrecondition PRICE_NOT_FOUND or
        NO_EXCHANGE_RATE."""
        at = call.occurred_at_us
        name, bill = prices.price_call(self._registry, call.model, call.usage, at)
        cost = bill.cost
        official = prices.official(self._registry.rates, bill, at)
        return LedgerEntry(
            request_id=call.request_id,
            model=name,
            source=call.source,
            input_tokens=call.usage.input_tokens,
            output_tokens=call.usage.output_tokens,
            cost_micros=cost.micros,
            currency=cost.currency,
            occurred_at_us=call.occurred_at_us,
            estimated=call.estimated,
            tenant=call.tenant,
            cached_input_tokens=call.usage.cached_input_tokens,
            official_cost_micros=None if official is None else official[0].micros,
            simulated=call.simulated,
        )

    async def record(self, call: Call, reservation_id: str = "") -> Recorded:
        entry = self.entry(call)
        if reservation_id:
            recorded = await self._ledger.commit(entry, reservation_id)
        else:
            recorded = await self._ledger.record(entry)
        if not recorded.duplicate:
            await self._touch()
        return recorded

    async def record_many(self, calls: Sequence[tuple[Call, str]]) -> list[Recorded | QuorumError]:
        """:meth:`record` of each call (with the reservation it commits, "" for none), in
        order: one result per call, or the error that call alone failed with (a model the
        registry does not know, no price, or what the ledger's ``record_many`` answers for it)."""
        priced: list[ToRecord] = []
        out: list[Recorded | QuorumError | None] = []
        for call, reservation_id in calls:
            try:
                priced.append((self.entry(call), reservation_id))
                out.append(None)
            except QuorumError as e:
                out.append(e)
        stored = iter(await self._ledger.record_many(priced) if priced else [])
        results = [r if r is not None else next(stored) for r in out]
        if any(isinstance(r, Recorded) and not r.duplicate for r in results):
            await self._touch()
        return results

    async def reserve(
        self,
        request_id: str,
        tenant: str,
        model: str,
        usage: TokenUsage,
        ttl_us: int = DEFAULT_TTL_US,
    ) -> Reservation:
        name, most = self.price(model, usage, self._clock())
        reservation = await self._ledger.reserve(
            request_id,
            tenant,
            name,
            most.micros,
            most.currency,
            ttl_us=ttl_us,
            convert=self._convert,
        )
        await self._touch()
        if self._clock() - self._purged_at > PURGE_EVERY_US and self._purging is None:
            self._purged_at = self._clock()
            self._purging = asyncio.create_task(self._purge(), name="purge-reservations")
        return reservation

    async def _purge(self) -> None:
        try:
            dropped = await self._ledger.purge()
            log.info("dropped %d reservations closed or expired long ago", dropped)
        except Exception as e:  # the next one tries again; nothing depends on it
            log.warning("could not drop old reservations: %s", e)
        finally:
            self._purging = None

    async def release(self, reservation_id: str) -> Reservation:
        released = await self._ledger.release(reservation_id)
        await self._touch()
        return released

    async def set_budget(self, budget: Budget) -> Status:
        """Create or replace ``budget``; InvalidArgument naming the field, before anything is
        written, when a value is out of range or the budget's currency cannot count every call
        it covers (:func:`prices.check_budget_currency`), and NotFound (TENANT_NOT_FOUND, field
        ``budget.tenant``) when its tenant is unknown."""
        budget = check_budget(budget)
        prices.check_budget_currency(self._registry, budget.currency, budget.model, self._clock())
        self.known_tenant(budget.tenant, "budget.tenant")
        await self._ledger.set_budget(budget)
        await self._touch()
        (found,) = [s for s in await self._statuses(budget.tenant) if s.budget == budget]
        return found

    async def delete_budget(self, tenant: str, model: str) -> None:
        await self._ledger.delete_budget(tenant, model)
        await self._touch()

    async def report(
        self,
        *,
        start_us: int | None,
        end_us: int,
        tenant: str | None,
        model: str | None,
        by: str,
        time_zone: str,
    ) -> Report:
        """The usage grouped ``by`` model, tenant, day or month: real calls' rows, and the
        simulated calls' apart."""
        zone(time_zone)  # InvalidArgument before any query
        if tenant is not None:
            self.known_tenant(tenant, "tenant")
        groups = await self._ledger.usage_groups(
            start_us=start_us, end_us=end_us, tenant=tenant, model=model, by_time=needs_time(by)
        )
        return split(groups, by, time_zone)

    async def summary(
        self, *, start_us: int | None, end_us: int, model: str | None, tenant: str | None
    ) -> Summary:
        """The usage in ``[start_us, end_us)``, of one model and one tenant when given."""
        if tenant is not None:
            self.known_tenant(tenant, "tenant")
        return await self._ledger.summary(
            start_us=start_us, end_us=end_us, model=model, tenant=tenant
        )

    async def statuses(self, tenant: str | None) -> list[Status]:
        """The status of ``tenant``'s budgets (every tenant's when None), in key order."""
        if tenant is not None:
            self.known_tenant(tenant, "tenant")
        return await self._statuses(tenant)

    async def _statuses(self, tenant: str | None) -> list[Status]:
        now = self._clock()
        return [self._status(h, now) for h in await self._ledger.budget_holds(tenant)]

    def _status(self, held: Held, now: int) -> Status:
        b = held.budget

        def total(amounts: dict[str, int]) -> int:
            return sum(
                m if c == b.currency else self._convert(m, c, b.currency, now)
                for c, m in amounts.items()
            )

        return status(b, total(held.spent), total(held.reserved), now)

    async def watch(self, tenant: str) -> AsyncIterator[tuple[Status, tuple[float, ...]]]:
        """Each budget of ``tenant`` now, then each one again when it changed, with the
        thresholds the change reached. Runs until the caller stops iterating."""
        self.known_tenant(tenant, "tenant")
        if self._watchers >= MAX_WATCHERS:
            raise ResourceExhausted(
                f"too many budget watchers (at most {MAX_WATCHERS})", reason="TOO_MANY_WATCHERS"
            )
        self._watchers += 1
        try:
            sent: dict[tuple[str, str], Status] = {}
            while True:
                seen = self._version
                for s in await self._statuses(tenant):
                    key = (s.budget.tenant, s.budget.model)
                    before = sent.get(key)
                    if before is not None and _same(before, s):
                        continue
                    sent[key] = s
                    reached = () if before is None else newly_reached(before.reached(), s)
                    if reached:
                        log.warning(
                            "budget of tenant %s%s reached %s of its limit",
                            s.budget.tenant,
                            f" model {s.budget.model}" if s.budget.model else "",
                            ", ".join(f"{t:.0%}" for t in reached),
                        )
                    yield s, reached
                await asyncio.sleep(WATCH_MIN_INTERVAL_S)
                await self._changed_since(seen)
        finally:
            self._watchers -= 1

    async def _changed_since(self, version: int) -> None:
        """Return once something was written after ``version``, or after the poll interval."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._version != version),
                    self._watch_poll_s,
                )

    async def _touch(self) -> None:
        async with self._changed:
            self._version += 1
            self._changed.notify_all()


def _same(a: Status, b: Status) -> bool:
    return (a.budget, a.spent_micros, a.reserved_micros, a.period_start_us) == (
        b.budget,
        b.spent_micros,
        b.reserved_micros,
        b.period_start_us,
    )
