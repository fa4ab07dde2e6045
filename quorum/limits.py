"""Per-tenant rate limits: requests and tokens per minute, as token buckets. Pure (the clock
is passed in); one :class:`RateLimiter` per service process (the router's ``[router.limits]``,
the voter's ``[voter.limits]``: :func:`from_config`).

A bucket holds up to a minute's allowance and refills continuously. A request takes one
from the tenant's request bucket and, from its token bucket, the most it may use (its input,
counted cheaply, plus its ``max_tokens``): both or neither. When either bucket is short the
request is refused at once with ``RESOURCE_EXHAUSTED`` (``RATE_LIMITED``) and the seconds
until it would fit (``retry_after_s``), instead of queueing. Limits are per router process: N
replicas admit up to N times the allowance.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from quorum import config, ids
from quorum.errors import InvalidArgument, ResourceExhausted
from quorum.registry import ConfigError

#: tenants whose buckets are kept; the least recently seen are dropped past this (a dropped
#: tenant starts again with full buckets)
MAX_TENANTS = 10_000


@dataclass(frozen=True)
class Limit:
    """Allowances per minute; 0 means unlimited."""

    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0

    @property
    def unlimited(self) -> bool:
        return self.requests_per_minute <= 0 and self.tokens_per_minute <= 0


@dataclass(frozen=True)
class Limits:
    """A service's limits: every tenant's (``default``), and the tenants that have their own."""

    default: Limit = Limit()
    tenants: Mapping[str, Limit] = field(default_factory=dict)


def from_config(table: object, where: str) -> Limits:
    """``[<where>]`` (the default) and ``[<where>.tenants.<tenant>]``: each with
    ``requests_per_minute`` and ``tokens_per_minute`` (0 or absent: none)."""
    default = _limit(table, where)
    assert isinstance(table, Mapping)
    tenants = table.get("tenants", {})
    if not isinstance(tenants, Mapping):
        raise ConfigError(f"{where}.tenants: a table of tenant tables")
    return Limits(
        default,
        {
            _tenant(t, f"{where}.tenants"): _limit(v, f"{where}.tenants.{t}")
            for t, v in tenants.items()
        },
    )


def _limit(table: object, where: str) -> Limit:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(table) - {"requests_per_minute", "tokens_per_minute", "tenants"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    return Limit(
        requests_per_minute=config.get_float(table, "requests_per_minute", where)
        if "requests_per_minute" in table
        else 0.0,
        tokens_per_minute=config.get_float(table, "tokens_per_minute", where)
        if "tokens_per_minute" in table
        else 0.0,
    )


def _tenant(name: object, where: str) -> str:
    try:
        return ids.tenant(str(name), field=f"{where}.{name}", required=True)
    except InvalidArgument as e:
        raise ConfigError(e.message) from None


class Bucket:
    def __init__(self, per_minute: float, now: float) -> None:
        self.capacity = per_minute
        self.rate = per_minute / 60.0
        self.level = per_minute
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` fits (0 when it does now; inf when it never can)."""
        if amount <= self.level:
            return 0.0
        if amount > self.capacity:
            return math.inf
        return (amount - self.level) / self.rate


class RateLimiter:
    def __init__(self, limits: Limits = Limits(), *, clock: Callable[[], float]) -> None:
        self._default = limits.default
        self._tenants = dict(limits.tenants)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[Bucket | None, Bucket | None]] = OrderedDict()

    def limit(self, tenant: str) -> Limit:
        return self._tenants.get(tenant, self._default)

    def admit(self, tenant: str, tokens: int, *, requests: int = 1) -> None:
        """Take ``requests`` requests (a batch of texts counts one a text) and ``tokens`` from
        ``tenant``'s allowance, or raise ResourceExhausted (RATE_LIMITED) taking nothing."""
        limit = self.limit(tenant)
        if limit.unlimited:
            return
        now = self._clock()
        request_bucket, token_bucket = self._for(tenant, limit, now)
        waits = []
        for bucket, amount in ((request_bucket, float(requests)), (token_bucket, float(tokens))):
            if bucket is not None:
                bucket.refill(now)
                waits.append(bucket.wait_for(amount))
        wait = max(waits, default=0.0)
        if wait > 0:
            raise _limited(tenant, limit, tokens, requests, wait)
        if request_bucket is not None:
            request_bucket.level -= requests
        if token_bucket is not None:
            token_bucket.level -= tokens

    def _for(self, tenant: str, limit: Limit, now: float) -> tuple[Bucket | None, Bucket | None]:
        found = self._buckets.get(tenant)
        if found is None:
            found = (
                Bucket(limit.requests_per_minute, now) if limit.requests_per_minute > 0 else None,
                Bucket(limit.tokens_per_minute, now) if limit.tokens_per_minute > 0 else None,
            )
            self._buckets[tenant] = found
            if len(self._buckets) > MAX_TENANTS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(tenant)
        return found


def _limited(
    tenant: str, limit: Limit, tokens: int, requests: int, wait: float
) -> ResourceExhausted:
    meta = {
        "tenant": tenant,
        "requests_per_minute": f"{limit.requests_per_minute:g}",
        "tokens_per_minute": f"{limit.tokens_per_minute:g}",
        "tokens": str(tokens),
    }
    if requests != 1:
        meta["requests"] = str(requests)
    if math.isinf(wait):
        if 0 < limit.requests_per_minute < requests:
            return ResourceExhausted(
                f"this batch is {requests} requests, more than tenant {tenant!r} may send in a "
                f"minute ({limit.requests_per_minute:g}): send fewer texts at a time",
                reason="RATE_LIMITED",
                metadata=meta,
            )
        return ResourceExhausted(
            f"this request may use {tokens} tokens, more than tenant {tenant!r} may use in a "
            f"minute ({limit.tokens_per_minute:g}): lower max_tokens or the prompt",
            reason="RATE_LIMITED",
            metadata=meta,
        )
    return ResourceExhausted(
        f"tenant {tenant!r} is over its rate limit; retry in {wait:.1f}s",
        reason="RATE_LIMITED",
        metadata=meta,
        retry_after=round(wait, 3),
    )
