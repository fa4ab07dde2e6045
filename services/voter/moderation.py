"""Fan a text out to every judge at once, give each a timeout, combine the votes.

No gRPC here: the servicer turns requests into calls of :meth:`Moderator.moderate` and the
outcome into a response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opentelemetry import trace

from quorum.backends.types import TokenUsage
from quorum.deadline import Deadline
from quorum.errors import DeadlineExceeded, InvalidArgument, NotFound, QuorumError
from quorum.usage import UsageRecord, UsageRecorder, usage_key
from services.voter.judges import Judge, JudgeResult
from services.voter.voting import Decision, Policy, Status, Vote, combine

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

#: time kept back from the deadline for combining and answering
_MARGIN_S = 0.05


@dataclass(frozen=True)
class Ballot:
    """One judge's part in a moderation: its vote, what it cost, how long it took."""

    vote: Vote
    usage: TokenUsage
    latency_ms: int
    provider: str
    simulated: bool


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    ballots: tuple[Ballot, ...]


class Moderator:
    def __init__(
        self,
        judges: Mapping[str, Judge],
        policy: Policy,
        *,
        model_timeout_s: float,
        max_text_chars: int,
        recorder: UsageRecorder | None = None,
    ) -> None:
        self._judges = dict(judges)
        self._policy = policy
        self._model_timeout = model_timeout_s
        self._max_chars = max_text_chars
        self._recorder = recorder

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._judges)

    def validate(self, text: str, models: Sequence[str]) -> list[Judge]:
        if not text.strip():
            raise InvalidArgument("text is empty", reason="TEXT_EMPTY", metadata={"field": "text"})
        if len(text) > self._max_chars:
            raise InvalidArgument(
                f"text has {len(text)} characters; the limit is {self._max_chars}",
                reason="TEXT_TOO_LONG",
                metadata={"field": "text", "limit": str(self._max_chars)},
            )
        if not models:
            return list(self._judges.values())
        chosen = []
        for name in dict.fromkeys(models):
            if name not in self._judges:
                raise NotFound(
                    f"{name[:100]!r} is not a moderation model; available: "
                    + ", ".join(self._judges),
                    reason="JUDGE_NOT_FOUND",
                    metadata={"model": name[:100]},
                )
            chosen.append(self._judges[name])
        return chosen

    async def moderate(
        self, text: str, request_id: str, models: Sequence[str], deadline: Deadline
    ) -> Outcome:
        judges = self.validate(text, models)
        timeout = min(self._model_timeout, max(deadline.remaining() - _MARGIN_S, 0.01))
        ballots = await asyncio.gather(*(self._ballot(j, text, timeout) for j in judges))
        decision = combine([b.vote for b in ballots], self._policy)
        span = trace.get_current_span()
        span.set_attribute("quorum.moderation.is_safe", decision.is_safe)
        span.set_attribute("quorum.moderation.requires_review", decision.requires_review)
        span.set_attribute(
            "quorum.moderation.votes", sum(b.vote.status is Status.OK for b in ballots)
        )
        await self._record(request_id, ballots, deadline)
        return Outcome(decision, tuple(ballots))

    async def _ballot(self, judge: Judge, text: str, timeout_s: float) -> Ballot:
        spec = judge.spec
        weight = spec.moderation.weight if spec.moderation else 1.0
        start = time.monotonic()
        usage = TokenUsage()
        try:
            async with asyncio.timeout(timeout_s):
                result: JudgeResult = await judge.judge(text, timeout_s=timeout_s)
            vote, usage = result.vote, result.usage
        except TimeoutError:
            vote = Vote(
                spec.name, weight, Status.TIMEOUT, error=f"no answer within {timeout_s:.2f}s"
            )
        except QuorumError as err:
            status = Status.TIMEOUT if isinstance(err, DeadlineExceeded) else Status.ERROR
            vote = Vote(spec.name, weight, status, error=f"{err.reason}: {err.message}")
        except Exception:
            log.exception("judge %s failed", spec.name)
            vote = Vote(spec.name, weight, Status.ERROR, error="INTERNAL: judge failed")
        if vote.status is not Status.OK:
            log.warning("judge %s abstained: %s", spec.name, vote.error)
        return Ballot(
            vote=vote,
            usage=usage,
            latency_ms=int((time.monotonic() - start) * 1000),
            provider=spec.provider_name,
            simulated=spec.simulated,
        )

    async def _record(self, request_id: str, ballots: Sequence[Ballot], deadline: Deadline) -> None:
        if self._recorder is None:
            return
        now_us = int(time.time() * 1_000_000)
        recs = [
            UsageRecord(
                request_id=usage_key(request_id, "judge", b.vote.model),
                model=b.vote.model,
                input_tokens=b.usage.input_tokens,
                output_tokens=b.usage.output_tokens,
                source="voter",
                occurred_at_us=now_us,
            )
            for b in ballots
            if b.usage.input_tokens or b.usage.output_tokens
        ]
        if recs:
            timeout = max(min(deadline.remaining() - _MARGIN_S, 1.0), 0.05)
            await asyncio.gather(*(self._recorder.record(r, timeout_s=timeout) for r in recs))
