"""Fan a text out to every judge at once, give each a timeout, combine the votes.

No gRPC here: the servicer turns requests into calls of :meth:`Moderator.moderate` (one text)
and :meth:`Moderator.moderate_batch` (many texts with the same options) and the outcomes into
responses. A batch takes the same path per text as one text does (cascade, early decision,
timeouts, the vote and the policy); only the judges that answer many texts in one call (the
local models, :class:`~services.voter.judges.BatchJudge`) are asked once for the whole batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opentelemetry import trace

from quorum import metrics, tokens
from quorum.backends.types import ChatMessage, TokenUsage
from quorum.deadline import Deadline
from quorum.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    QuorumError,
    ResourceExhausted,
    Unavailable,
)
from quorum.limits import RateLimiter
from quorum.registry import ModelSpec, TritonBackend
from quorum.usage import usage_key
from services.voter.judges import BatchJudge, Judge, JudgeResult, pending_of, weight_of
from services.voter.voting import (
    Decision,
    Policy,
    Status,
    Vote,
    combine,
    decided,
    sure,
)

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

#: time kept back from the deadline for combining and answering, and for each more text of
#: a batch: a batch of 256 texts whose judges all ran out of time took 0.11 s from their
#: timeout to its answer on an idle 2-core machine (about 0.4 ms a text), and twice that
#: with the machine busy, so a text keeps back 2 ms
_MARGIN_S = 0.05
_MARGIN_PER_TEXT_S = 0.002


def batch_item_id(request_id: str, index: int) -> str:
    """The request id of text ``index`` of batch ``request_id``."""
    return f"{request_id}:{index}"


@dataclass(frozen=True)
class Ballot:
    """One judge's part in a moderation: its vote, what it cost, how long it took."""

    vote: Vote
    usage: TokenUsage
    latency_ms: int
    provider: str
    simulated: bool
    #: why the judge abstained, when it failed with one of our errors
    failure: QuorumError | None = None


@dataclass(frozen=True)
class _Asked:
    """One moderation as each judge is asked it."""

    text: str
    request_id: str
    #: whose moderation it is: the tenant its paid judges bill and reserve against
    tenant: str
    timeout_s: float
    #: the batch the text is part of, and its place there
    batch: _Batch | None = None
    index: int = 0


class _Batch:
    """The texts of one batch as the judges that answer many at once see them: the first
    ballot that needs such a judge starts its call for every text (one ``judge_batch``),
    the others wait for the same call, and each takes its own text's result."""

    def __init__(self, texts: Sequence[str], timeout_s: float, judges: Sequence[Judge]) -> None:
        self.texts = texts
        self._timeout_s = timeout_s
        #: the judges asked once for the whole batch, by name
        self.judges = {j.spec.name: j for j in judges if isinstance(j, BatchJudge)}
        self._calls: dict[str, asyncio.Task[list[JudgeResult]]] = {}

    async def result(self, name: str, index: int) -> JudgeResult:
        call = self._calls.get(name)
        if call is None:
            judge = self.judges[name]
            call = asyncio.create_task(judge.judge_batch(self.texts, timeout_s=self._timeout_s))
            self._calls[name] = call
        # a ballot that gives up (its timeout) stops waiting; the call goes on for the others
        return (await asyncio.shield(call))[index]

    def logs(self, name: str, index: int) -> bool:
        """Whether text ``index`` logs judge ``name``'s abstention: each of its own, but a
        failed batch call only once (it fails every text alike)."""
        return index == 0 or name not in self.judges

    async def close(self) -> None:
        """Stop the calls nobody waits for any more (the caller went away)."""
        for call in self._calls.values():
            call.cancel()
        await asyncio.gather(*self._calls.values(), return_exceptions=True)


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    ballots: tuple[Ballot, ...]


def _skipped(spec: ModelSpec, why: str) -> Ballot:
    return Ballot(
        vote=Vote(spec.name, weight_of(spec), Status.SKIPPED, error=why),
        usage=TokenUsage(),
        latency_ms=0,
        provider=spec.provider_name,
        simulated=spec.simulated,
    )


class Moderator:
    def __init__(
        self,
        judges: Mapping[str, Judge],
        policy: Policy,
        *,
        model_timeout_s: float,
        max_text_chars: int,
        early_decision: bool = True,
        limiter: RateLimiter | None = None,
        max_batch_texts: int = 256,
        max_batch_bytes: int = 1 << 20,
    ) -> None:
        self._judges = dict(judges)
        self._policy = policy
        self._model_timeout = model_timeout_s
        self._max_chars = max_text_chars
        self._early = early_decision
        self._limiter = limiter
        self._max_batch_texts = max_batch_texts
        self._max_batch_bytes = max_batch_bytes

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._judges)

    def validate(self, text: str, models: Sequence[str]) -> list[Judge]:
        self._check_text(text, "text")
        return self._chosen(models)

    def validate_batch(self, texts: Sequence[str], models: Sequence[str]) -> list[Judge]:
        """The judges of a batch, or InvalidArgument (field ``texts``, or ``texts[i]`` for one
        text as :meth:`validate` would refuse it) / NotFound, before anything is judged."""
        if not texts:
            raise InvalidArgument(
                "texts is empty: a batch needs at least one text",
                reason="BATCH_EMPTY",
                metadata={"field": "texts"},
            )
        if len(texts) > self._max_batch_texts:
            raise InvalidArgument(
                f"texts has {len(texts)} texts; the limit is {self._max_batch_texts}",
                reason="BATCH_TOO_LARGE",
                metadata={"field": "texts", "limit": str(self._max_batch_texts)},
            )
        size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        if size > self._max_batch_bytes:
            raise InvalidArgument(
                f"texts has {size} bytes in all; the limit is {self._max_batch_bytes}",
                reason="BATCH_TOO_LARGE",
                metadata={"field": "texts", "limit_bytes": str(self._max_batch_bytes)},
            )
        for i, text in enumerate(texts):
            self._check_text(text, f"texts[{i}]")
        return self._chosen(models)

    def _check_text(self, text: str, field: str) -> None:
        if not text.strip():
            raise InvalidArgument(
                f"{field} is empty", reason="TEXT_EMPTY", metadata={"field": field}
            )
        if len(text) > self._max_chars:
            raise InvalidArgument(
                f"{field} has {len(text)} characters; the limit is {self._max_chars}",
                reason="TEXT_TOO_LONG",
                metadata={"field": field, "limit": str(self._max_chars)},
            )

    def _chosen(self, models: Sequence[str]) -> list[Judge]:
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
        self,
        text: str,
        request_id: str,
        models: Sequence[str],
        deadline: Deadline,
        *,
        tenant: str,
        rate_limited: bool = True,
    ) -> Outcome:
        """The votes on ``text`` and their verdict; the paid judges bill their calls to
        ``tenant`` and reserve them against its hard budgets (a judge its budget refuses
        abstains). Without quorum (and ``on_no_quorum = "error"``): ResourceExhausted
        (BUDGET_EXCEEDED) when a budget refused a judge, else Unavailable (NO_QUORUM).
        ``rate_limited``: the moderation takes one request and its text's tokens (a token per
        4 bytes) from ``tenant``'s allowance first (ResourceExhausted, RATE_LIMITED, when it
        is short)."""
        judges = self.validate(text, models)
        if rate_limited and self._limiter is not None:
            self._limiter.admit(tenant, tokens.approx_messages([ChatMessage("user", text)]))
        asked = _Asked(text, request_id, tenant, self._timeout(deadline))
        outcome = self._decide(await self._cascade(judges, asked), tenant)
        span = trace.get_current_span()
        span.set_attribute("quorum.moderation.is_safe", outcome.decision.is_safe)
        span.set_attribute("quorum.moderation.requires_review", outcome.decision.requires_review)
        span.set_attribute(
            "quorum.moderation.votes", sum(b.vote.status is Status.OK for b in outcome.ballots)
        )
        return outcome

    async def moderate_batch(
        self,
        texts: Sequence[str],
        request_id: str,
        models: Sequence[str],
        deadline: Deadline,
        *,
        tenant: str,
        rate_limited: bool = True,
        item_ids: Sequence[str] | None = None,
    ) -> list[Outcome | QuorumError]:
        """:meth:`moderate` for each of ``texts`` with the same options, under one deadline:
        one result per text, in order, each the outcome :meth:`moderate` would give or the
        error it would raise (NO_QUORUM, BUDGET_EXCEEDED). Text ``i`` is moderated as request
        ``item_ids[i]`` when given (checked by the caller: one per text, unique), else
        ``batch_item_id(request_id, i)`` (its paid judges' usage keys). Refused whole, before
        anything is judged: a bad batch or text (:meth:`validate_batch`), an unknown judge,
        and a tenant short of allowance (the batch takes one request a text and every text's
        tokens, all or nothing)."""
        judges = self.validate_batch(texts, models)
        if rate_limited and self._limiter is not None:
            cost = sum(tokens.approx_messages([ChatMessage("user", t)]) for t in texts)
            self._limiter.admit(tenant, cost, requests=len(texts))
        timeout = self._timeout(deadline, len(texts))
        if item_ids is None:
            item_ids = [batch_item_id(request_id, i) for i in range(len(texts))]
        batch = _Batch(texts, timeout, judges)
        try:
            ballots = await asyncio.gather(
                *(
                    self._cascade(
                        judges,
                        _Asked(t, item_ids[i], tenant, timeout, batch, i),
                    )
                    for i, t in enumerate(texts)
                )
            )
        finally:
            await batch.close()
        results: list[Outcome | QuorumError] = []
        for each in ballots:
            try:
                results.append(self._decide(each, tenant))
            except QuorumError as err:
                results.append(err)
        outcomes = [r for r in results if isinstance(r, Outcome)]
        span = trace.get_current_span()
        span.set_attribute("quorum.moderation.texts", len(texts))
        span.set_attribute(
            "quorum.moderation.unsafe", sum(not o.decision.is_safe for o in outcomes)
        )
        span.set_attribute(
            "quorum.moderation.requires_review", sum(o.decision.requires_review for o in outcomes)
        )
        span.set_attribute("quorum.moderation.failed", len(results) - len(outcomes))
        return results

    def _timeout(self, deadline: Deadline, texts: int = 1) -> float:
        """Each judge's time: the model timeout, or what the deadline leaves after the margin
        for combining and answering ``texts`` texts."""
        margin = _MARGIN_S + _MARGIN_PER_TEXT_S * (texts - 1)
        return min(self._model_timeout, max(deadline.remaining() - margin, 0.01))

    def _decide(self, ballots: Sequence[Ballot], tenant: str) -> Outcome:
        """The verdict of one text's ballots under the policy; without quorum (and
        ``on_no_quorum = "error"``) ResourceExhausted (BUDGET_EXCEEDED) when a budget refused
        a judge, else Unavailable (NO_QUORUM)."""
        metrics.votes_cast((b.vote.model, b.vote.status.value, b.vote.is_safe) for b in ballots)
        decision = combine([b.vote for b in ballots], self._policy)
        if not decision.quorum and self._policy.on_no_quorum == "error":
            voted = sum(b.vote.status is Status.OK for b in ballots)
            refused = [
                b.failure
                for b in ballots
                if b.failure is not None and b.failure.reason == "BUDGET_EXCEEDED"
            ]
            if refused:  # more budget, not a retry, is what would help
                raise ResourceExhausted(
                    f"only {voted} of {len(ballots)} moderation models answered; "
                    f"{len(refused)} refused by the budget of tenant {tenant!r}",
                    reason="BUDGET_EXCEEDED",
                    metadata=refused[0].metadata,
                )
            raise Unavailable(
                f"only {voted} of {len(ballots)} moderation models answered; "
                f"{self._policy.min_votes} needed",
                reason="NO_QUORUM",
                metadata={"voted": str(voted), "needed": str(self._policy.min_votes)},
            )
        metrics.verdict_given(is_safe=decision.is_safe, requires_review=decision.requires_review)
        return Outcome(decision, tuple(ballots))

    async def _cascade(self, judges: Sequence[Judge], asked: _Asked) -> list[Ballot]:
        """With the cascade on, the local judges first; the remote ones only when the local
        ones are not :func:`sure` (else their votes say skipped, and why)."""
        local = [j for j in judges if isinstance(j.spec.backend, TritonBackend)]
        remote = [j for j in judges if not isinstance(j.spec.backend, TritonBackend)]
        if not (self._policy.cascade and local and remote):
            return await self._vote(judges, asked)
        first = await self._vote(local, asked)
        if sure([b.vote for b in first], self._policy, [pending_of(j.spec) for j in remote]):
            why = "not asked (cascade): the local judges were sure, or it could not change it"
            return [*first, *(_skipped(j.spec, why) for j in remote)]
        return [*first, *await self._vote(remote, asked)]

    async def _vote(self, judges: Sequence[Judge], asked: _Asked) -> list[Ballot]:
        """Every judge at once; with early decision on, the remote judges still running are
        cancelled as soon as they can no longer change the outcome (their ballots say
        skipped). Local judges are always waited for."""
        if not self._early or all(isinstance(j.spec.backend, TritonBackend) for j in judges):
            return list(await asyncio.gather(*(self._ballot(j, asked) for j in judges)))
        tasks = {asyncio.create_task(self._ballot(j, asked)): j for j in judges}
        got: dict[str, Ballot] = {}
        waiting = set(tasks)
        try:
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    ballot = task.result()
                    got[ballot.vote.model] = ballot
                # local judges answer in milliseconds and cost nothing: always heard out
                remote = all(not isinstance(tasks[t].spec.backend, TritonBackend) for t in waiting)
                if (
                    waiting
                    and remote
                    and self._early
                    and decided(
                        [b.vote for b in got.values()],
                        [pending_of(tasks[t].spec) for t in waiting],
                        self._policy,
                    )
                ):
                    break
        finally:
            for task in waiting:
                task.cancel()
            if waiting:
                await asyncio.gather(*waiting, return_exceptions=True)
        for task in waiting:
            spec = tasks[task].spec
            why = "decided without it (early decision): it could not change the outcome"
            got[spec.name] = _skipped(spec, why)
        return [got[j.spec.name] for j in judges]

    async def _ballot(self, judge: Judge, asked: _Asked) -> Ballot:
        spec = judge.spec
        weight = weight_of(spec)
        timeout_s = asked.timeout_s
        start = time.monotonic()
        usage = TokenUsage()
        failure: QuorumError | None = None
        try:
            async with asyncio.timeout(timeout_s):
                result: JudgeResult
                if asked.batch is not None and spec.name in asked.batch.judges:
                    result = await asked.batch.result(spec.name, asked.index)
                else:
                    result = await judge.judge(
                        asked.text,
                        timeout_s=timeout_s,
                        # one key per call: a moderation asked for again is billed again
                        usage_key=usage_key(
                            asked.request_id, "judge", spec.name, uuid.uuid4().hex[:8]
                        ),
                        tenant=asked.tenant,
                    )
            vote, usage = result.vote, result.usage
        except TimeoutError:
            vote = Vote(
                spec.name, weight, Status.TIMEOUT, error=f"no answer within {timeout_s:.2f}s"
            )
        except QuorumError as err:
            failure = err
            status = Status.TIMEOUT if isinstance(err, DeadlineExceeded) else Status.ERROR
            vote = Vote(spec.name, weight, status, error=f"{err.reason}: {err.message}")
        except Exception:
            log.exception("judge %s failed", spec.name)
            vote = Vote(spec.name, weight, Status.ERROR, error="INTERNAL: judge failed")
        if vote.status is not Status.OK and (
            asked.batch is None or asked.batch.logs(spec.name, asked.index)
        ):
            log.warning("judge %s abstained: %s", spec.name, vote.error)
        return Ballot(
            vote=vote,
            usage=usage,
            latency_ms=int((time.monotonic() - start) * 1000),
            provider=spec.provider_name,
            simulated=spec.simulated,
            failure=failure,
        )
