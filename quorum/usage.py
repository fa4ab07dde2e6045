"""Usage that is never lost and never counted twice: the one place that decides when and how
a model call is recorded.

Every billable model call goes through the service's :class:`Meter`:

1. ``charge = await meter.begin(key, model, input_tokens=..., max_output_tokens=...)`` before
   the provider is asked. An *intent* is appended to the service's usage journal first, so a
   process that dies during the call still bills it: written to the operating system before
   the call (it survives the process being killed) and made durable on disk (fsync,
   group-committed with the other calls in flight) in the background within milliseconds;
   with ``[usage] fsync_before_call`` the call waits for that fsync too (it then survives a
   power loss at any moment, for about a millisecond a call). When the backlog of records
   the cost service has not taken is over its bounds, ``begin`` refuses the call with
   ``UNAVAILABLE`` (``USAGE_BACKLOG_FULL``): no paid call is made that could not be recorded.
2. ``charge.settle(input_tokens, output_tokens, estimated=...)`` as soon as the provider has
   answered, before anything else can fail (output moderation, the client going away), or
   ``charge.void()`` when the provider answered with an error and bills nothing. Both are
   plain (not ``async``) calls, safe in a ``finally`` of a cancelled task or a closed
   generator; only the first of them counts. A call made to a backend that chose the model
   itself (the ``routed_chat`` ensemble) is settled as the model that answered
   (``settle(..., model=...)``): its record names that model, and the reservation made for
   the model asked is given back (the record is recorded without it).
3. A background sender gives every settled record to the cost service (idempotent on its
   key), up to ``send_batch_records`` of them in one ``RecordUsageBatch`` call, and notes in
   the journal once each is taken. Each record's own answer counts: taken, refused for good
   (kept aside, see below), or not now (the cost service is down or busy: sent again later).
   A cost service without ``RecordUsageBatch`` (an older one) is sent the records one by one
   with ``RecordUsage``, ``send_concurrency`` at a time.
   ``await charge.recorded(timeout)`` waits for that, and answers at once while the cost
   service is known to be down.

At start the journal is read back: records not yet taken are sent again, and intents never
settled (the process died during the call) are billed as estimates: the input figure noted
before the call (a cheap one: counting tokens exactly costs milliseconds, and is done only
when a live call must be estimated) and the most output the call allowed, marked
``estimated``.

The journal is append-only JSON lines (``begin``, ``usage``, ``void``, ``sent`` entries),
written in the order they happen on the event loop's thread (one buffered write each); one
writer task fsyncs them off the request path; when it grows past ``compact_bytes`` it is
rewritten with only the live entries and renamed into place. One process owns a journal (an
exclusive ``flock``). Records the cost service refuses for good (e.g. a model it does not
know) are kept in ``<journal>.rejected.jsonl`` for a person, never re-sent and never dropped.

A call answered by a simulated model (the provider simulator standing in for a model with no
API key) goes the same way, its records marked ``simulated`` from the intent on: the cost
service keeps it apart from real spend, and it is never reserved against a budget (no money is
at stake).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from quorum import config, errors, tokens
from quorum.backends.types import TokenUsage
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.grpcerrors import from_rpc_error, from_rpc_status
from quorum.ids import DEFAULT_TENANT
from quorum.registry import ConfigError

log = logging.getLogger(__name__)

#: the longest request id the cost service takes (its RecordUsage limit)
MAX_KEY_CHARS = 128
#: the most records one RecordUsageBatch call takes (the cost service refuses more)
MAX_BATCH_RECORDS = 1000
#: background Release calls at once; past this a voided call's reservation just expires
MAX_RELEASES_IN_FLIGHT = 64
MAX_UNBUDGETED_CACHED = 10_000
#: a lease's share goes only to a call that ends (its deadline) this long before the lease does
LEASE_MARGIN_S = 5.0


def usage_key(*parts: str) -> str:
    """The ledger key of one model call: the parts joined by ":" (e.g. request id, step,
    call id). A key longer than the ledger takes is shortened deterministically (a prefix
    plus a hash of the whole), so a re-sent record still lands on the same key."""
    key = ":".join(parts)
    if len(key) <= MAX_KEY_CHARS:
        return key
    suffix = "~sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
    return key[: MAX_KEY_CHARS - len(suffix)] + suffix


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class UsageRecord:
    """One model call as the cost service takes it (the cost service prices it)."""

    request_id: str
    model: str
    input_tokens: int
    output_tokens: int
    source: str
    occurred_at_us: int
    #: the tokens were counted by us, not reported by the provider
    estimated: bool = False
    #: whose call it was (the budgets it counts against)
    tenant: str = DEFAULT_TENANT
    #: the budget reservation made before the call ("" when none): recording commits it
    reservation_id: str = ""
    #: the part of ``input_tokens`` the provider served from its prompt cache
    cached_input_tokens: int = 0
    #: answered by a simulated model: recorded apart from real spend, never reserved
    simulated: bool = False

    def to_proto(self) -> cost_pb2.RecordUsageRequest:
        ts = timestamp_pb2.Timestamp()
        ts.FromMicroseconds(self.occurred_at_us)
        return cost_pb2.RecordUsageRequest(
            request_id=self.request_id,
            model=self.model,
            usage=common_pb2.Usage(
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                cached_input_tokens=self.cached_input_tokens,
            ),
            source=self.source,
            occurred_at=ts,
            estimated=self.estimated,
            tenant=self.tenant,
            reservation_id=self.reservation_id,
            simulated=self.simulated,
        )


@dataclass(frozen=True)
class Budgeted:
    """What a call's budget reservation needs: the most it may cost, and how long it may take
    (``hold_s``: its deadline)."""

    input_tokens: int
    max_output_tokens: int
    hold_s: float


@dataclass(frozen=True)
class MeterSettings:
    """Bounds and timings of a :class:`Meter` (``[usage]`` in the configuration)."""

    #: records not yet taken by the cost service; at this many, new paid calls are refused
    max_backlog_records: int = 100_000
    #: the same when the oldest such record is older than this
    max_backlog_age_s: float = 86_400.0
    #: how long a call waits for the cost service to take its record before answering
    #: (the record is durable either way; the answer then says it is queued)
    record_wait_s: float = 0.0
    #: whether a call waits for its intent to be fsynced before the provider is asked
    #: (otherwise it is written to the OS first and fsynced in the background)
    fsync_before_call: bool = False
    #: records sent in one RecordUsageBatch call (at most MAX_BATCH_RECORDS)
    send_batch_records: int = 500
    #: RecordUsage calls in flight at once, to a cost service without RecordUsageBatch
    send_concurrency: int = 8
    #: how long the sender waits after a record is settled for more to send with it
    send_linger_s: float = 0.02
    send_timeout_s: float = 2.0
    #: pause between attempts while the cost service is down
    retry_interval_s: float = 2.0
    #: the journal is compacted when it grows past this many bytes
    compact_bytes: int = 8 * 1024 * 1024
    #: reserve the most a budgeted call may cost with the cost service before making it
    reserve: bool = True
    reserve_timeout_s: float = 1.0
    #: when the cost service cannot be asked: "allow" the call (unreserved; a hard budget
    #: may then be passed) or "refuse" it (UNAVAILABLE, BUDGET_UNAVAILABLE)
    on_budget_unavailable: str = "allow"
    #: a reservation outlives its call's deadline by this much before it expires
    reservation_margin_s: float = 60.0
    #: a tenant and model no budget covered are not asked about again for this long (a new
    #: budget takes hold within it)
    unbudgeted_cache_s: float = 5.0
    #: budget leases: reserve this many calls' most at once for a tenant and model, and take
    #: each call's share from it here (0: one Reserve per call)
    lease_calls: int = 0
    #: a lease gives out shares for this long; then (or once used up) it is given back as
    #: soon as its calls have settled
    lease_s: float = 10.0

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> MeterSettings:
        u = config.section(data, "usage")
        w = "usage"
        return cls(
            max_backlog_records=config.get_int(u, "max_backlog_records", w, minimum=1),
            max_backlog_age_s=config.get_float(u, "max_backlog_age_s", w, minimum=1.0),
            record_wait_s=config.get_float(u, "record_wait_s", w),
            fsync_before_call=config.get_bool(u, "fsync_before_call", w),
            send_batch_records=_batch_records(u, w),
            send_concurrency=config.get_int(u, "send_concurrency", w, minimum=1),
            send_linger_s=config.get_float(u, "send_linger_s", w),
            send_timeout_s=config.get_float(u, "send_timeout_s", w, minimum=0.01),
            retry_interval_s=config.get_float(u, "retry_interval_s", w, minimum=0.01),
            compact_bytes=config.get_int(u, "compact_bytes", w, minimum=4096),
            reserve=config.get_bool(u, "reserve", w),
            reserve_timeout_s=config.get_float(u, "reserve_timeout_s", w, minimum=0.01),
            on_budget_unavailable=config.get_choice(
                u, "on_budget_unavailable", w, ("allow", "refuse")
            ),
            reservation_margin_s=config.get_float(u, "reservation_margin_s", w, minimum=1.0),
            unbudgeted_cache_s=config.get_float(u, "unbudgeted_cache_s", w),
            lease_calls=config.get_int(u, "lease_calls", w, minimum=0),
            lease_s=config.get_float(u, "lease_s", w, minimum=0.1),
        )


def _batch_records(table: Mapping[str, Any], where: str) -> int:
    n = config.get_int(table, "send_batch_records", where, minimum=1)
    if n > MAX_BATCH_RECORDS:
        raise ConfigError(
            f"{where}.send_batch_records: at most {MAX_BATCH_RECORDS} (what one "
            "RecordUsageBatch call takes)"
        )
    return n


# --- the journal file ------------------------------------------------------------------------


def _line(op: str, rec: UsageRecord | None = None, key: str = "") -> str:
    body: dict[str, Any] = {"op": op}
    if rec is not None:
        body.update(vars(rec))  # its fields, all scalars (asdict would deep-copy each)
    else:
        body["request_id"] = key
    return json.dumps(body, separators=(",", ":")) + "\n"


def replay(path: Path) -> tuple[dict[str, UsageRecord], dict[str, UsageRecord]]:
    """Read a journal back: (intents never settled, settled records not yet taken), each in
    journal order. Unreadable lines (a torn last write) are skipped and logged."""
    intents: dict[str, UsageRecord] = {}
    pending: dict[str, UsageRecord] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return intents, pending
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            op = obj.pop("op")
            if op in ("begin", "usage"):
                rec = UsageRecord(**obj)
                intents.pop(rec.request_id, None)
                (intents if op == "begin" else pending)[rec.request_id] = rec
            elif op == "void":
                intents.pop(str(obj["request_id"]), None)
            elif op == "sent":
                pending.pop(str(obj["request_id"]), None)
            else:
                raise ValueError(op)
        except (ValueError, TypeError, KeyError):
            log.error("skipping unreadable line %d of the usage journal %s", n, path)
    return intents, pending


class _JournalFile:
    """The open journal: exclusive to this process, appended to, compacted by rename.

    ``write`` runs on the event loop's thread (a buffered write handed to the OS); ``sync``
    and ``compact`` on a worker thread, ``compact`` while nothing is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[str] = path.open("a", encoding="utf-8")
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._f.close()
            raise ConfigError(
                f"the usage journal {path} is in use by another process "
                "(give each service process its own QUORUM_DATA_DIR)"
            ) from None
        self.size = path.stat().st_size

    def write(self, data: str) -> None:
        self._f.write(data)
        self._f.flush()
        self.size += len(data.encode("utf-8"))

    def sync(self) -> None:
        os.fsync(self._f.fileno())

    def compact(self, lines: list[str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        new = tmp.open("a", encoding="utf-8")
        fcntl.flock(new.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        tmp.replace(self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        old, self._f = self._f, new
        old.close()
        self.size = self.path.stat().st_size

    def close(self) -> None:
        self._f.close()


def _journal_unwritable() -> errors.Unavailable:
    return errors.Unavailable(
        "usage cannot be recorded (the usage journal is not writable)",
        reason="USAGE_UNAVAILABLE",
    )


def _append_rejected(path: Path, recs: list[UsageRecord]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for rec in recs:
            f.write(json.dumps(asdict(rec), separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _refused(err: errors.QuorumError) -> bool:
    """A refusal for good, as opposed to the cost service being down or slow."""
    return not isinstance(
        err, errors.Unavailable | errors.DeadlineExceeded | errors.ResourceExhausted
    )


def may_be_billed(err: BaseException | None) -> bool:
    """Whether a call that failed may still be billed by its provider: the provider had the
    request and may have worked on it (we stopped waiting, the caller went away, or a 200
    answer broke off or could not be read). An error status (4xx, 5xx, 429), a connection
    that never opened, or a call never sent bills nothing."""
    if not isinstance(err, errors.QuorumError):
        return True  # cancelled or closed while the provider had the request
    if err.metadata.get("http_status") == "200":
        return True
    return isinstance(err, errors.DeadlineExceeded) and err.reason == "PROVIDER_TIMEOUT"


class _NoBatchCall(Exception):
    """The cost service does not know RecordUsageBatch."""


#: a record the cost service's answer said nothing about: sent again later
_NO_ANSWER = errors.Unavailable(
    "cost: the answer held no result for this record", reason="COST_UNAVAILABLE"
)


def _raise_if_cancelling() -> None:
    """grpc turns our own cancellation into a CANCELLED status: keep it a cancel."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _without_reservation(rec: UsageRecord, err: errors.QuorumError) -> None:
    log.warning(
        "usage record %s: its reservation could not be committed (%s); recorded without it",
        rec.request_id, err.reason,
    )  # fmt: skip


# --- budget leases ---------------------------------------------------------------------------


@dataclass
class _Lease:
    """A reservation of several calls' most for one tenant and model: input and output tokens,
    each a stock the calls' shares are taken from. Prices are never below zero, so calls whose
    tokens fit in the lease cost at most what the cost service reserved for it."""

    reservation_id: str
    input_left: int
    output_left: int
    #: monotonic: no share is given after this
    carve_until: float
    #: monotonic: when the cost service lets the reservation go
    expires_at: float
    open: int = 0  # shares given whose calls have not settled
    retired: bool = False  # no more shares; given back once ``open`` is 0

    def carve(self, budget: Budgeted, now: float) -> bool:
        """Take one call's share (False: it does not fit, or the lease is too old for it)."""
        if (
            self.retired
            or now > self.carve_until
            or now + budget.hold_s + LEASE_MARGIN_S > self.expires_at
            or budget.input_tokens > self.input_left
            or budget.max_output_tokens > self.output_left
        ):
            return False
        self.input_left -= budget.input_tokens
        self.output_left -= budget.max_output_tokens
        self.open += 1
        return True


#: what a lease request gets when no budget covers the calls
_NO_BUDGET = _Lease("", 0, 0, 0.0, 0.0, retired=True)


# --- the meter ------------------------------------------------------------------------------


class Charge:
    """One model call's usage, from its intent to its record (see the module docstring)."""

    def __init__(
        self, meter: Meter, intent: UsageRecord, count_input: Callable[[], int] | None = None
    ) -> None:
        self._meter = meter
        self.intent = intent
        self._count_input = count_input
        self.record: UsageRecord | None = None
        self.done = False

    @property
    def key(self) -> str:
        return self.intent.request_id

    def settle(
        self,
        input_tokens: int,
        output_tokens: int,
        *,
        estimated: bool = False,
        cached_input_tokens: int = 0,
        model: str = "",
    ) -> None:
        """Bill the call (the first settle or void wins; later ones do nothing).
        ``cached_input_tokens`` is the part of the input served from the provider's prompt
        cache (at most ``input_tokens``). ``model``, when it is not the one the call was begun
        for, is the model that answered (a routing backend chose it): the record names it, and
        the reservation, made for the other model, is released (the cost service commits a
        reservation only with a record of its own model)."""
        if self.done:
            return
        self.done = True
        input_tokens = max(int(input_tokens), 0)
        record = replace(
            self.intent,
            input_tokens=input_tokens,
            output_tokens=max(int(output_tokens), 0),
            cached_input_tokens=min(max(int(cached_input_tokens), 0), input_tokens),
            occurred_at_us=now_us(),
            estimated=estimated,
        )
        if model and model != self.intent.model:
            record = replace(record, model=model, reservation_id="")
            if self.intent.reservation_id:
                self._meter._release(self.intent.reservation_id)
        self.record = record
        self._meter._settled(record)

    def answered(self, usage: TokenUsage, *, reported: bool, text: str, model: str = "") -> None:
        """Bill a whole answer: the provider's counts, or ours (estimated) when it sent none;
        ``model`` as for :meth:`settle`."""
        if reported:
            self.settle(
                usage.input_tokens,
                usage.output_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                model=model,
            )
        else:
            self.settle(self._input_tokens(), tokens.count(text), estimated=True, model=model)

    def failed(self, err: BaseException | None, *, partial_text: str = "") -> None:
        """Bill a call that ended without a whole answer, by :func:`may_be_billed`: the input
        and the output seen so far, estimated; or nothing."""
        if partial_text or may_be_billed(err):
            self.settle(self._input_tokens(), tokens.count(partial_text), estimated=True)
        else:
            self.void()

    def _input_tokens(self) -> int:
        """The input counted now, when the call can say how (only estimates need it)."""
        return self._count_input() if self._count_input else self.intent.input_tokens

    def void(self) -> None:
        """The provider billed nothing (it answered with an error before any work)."""
        if self.done:
            return
        self.done = True
        self._meter._voided(self.key)

    async def recorded(self, timeout_s: float) -> bool:
        """Whether the cost service has taken the record, waiting up to ``timeout_s``."""
        if self.record is None:
            return False
        return await self._meter._wait_taken(self.key, timeout_s)


class Meter:
    """A service's usage journal and its sender to the cost service."""

    def __init__(
        self,
        stub: cost_pb2_grpc.CostServiceStub,
        journal: Path,
        *,
        source: str,
        settings: MeterSettings | None = None,
        on_settled: Callable[[UsageRecord], None] | None = None,
    ) -> None:
        self._stub = stub
        #: told of each record as it is settled (metrics); what it raises is logged, never
        #: passed on: billing does not depend on it
        self._on_settled = on_settled
        self.path = journal
        self.rejected_path = journal.with_name(journal.stem + ".rejected.jsonl")
        self._source = source
        self._s = settings or MeterSettings()
        self._file: _JournalFile | None = None
        self._open: dict[str, UsageRecord] = {}
        self._pending: dict[str, UsageRecord] = {}
        self._waiters: dict[str, list[asyncio.Future[bool]]] = {}
        self._taken: dict[str, bool] = {}  # recently settled keys → taken (True) or refused
        #: calls waiting for what was written so far to be on disk
        self._syncing: list[asyncio.Future[None]] = []
        #: lines noted while the journal is being compacted, written after it
        self._held: list[str] | None = None
        self._write_failed = False  # since the last fsync
        self._compact_at = 0
        self._queued = asyncio.Event()
        self._wake = asyncio.Event()
        self._down = False
        self._one_by_one = False  # the cost service has no RecordUsageBatch
        self._tasks: list[asyncio.Task[None]] = []
        self._releases: set[asyncio.Task[None]] = set()
        self._unbudgeted: dict[tuple[str, str], float] = {}
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._leasing: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._carved: dict[str, _Lease] = {}  # a call's key: the lease its share came from
        self._closing = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the journal (exclusively), recover it, start the writer and the sender."""
        self._file = await asyncio.to_thread(_JournalFile, self.path)
        intents, pending = await asyncio.to_thread(replay, self.path)
        for rec in intents.values():
            log.warning(
                "usage of call %s (%s) was never settled: the process stopped during the "
                "call; billing an estimate (%d input, at most %d output tokens)",
                rec.request_id, rec.model, rec.input_tokens, rec.output_tokens,
            )  # fmt: skip
        self._pending = {**pending, **intents}
        await asyncio.to_thread(
            self._file.compact, [_line("usage", r) for r in self._pending.values()]
        )
        if self._pending:
            log.info(
                "%d usage records from the journal wait for the cost service", len(self._pending)
            )
        self._compact_at = max(self._s.compact_bytes, 2 * self._file.size)
        self._tasks = [
            asyncio.create_task(self._writer(), name="usage-journal"),
            asyncio.create_task(self._sender(), name="usage-sender"),
        ]
        self._wake.set()

    async def stop(self, drain_s: float = 1.0) -> None:
        """Give the sender up to ``drain_s`` to hand over what is waiting, write the journal's
        last entries and close it. What is still waiting is sent after the next start."""
        if not self._tasks:
            return
        self._closing = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_s):
                while self._pending and not self._down:
                    self._wake.set()
                    await asyncio.sleep(0.02)
        writer, sender = self._tasks
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(sender, 5.0)
        with contextlib.suppress(errors.QuorumError):
            await self.sync()
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        for lease in list(self._leases.values()):
            self._retire(lease)  # those with calls still open expire
        self._leases.clear()
        if self._releases:  # best effort: a reservation not released expires
            await asyncio.wait(self._releases, timeout=self._s.reserve_timeout_s)
        self._tasks = []
        if self._file is not None:
            self._file.close()
            self._file = None

    async def sync(self) -> None:
        """Wait until everything noted so far is on disk."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue("", done)  # written after everything queued before it
        await done

    @property
    def source(self) -> str:
        return self._source

    @property
    def backlog(self) -> int:
        """Records the cost service has not taken yet."""
        return len(self._pending)

    # -- the request path ------------------------------------------------------------------------

    async def begin(
        self,
        key: str,
        model: str,
        *,
        input_tokens: int,
        max_output_tokens: int,
        count_input: Callable[[], int] | None = None,
        tenant: str = DEFAULT_TENANT,
        budget: Budgeted | None = None,
        simulated: bool = False,
    ) -> Charge:
        """Note a call before it is made (durably); raises Unavailable when the backlog is
        full or the journal cannot be written. ``input_tokens`` may be a cheap figure (it is
        billed only after a crash); ``count_input``, when given, counts the input exactly,
        and is called only when the call has to be billed as an estimate.

        With ``budget`` (and ``[usage] reserve`` on), the most the call may cost is first
        reserved against ``tenant``'s budgets: a hard budget that cannot hold it raises
        ResourceExhausted (BUDGET_EXCEEDED) and nothing is noted. The record commits the
        reservation; a call voided releases it.

        A ``simulated`` call (a simulated model answers it) is recorded marked so and never
        reserved: it spends nothing, and budgets do not count it."""
        if self._file is None or self._closing:
            raise errors.Unavailable("usage recording is not running", reason="USAGE_UNAVAILABLE")
        self._check_backlog()
        intent = UsageRecord(
            request_id=key,
            model=model,
            input_tokens=input_tokens,
            output_tokens=max_output_tokens,
            source=self._source,
            occurred_at_us=now_us(),
            estimated=True,
            tenant=tenant,
            simulated=simulated,
        )
        # the reservation is asked for while the intent is made durable; the intent does not
        # name it (after a crash the call is billed without it, and the reservation expires)
        reserving = None
        if budget is not None and self._s.reserve and not simulated:
            if not self._carve(key, tenant, model, budget):  # a share of a lease: no round trip
                reserving = asyncio.ensure_future(self._hold(key, tenant, model, budget))
        self._open[key] = intent
        # written to the OS now (a killed process still bills the call); waited for on disk
        # only when so configured, or when the journal is being compacted
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_line("begin", intent), done)
        if not self._s.fsync_before_call and self._held is None and not done.done():
            done.cancel()  # the background fsync still covers it
        try:
            if not done.cancelled():
                await asyncio.shield(done)
        except errors.QuorumError:
            self._open.pop(key, None)
            self._uncarve(key)
            if reserving is not None:
                reserving.add_done_callback(self._release_when_reserved)
            raise
        if reserving is not None:
            try:
                reservation_id = await reserving
            except BaseException:
                self._voided(key)  # no call is made: the intent bills nothing
                raise
            if reservation_id:
                intent = replace(intent, reservation_id=reservation_id)
                self._open[key] = intent
        return Charge(self, intent, count_input)

    def _release_when_reserved(self, reserving: asyncio.Future[str]) -> None:
        if not reserving.cancelled() and reserving.exception() is None and reserving.result():
            self._release(reserving.result())

    # -- budget leases ---------------------------------------------------------------------------

    def _carve(self, key: str, tenant: str, model: str, budget: Budgeted) -> bool:
        """Give the call a share of its tenant and model's lease, if one is live and has room
        (a lease that has none, or is too old, is retired)."""
        lease = self._leases.get((tenant, model)) if self._s.lease_calls else None
        if lease is None:
            return False
        if not lease.carve(budget, time.monotonic()):
            del self._leases[(tenant, model)]
            self._retire(lease)
            return False
        self._carved[key] = lease
        return True

    async def _hold(self, key: str, tenant: str, model: str, budget: Budgeted) -> str:
        """A share of a new lease ("") or, when none can be had, the call's own reservation
        (:meth:`_reserve`, which also says whether the budget holds it)."""
        if self._s.lease_calls:
            leased = await self._lease(tenant, model, budget)
            if leased is None:
                return ""  # no budget covers the call: nothing to hold
            if leased and self._carve(key, tenant, model, budget):
                return ""
        return await self._reserve(key, tenant, model, budget)

    async def _lease(self, tenant: str, model: str, budget: Budgeted) -> bool | None:
        """Make sure a lease is live for ``tenant`` and ``model`` (one request for it at a
        time: the calls that come meanwhile wait for it); None when no budget covers the
        calls, False when none could be had (the budget cannot hold a lease, the cost service
        is down)."""
        at = (tenant, model)
        if self._unbudgeted.get(at, 0.0) > time.monotonic():
            return None
        asked = self._leasing.get(at)
        if asked is not None:
            await asyncio.shield(asked)
            return at in self._leases
        asked = asyncio.get_running_loop().create_future()
        self._leasing[at] = asked
        try:
            lease = await self._ask_lease(tenant, model, budget)
            if lease is _NO_BUDGET:
                return None
            if lease is not None:
                self._leases[at] = lease
                # given back when its time is up even if no call comes to notice it
                asyncio.get_running_loop().call_later(self._s.lease_s, self._lease_ended, at, lease)
            return lease is not None
        finally:
            del self._leasing[at]
            asked.set_result(None)

    async def _ask_lease(self, tenant: str, model: str, budget: Budgeted) -> _Lease | None:
        """A new lease; None when none could be had, ``_NO_BUDGET`` when no budget covers
        the calls."""
        n, s = self._s.lease_calls, self._s
        # it must outlive the calls it gives shares to: those that end (by their deadline) in
        # time get one, the others reserve for themselves
        ttl_s = s.lease_s + max(budget.hold_s, 60.0) + s.reservation_margin_s
        ttl = duration_pb2.Duration()
        ttl.FromMilliseconds(int(min(ttl_s, 86_400) * 1000))
        request = cost_pb2.ReserveRequest(
            request_id="lease_" + uuid.uuid4().hex,
            tenant=tenant,
            model=model,
            input_tokens=budget.input_tokens * n,
            max_output_tokens=budget.max_output_tokens * n,
            ttl=ttl,
        )
        timeout_s = min(s.reserve_timeout_s, budget.hold_s)
        if timeout_s <= 0:
            return None
        asked_at = time.monotonic()
        try:
            resp = await self._stub.Reserve(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            # over the budget, or the cost service is down: the call asks for itself, and
            # its own reservation says what holds
            log.info("no budget lease for %s/%s (%s)", tenant, model, e.code())
            return None
        if not resp.reservation_id:
            if s.unbudgeted_cache_s > 0:
                if len(self._unbudgeted) >= MAX_UNBUDGETED_CACHED:
                    self._unbudgeted.clear()
                self._unbudgeted[(tenant, model)] = time.monotonic() + s.unbudgeted_cache_s
            return _NO_BUDGET
        return _Lease(
            reservation_id=str(resp.reservation_id),
            input_left=request.input_tokens,
            output_left=request.max_output_tokens,
            carve_until=asked_at + s.lease_s,
            expires_at=asked_at + ttl_s,
        )

    def _lease_ended(self, at: tuple[str, str], lease: _Lease) -> None:
        if self._leases.get(at) is lease:
            del self._leases[at]
        if not lease.retired:
            self._retire(lease)

    def _retire(self, lease: _Lease) -> None:
        """No more shares from ``lease``; given back once its calls have settled."""
        lease.retired = True
        if lease.open == 0:
            self._release(lease.reservation_id)

    def _uncarve(self, key: str) -> None:
        """The call ``key`` is settled or voided: its share is used (its record goes to the
        cost service on its own)."""
        lease = self._carved.pop(key, None)
        if lease is None:
            return
        lease.open -= 1
        if lease.retired and lease.open == 0:
            self._release(lease.reservation_id)

    async def _reserve(self, key: str, tenant: str, model: str, budget: Budgeted) -> str:
        """The reservation's id ("" when no budget covers the call, or none could be made
        and ``on_budget_unavailable`` allows the call)."""
        if self._unbudgeted.get((tenant, model), 0.0) > time.monotonic():
            return ""
        ttl = duration_pb2.Duration()
        ttl.FromMilliseconds(int(min(budget.hold_s + self._s.reservation_margin_s, 86_400) * 1000))
        request = cost_pb2.ReserveRequest(
            request_id=key,
            tenant=tenant,
            model=model,
            input_tokens=budget.input_tokens,
            max_output_tokens=budget.max_output_tokens,
            ttl=ttl,
        )
        # as long as the cost service may take, but no longer than the call has left: a call
        # whose own deadline runs out here has run out of time (it is never let through
        # unreserved because its caller gave it little time)
        timeout_s = min(self._s.reserve_timeout_s, budget.hold_s)
        out_of_time = errors.DeadlineExceeded(
            "the call ran out of time while its budget was reserved", reason="DEADLINE_EXCEEDED"
        )
        if timeout_s <= 0:
            raise out_of_time
        try:
            resp = await self._stub.Reserve(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            err = from_rpc_error(e, service="cost")
            if isinstance(err, errors.DeadlineExceeded) and timeout_s < self._s.reserve_timeout_s:
                raise out_of_time from None
            if not isinstance(err, errors.Unavailable | errors.DeadlineExceeded):
                raise err from None
            if self._s.on_budget_unavailable == "refuse":
                raise errors.Unavailable(
                    "the cost service cannot be asked whether the budget holds this call",
                    reason="BUDGET_UNAVAILABLE",
                ) from None
            log.warning("cost service unavailable: call %s made without a budget reservation", key)
            return ""
        if not resp.reservation_id and self._s.unbudgeted_cache_s > 0:
            if len(self._unbudgeted) >= MAX_UNBUDGETED_CACHED:
                self._unbudgeted.clear()
            self._unbudgeted[(tenant, model)] = time.monotonic() + self._s.unbudgeted_cache_s
        return str(resp.reservation_id)

    def _release(self, reservation_id: str) -> None:
        """Give a voided call's reservation back, in the background (if this is lost, the
        reservation expires)."""
        if len(self._releases) >= MAX_RELEASES_IN_FLIGHT:
            return
        task = asyncio.create_task(self._release_now(reservation_id), name="usage-release")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release_now(self, reservation_id: str) -> None:
        try:
            await self._stub.Release(
                cost_pb2.ReleaseRequest(reservation_id=reservation_id),
                timeout=self._s.reserve_timeout_s,
            )
        except grpc.aio.AioRpcError as e:
            log.info("reservation %s not released (%s); it will expire", reservation_id, e.code())

    def _check_backlog(self) -> None:
        s = self._s
        if len(self._pending) >= s.max_backlog_records:
            raise errors.Unavailable(
                f"{len(self._pending)} usage records wait for the cost service; no new paid "
                "call is made until it takes them",
                reason="USAGE_BACKLOG_FULL",
                metadata={"backlog": str(len(self._pending))},
            )
        if self._pending:
            oldest = next(iter(self._pending.values()))
            age_s = (now_us() - oldest.occurred_at_us) / 1e6
            if age_s > s.max_backlog_age_s:
                raise errors.Unavailable(
                    f"usage records have waited {age_s:.0f}s for the cost service; no new "
                    "paid call is made until it takes them",
                    reason="USAGE_BACKLOG_FULL",
                    metadata={"backlog": str(len(self._pending))},
                )

    def _settled(self, rec: UsageRecord) -> None:
        self._open.pop(rec.request_id, None)
        self._uncarve(rec.request_id)
        self._pending[rec.request_id] = rec
        self._enqueue(_line("usage", rec), None)
        self._wake.set()
        if self._on_settled is not None:
            try:
                self._on_settled(rec)
            except Exception:
                log.exception("the usage observer failed on %s", rec.request_id)

    def _voided(self, key: str) -> None:
        intent = self._open.get(key)
        if intent is not None and intent.reservation_id:
            self._release(intent.reservation_id)
        self._open.pop(key, None)
        self._uncarve(key)
        self._enqueue(_line("void", key=key), None)

    async def _wait_taken(self, key: str, timeout_s: float) -> bool:
        if key in self._taken:
            return self._taken[key]
        if self._down or timeout_s <= 0:
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(fut)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(fut)
        except TimeoutError:
            return False
        finally:
            waiting = self._waiters.get(key)
            if waiting is not None and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._waiters[key]

    # -- the writer ------------------------------------------------------------------------------

    def _enqueue(self, line: str, done: asyncio.Future[None] | None) -> None:
        """Note ``line`` (in order, on this thread); ``done`` is resolved once it is on disk
        (an Unavailable error when it cannot be written)."""
        if line:
            if self._held is not None:
                self._held.append(line)
            elif self._file is not None:
                try:
                    self._file.write(line)
                except OSError as e:
                    self._write_failed = True
                    log.error("cannot write the usage journal %s: %s", self.path, e)
                    if done is not None:
                        done.set_exception(_journal_unwritable())
                        return
        if done is not None:
            self._syncing.append(done)
        self._queued.set()

    async def _writer(self) -> None:
        assert self._file is not None
        journal = self._file
        compact_at = self._compact_at
        while True:
            await self._queued.wait()
            self._queued.clear()
            waiting, self._syncing = self._syncing, []
            failed, self._write_failed = self._write_failed, False
            try:
                if failed:
                    raise OSError("a write failed")
                await asyncio.to_thread(journal.sync)
                if journal.size > compact_at:
                    await self._compact(journal)
                    # a journal mostly live (a long outage) is not rewritten on every write
                    compact_at = max(self._s.compact_bytes, 2 * journal.size)
            except OSError as e:
                log.error("cannot write the usage journal %s: %s", journal.path, e)
                for done in waiting:
                    if not done.done():
                        done.set_exception(_journal_unwritable())
                continue
            for done in waiting:
                if not done.done():
                    done.set_result(None)

    async def _compact(self, journal: _JournalFile) -> None:
        """Rewrite the journal with only its live entries; what is noted meanwhile is held
        and written after."""
        self._held = []
        try:
            live = [_line("begin", r) for r in self._open.values()]
            live += [_line("usage", r) for r in self._pending.values()]
            await asyncio.to_thread(journal.compact, live)
        finally:
            held, self._held = self._held, None
            if held:
                try:
                    journal.write("".join(held))
                except OSError:
                    self._write_failed = True
                    raise
                self._queued.set()  # fsynced on the next round; their callers wait for it

    # -- the sender ------------------------------------------------------------------------------

    async def _sender(self) -> None:
        while True:
            if self._down:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that
                # lands as the event is set (and stop() sets it)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._s.retry_interval_s):
                        await self._wake.wait()
            else:
                await self._wake.wait()
                if self._s.send_linger_s > 0 and not self._closing:
                    # records settled meanwhile go in the same batch
                    await asyncio.sleep(self._s.send_linger_s)
            self._wake.clear()
            while True:
                # one batch at a time: nothing else sends, so the oldest are never in flight
                size = self._s.send_concurrency if self._one_by_one else self._s.send_batch_records
                batch = list(itertools.islice(self._pending.values(), size))
                if not batch:
                    break
                results = await self._send_all(batch)
                refused = [
                    r
                    for r, err in zip(batch, results, strict=True)
                    if err is not None and _refused(err)
                ]
                if refused:
                    await asyncio.to_thread(_append_rejected, self.rejected_path, refused)
                transient = False
                for rec, err in zip(batch, results, strict=True):
                    if err is None or _refused(err):
                        self._taken_now(rec.request_id, ok=err is None, err=err)
                    else:
                        transient = True
                if transient:
                    if not self._down:
                        log.warning(
                            "cost service unavailable; %d usage records wait in %s",
                            len(self._pending), self.path,
                        )  # fmt: skip
                    self._down = True
                    self._fail_waiters()
                    break
                if self._down:
                    log.info(
                        "cost service back; sending %d waiting usage records", len(self._pending)
                    )
                self._down = False

    async def _send_all(self, batch: list[UsageRecord]) -> list[errors.QuorumError | None]:
        """Each record's answer (None: taken), in one RecordUsageBatch call, or one by one
        from the first time the cost service turns out to lack it."""
        if not self._one_by_one:
            try:
                return await self._send_batch(batch)
            except _NoBatchCall:
                log.warning(
                    "the cost service has no RecordUsageBatch (an older version); sending "
                    "usage records one by one"
                )
                self._one_by_one = True
        return list(await asyncio.gather(*(self._send(r) for r in batch)))

    async def _send_batch(self, batch: list[UsageRecord]) -> list[errors.QuorumError | None]:
        results = await self._record_batch(batch)
        # a reservation that is gone (released by mistake, or dropped long after it expired):
        # the call was made all the same, so it is billed without one
        again = []
        for i, (rec, err) in enumerate(zip(batch, results, strict=True)):
            if err is not None and rec.reservation_id and err.reason.startswith("RESERVATION_"):
                _without_reservation(rec, err)
                again.append(i)
        if again:
            retried = await self._record_batch(
                [replace(batch[i], reservation_id="") for i in again]
            )
            for i, err in zip(again, retried, strict=True):
                results[i] = err
        return results

    async def _record_batch(self, batch: list[UsageRecord]) -> list[errors.QuorumError | None]:
        request = cost_pb2.RecordUsageBatchRequest(records=[r.to_proto() for r in batch])
        try:
            resp = await self._stub.RecordUsageBatch(request, timeout=self._s.send_timeout_s)
        except grpc.aio.AioRpcError as e:
            _raise_if_cancelling()
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise _NoBatchCall from None
            return [from_rpc_error(e, service="cost")] * len(batch)
        if len(resp.results) != len(batch):
            log.error(
                "the cost service answered %d results for %d usage records; sending them again",
                len(resp.results), len(batch),
            )  # fmt: skip
            return [_NO_ANSWER] * len(batch)
        out: list[errors.QuorumError | None] = []
        for result in resp.results:
            kind = result.WhichOneof("result")
            if kind == "recorded":
                out.append(None)
            elif kind == "error":
                out.append(from_rpc_status(result.error, service="cost"))
            else:
                out.append(_NO_ANSWER)
        return out

    async def _send(self, rec: UsageRecord) -> errors.QuorumError | None:
        err = await self._record(rec)
        if err is not None and rec.reservation_id and err.reason.startswith("RESERVATION_"):
            _without_reservation(rec, err)
            err = await self._record(replace(rec, reservation_id=""))
        return err

    async def _record(self, rec: UsageRecord) -> errors.QuorumError | None:
        try:
            await self._stub.RecordUsage(rec.to_proto(), timeout=self._s.send_timeout_s)
        except grpc.aio.AioRpcError as e:
            _raise_if_cancelling()
            return from_rpc_error(e, service="cost")
        return None

    def _taken_now(self, key: str, *, ok: bool, err: errors.QuorumError | None) -> None:
        if not ok and err is not None:
            log.error(
                "usage record %s refused by the cost service (%s); kept in %s",
                key, err.reason, self.rejected_path,
            )  # fmt: skip
        self._pending.pop(key, None)
        self._enqueue(_line("sent", key=key), None)
        self._taken[key] = ok
        if len(self._taken) > 4096:  # only recent answers are asked for
            for old in list(self._taken)[:2048]:
                del self._taken[old]
        for fut in self._waiters.pop(key, []):
            if not fut.done():
                fut.set_result(ok)

    def _fail_waiters(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(False)
