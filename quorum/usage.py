"""Usage recording that never loses a record.

:class:`UsageRecorder` sends each record to the cost service with a deadline. A record that
cannot be sent right away is appended (and fsynced) to a spool file and re-sent in the
background until the cost service takes it; records are keyed by request id and the cost
service is idempotent on it, so a re-sent record is counted once. Spooled records survive a
restart: the spool is read again at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from quorum import errors
from quorum.common.v1 import common_pb2
from quorum.cost.v1 import cost_pb2, cost_pb2_grpc
from quorum.grpcerrors import from_rpc_error

log = logging.getLogger(__name__)

#: the longest request id the cost service takes (its RecordUsage limit)
MAX_KEY_CHARS = 128

#: a spool larger than this many records means the cost service has been down for long;
#: records still go to disk, and it is logged loudly
SPOOL_WARN_RECORDS = 10_000


def usage_key(*parts: str) -> str:
    """The ledger key of one model call: the parts joined by ":" (e.g. request id, step,
    model). A key longer than the ledger takes is shortened deterministically (a prefix plus
    a hash of the whole), so a re-sent record still lands on the same key."""
    key = ":".join(parts)
    if len(key) <= MAX_KEY_CHARS:
        return key
    suffix = "~sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
    return key[: MAX_KEY_CHARS - len(suffix)] + suffix


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    model: str
    input_tokens: int
    output_tokens: int
    source: str
    occurred_at_us: int

    def to_proto(self) -> cost_pb2.RecordUsageRequest:
        ts = timestamp_pb2.Timestamp()
        ts.FromMicroseconds(self.occurred_at_us)
        return cost_pb2.RecordUsageRequest(
            request_id=self.request_id,
            model=self.model,
            usage=common_pb2.Usage(
                input_tokens=self.input_tokens, output_tokens=self.output_tokens
            ),
            source=self.source,
            occurred_at=ts,
        )


def _refused(err: errors.QuorumError) -> bool:
    """A refusal for good, as opposed to the cost service being down or slow."""
    return not isinstance(
        err, errors.Unavailable | errors.DeadlineExceeded | errors.ResourceExhausted
    )


def _append_sync(path: Path, recs: list[UsageRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for rec in recs:
            f.write(json.dumps(asdict(rec), separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


class UsageRecorder:
    def __init__(
        self,
        stub: cost_pb2_grpc.CostServiceStub,
        spool: Path,
        *,
        retry_interval_s: float = 2.0,
        send_timeout_s: float = 2.0,
    ) -> None:
        self._stub = stub
        self._spool = spool
        self._interval = retry_interval_s
        self._send_timeout = send_timeout_s
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        #: records the cost service refused for good (never re-sent, never dropped)
        self.rejected_path = spool.with_name(spool.stem + ".rejected.jsonl")

    async def record(
        self, rec: UsageRecord, *, timeout_s: float
    ) -> cost_pb2.RecordUsageResponse | None:
        """Send now; on failure spool it and return None (it will be sent later)."""
        try:
            return await self._send(rec, timeout_s)
        except errors.QuorumError as err:
            if _refused(err):
                await self._reject([rec], err)
            else:
                log.warning("cost service unavailable (%s); spooling usage", err.reason)
                await self._append(self._spool, [rec])
                self._wake.set()
            return None

    async def _send(self, rec: UsageRecord, timeout_s: float) -> cost_pb2.RecordUsageResponse:
        try:
            resp: cost_pb2.RecordUsageResponse = await self._stub.RecordUsage(
                rec.to_proto(), timeout=max(timeout_s, 0.05)
            )
            return resp
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e, service="cost") from None

    async def _reject(self, recs: list[UsageRecord], err: errors.QuorumError) -> None:
        """The cost service will never take these (e.g. a model it does not know): keep them
        for a person in the rejected file, and stop re-sending them."""
        for rec in recs:
            log.error(
                "usage record %s refused by the cost service (%s); kept in %s",
                rec.request_id, err.reason, self.rejected_path,
            )  # fmt: skip
        await asyncio.to_thread(_append_sync, self.rejected_path, recs)

    async def _append(self, path: Path, recs: list[UsageRecord]) -> None:
        async with self._lock:
            await asyncio.to_thread(_append_sync, path, recs)

    def _read_sync(self) -> list[UsageRecord]:
        try:
            text = self._spool.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            if line.strip():
                try:
                    out.append(UsageRecord(**json.loads(line)))
                except (ValueError, TypeError):
                    log.error("skipping unreadable spool line in %s", self._spool)
        return out

    def _rewrite_sync(self, recs: list[UsageRecord]) -> None:
        if not recs:
            self._spool.unlink(missing_ok=True)
            return
        tmp = self._spool.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        _append_sync(tmp, recs)
        tmp.replace(self._spool)

    async def flush(self) -> int:
        """Re-send spooled records; returns how many are still pending."""
        async with self._lock:
            recs = await asyncio.to_thread(self._read_sync)
            if not recs:
                return 0
            left: list[UsageRecord] = []
            for i, rec in enumerate(recs):
                try:
                    await self._send(rec, self._send_timeout)
                except errors.QuorumError as err:
                    if not _refused(err):
                        left = recs[i:]  # still down: keep the rest, in order
                        break
                    await self._reject([rec], err)
            await asyncio.to_thread(self._rewrite_sync, left)
            if len(left) > SPOOL_WARN_RECORDS:
                log.error("%d usage records waiting in %s", len(left), self._spool)
            elif len(recs) != len(left):
                log.info("re-sent %d spooled usage records", len(recs) - len(left))
            return len(left)

    def start(self) -> None:
        async def loop() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
                self._wake.clear()
                try:
                    await self.flush()
                except Exception:
                    log.exception("usage spool flush failed")

        self._task = asyncio.create_task(loop(), name="usage-spool")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()
