"""How much of its budgets a tenant has used, as the router sees it: asked of the cost
service (GetBudgetStatus) at most once per tenant every ``ttl_s``, with a short deadline. An
answer that does not come is "unknown" (no step-down), never an error for the request."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import grpc

from quorum.cost.v1 import cost_pb2, cost_pb2_grpc

log = logging.getLogger(__name__)

MAX_TENANTS = 10_000


class BudgetView:
    def __init__(
        self,
        stub: cost_pb2_grpc.CostServiceStub,
        *,
        ttl_s: float = 5.0,
        timeout_s: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = stub
        self._ttl = ttl_s
        self._timeout = timeout_s
        self._clock = clock
        self._seen: OrderedDict[str, tuple[float, float | None]] = OrderedDict()

    async def used(self, tenant: str) -> float | None:
        """The largest share of a budget ``tenant`` has spent this month (0.85 = 85%), None
        when it has no budget or the cost service did not say."""
        now = self._clock()
        cached = self._seen.get(tenant)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            resp = await self._stub.GetBudgetStatus(
                cost_pb2.GetBudgetStatusRequest(tenant=tenant), timeout=self._timeout
            )
            used = max((b.used for b in resp.budgets), default=None)
        except grpc.aio.AioRpcError as e:
            log.info("budget status of %s unknown (%s): no step-down", tenant, e.code())
            used = None
        self._seen[tenant] = (now + self._ttl, used)
        self._seen.move_to_end(tenant)
        if len(self._seen) > MAX_TENANTS:
            self._seen.popitem(last=False)
        return used
