"""VoterService: proto in, Moderator call, proto out."""

from __future__ import annotations

import time
from typing import Any

import grpc

from quorum import auth, ids, protoconv
from quorum.deadline import Deadline
from quorum.errors import InvalidArgument
from quorum.grpcerrors import map_errors, rpc_status_of
from quorum.voter.v1 import voter_pb2, voter_pb2_grpc
from services.voter.moderation import Moderator, Outcome, batch_item_id
from services.voter.voting import Status

_STATUS = {
    Status.OK: voter_pb2.VOTE_STATUS_OK,
    Status.ERROR: voter_pb2.VOTE_STATUS_ERROR,
    Status.TIMEOUT: voter_pb2.VOTE_STATUS_TIMEOUT,
    Status.SKIPPED: voter_pb2.VOTE_STATUS_SKIPPED,
}
MAX_REQUEST_ID = 128


def to_response(request_id: str, outcome: Outcome, latency_ms: int) -> voter_pb2.ModerateResponse:
    d = outcome.decision
    return voter_pb2.ModerateResponse(
        request_id=request_id,
        is_safe=d.is_safe,
        confidence=round(d.confidence, 6),
        categories=protoconv.category_scores(d.categories),
        requires_review=d.requires_review,
        reasons=list(d.reasons),
        latency_ms=latency_ms,
        quorum=d.quorum,
        votes=[
            voter_pb2.ModelVote(
                model=b.vote.model,
                provider=b.provider,
                status=_STATUS[b.vote.status],
                is_safe=b.vote.is_safe,
                confidence=round(b.vote.confidence, 6),
                categories=protoconv.category_scores(b.vote.categories),
                weight=b.vote.weight,
                latency_ms=b.latency_ms,
                error=b.vote.error,
                usage=protoconv.usage(b.usage),
                simulated=b.simulated,
            )
            for b in outcome.ballots
        ],
    )


def item_ids(request: voter_pb2.ModerateBatchRequest, request_id: str) -> list[str]:
    """Each text's request id in a batch: the ones the request gives (checked: one per text,
    non-empty, each as ModerateRequest.request_id is checked, no two alike), else
    ``<request_id>:<i>``."""
    given = list(request.request_ids)
    if not given:
        return [batch_item_id(request_id, i) for i in range(len(request.texts))]
    if len(given) != len(request.texts):
        raise InvalidArgument(
            f"request_ids has {len(given)} ids for {len(request.texts)} texts: give one per "
            "text, or none",
            reason="BAD_REQUEST_ID",
            metadata={"field": "request_ids"},
        )
    seen: set[str] = set()
    for i, each in enumerate(given):
        field = f"request_ids[{i}]"
        if not each:
            raise InvalidArgument(
                f"{field} is empty: give every text an id, or none",
                reason="BAD_REQUEST_ID",
                metadata={"field": field},
            )
        ids.request_id(each, limit=MAX_REQUEST_ID, field=field)
        if each in seen:
            raise InvalidArgument(
                f"{field} repeats an earlier id: each text needs its own",
                reason="DUPLICATE_REQUEST_ID",
                metadata={"field": field},
            )
        seen.add(each)
    return given


def _caller(named: str) -> auth.Identity:
    """The caller, acting for the tenant the moderation is for: the one the request names (a
    client key only its own), else its own."""
    checked = ids.tenant(named, field="tenant", required=True) if named else ""
    return auth.current().acting_for(checked)


class VoterServicer(voter_pb2_grpc.VoterServiceServicer):
    def __init__(
        self, moderator: Moderator, *, default_timeout_s: float, max_timeout_s: float
    ) -> None:
        self._moderator = moderator
        self._default_timeout = default_timeout_s
        self._max_timeout = max_timeout_s

    def _begin(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[Deadline, float, auth.Identity, str]:
        """What both calls start with: the deadline, the start time, who is asking (and for
        which tenant), and the request's id (a new one if it has none)."""
        deadline = Deadline.from_grpc(
            context.time_remaining(), default_s=self._default_timeout, max_s=self._max_timeout
        )
        caller = _caller(request.tenant)
        request_id = ids.request_id(request.request_id, limit=MAX_REQUEST_ID)
        return deadline, time.monotonic(), caller, request_id

    @map_errors
    async def Moderate(
        self, request: voter_pb2.ModerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> voter_pb2.ModerateResponse:
        deadline, start, caller, request_id = self._begin(request, context)
        outcome = await self._moderator.moderate(
            request.text,
            request_id,
            list(request.models),
            deadline,
            tenant=caller.tenant,
            # the router's moderations (a service key) count against its own limits
            rate_limited=caller.role is not auth.Role.SERVICE,
        )
        latency_ms = int((time.monotonic() - start) * 1000)
        return to_response(request_id, outcome, latency_ms)

    @map_errors
    async def ModerateBatch(
        self, request: voter_pb2.ModerateBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> voter_pb2.ModerateBatchResponse:
        deadline, start, caller, request_id = self._begin(request, context)
        each = item_ids(request, request_id)
        results = await self._moderator.moderate_batch(
            list(request.texts),
            request_id,
            list(request.models),
            deadline,
            tenant=caller.tenant,
            rate_limited=caller.role is not auth.Role.SERVICE,
            item_ids=each,
        )
        latency_ms = int((time.monotonic() - start) * 1000)
        return voter_pb2.ModerateBatchResponse(
            request_id=request_id,
            latency_ms=latency_ms,
            results=[
                voter_pb2.ModerateBatchResult(moderated=to_response(each[i], r, latency_ms))
                if isinstance(r, Outcome)
                else voter_pb2.ModerateBatchResult(error=rpc_status_of(r))
                for i, r in enumerate(results)
            ],
        )
