"""ModerateBatch's domain part (Moderator.moderate_batch), in process: the real TritonJudge
over a scorer that stands in for Triton, remote judges that answer from keywords. What a
batch gives each text must be what Moderate gives it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quorum.backends.types import TokenUsage
from quorum.deadline import Deadline
from quorum.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from quorum.limits import Limit, Limits, RateLimiter
from quorum.registry import load_registry
from services.voter.judges import JudgeResult, TritonJudge
from services.voter.moderation import Moderator, Outcome
from services.voter.voting import Policy, Status, Vote

WORDS = ("buy", "now", "kill", "hello", "friend", "cheap", "pills", "you")


def spam_score(text: str) -> float:
    """A score that depends on the text alone: the share of its words that are spammy."""
    words = text.split()
    return sum(w in ("buy", "now", "cheap", "pills") for w in words) / max(len(words), 1)


class Scorer:
    """Stands in for Triton: one score per text; records every call."""

    def __init__(self, *, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.delay, self.fail = delay, fail

    async def score(self, model: str, texts: Sequence[str], *, timeout_s: float) -> list[float]:
        self.calls.append(list(texts))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise Unavailable("Triton is unavailable", reason="TRITON_UNAVAILABLE")
        bias = 0.1 if model == "local-b" else 0.0
        return [min(spam_score(t) + bias, 1.0) for t in texts]


def local(name: str, scorer: Scorer) -> TritonJudge:
    reg = load_registry(
        {"models": {name: {"backend": "triton", "triton_model": name,
                           "moderation": {"categories": ["spam"], "threshold": 0.5}}}}
    )  # fmt: skip
    return TritonJudge(reg.get(name), scorer)  # type: ignore[arg-type]


class Remote:
    """A remote judge: one call per text (flags "kill"), failing on texts that hold ``fail``."""

    def __init__(self, name: str = "llm", *, fail: str = "", delay: float = 0.0) -> None:
        reg = load_registry(
            {
                "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
                "models": {
                    name: {"provider": "p", "moderation": {"categories": ["violence", "spam"]}}
                },
            }
        )
        self.spec = reg.get(name)
        self.fail, self.delay = fail, delay
        self.calls: list[tuple[str, str, str]] = []  # (text, usage key, tenant)

    async def judge(
        self, text: str, *, timeout_s: float, usage_key: str, tenant: str
    ) -> JudgeResult:
        self.calls.append((text, usage_key, tenant))
        await asyncio.sleep(self.delay)
        if self.fail and self.fail in text:
            raise Unavailable("the provider failed", reason="PROVIDER_UNAVAILABLE")
        violent = "kill" in text
        vote = Vote(self.spec.name, 1.0, Status.OK, is_safe=not violent, confidence=0.8,
                    categories={"violence": 0.9 if violent else 0.1, "spam": spam_score(text)})  # fmt: skip
        return JudgeResult(vote, TokenUsage(10, 5))


def moderator(judges: Sequence[object], policy: Policy | None = None, **kw: object) -> Moderator:
    options: dict[str, object] = {"model_timeout_s": 5, "max_text_chars": 100}
    options.update(kw)
    return Moderator(
        {j.spec.name: j for j in judges},  # type: ignore[attr-defined]
        policy or Policy(),
        **options,  # type: ignore[arg-type]
    )


async def batch(m: Moderator, texts: list[str], models: Sequence[str] = (), **kw: object):
    return await m.moderate_batch(
        texts,
        "b1",
        list(models),
        Deadline.after(5),
        tenant="acme",
        **kw,  # type: ignore[arg-type]
    )


async def test_each_local_judge_is_asked_once_for_the_whole_batch() -> None:
    scorer = Scorer()
    m = moderator([local("local-a", scorer), local("local-b", scorer)])
    texts = ["buy cheap pills now", "hello friend", "buy now", "hello friend"]
    results = await batch(m, texts)
    assert sorted(scorer.calls) == [texts, texts]  # one call per judge, every text, in order
    assert all(isinstance(r, Outcome) for r in results)
    safe = [r.decision.is_safe for r in results]  # type: ignore[union-attr]
    assert safe == [False, True, False, True]
    for text, r in zip(texts, results, strict=True):
        assert isinstance(r, Outcome)
        assert [b.vote.categories["spam"] for b in r.ballots] == pytest.approx(
            [spam_score(text), min(spam_score(text) + 0.1, 1.0)]
        )


text_lists = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=text_lists, cascade=st.booleans(), min_votes=st.sampled_from([1, 3]))
def test_a_batch_gives_each_text_what_moderate_gives_it(
    texts: list[str], cascade: bool, min_votes: int
) -> None:
    """Same verdicts, ballots and errors, text by text and in order (early decision off:
    with it, whether a remote judge is skipped depends on timing, not on the texts)."""
    policy = Policy(cascade=cascade, min_votes=min_votes, cascade_margin=0.2)

    async def run() -> None:
        scorer = Scorer()
        judges = [local("local-a", scorer), local("local-b", scorer), Remote(fail="pills")]
        m = moderator(judges, policy, early_decision=False)
        got = await batch(m, texts)
        assert len(got) == len(texts)
        for text, result in zip(texts, got, strict=True):
            try:
                want: Outcome | Exception = await m.moderate(
                    text, "r", [], Deadline.after(5), tenant="acme"
                )
            except Unavailable as err:
                want = err
            if isinstance(want, Outcome):
                assert isinstance(result, Outcome)
                assert result.decision == want.decision
                assert [b.vote for b in result.ballots] == [b.vote for b in want.ballots]
            else:
                assert isinstance(result, Unavailable) and result.reason == want.reason  # type: ignore[attr-defined]
                assert result.message == want.message  # type: ignore[attr-defined]

    asyncio.run(run())


async def test_remote_judges_are_asked_per_text_and_billed_under_its_own_id() -> None:
    remote = Remote()
    m = moderator([local("local-a", Scorer()), remote])
    texts = ["kill it", "hello", "buy now"]
    results = await batch(m, texts)
    assert [isinstance(r, Outcome) for r in results] == [True] * 3
    asked = sorted(remote.calls)
    assert [t for t, _, _ in asked] == sorted(texts)
    for text, key, tenant in remote.calls:
        i = texts.index(text)
        assert key.startswith(f"b1:{i}:judge:llm:") and tenant == "acme"
    usage = {
        b.vote.model: b.usage
        for r in results
        if isinstance(r, Outcome)
        for b in r.ballots
        if b.vote.status is Status.OK
    }
    assert usage["llm"] == TokenUsage(10, 5)


async def test_a_text_without_quorum_fails_alone() -> None:
    m = moderator([Remote(fail="pills")], Policy(min_votes=1))
    results = await batch(m, ["hello", "cheap pills", "you"])
    assert isinstance(results[0], Outcome) and isinstance(results[2], Outcome)
    err = results[1]
    assert isinstance(err, Unavailable) and err.reason == "NO_QUORUM"


async def test_a_failed_batch_call_makes_its_judge_abstain_on_every_text() -> None:
    m = moderator([local("local-a", Scorer(fail=True)), Remote()])
    results = await batch(m, ["hello", "kill", "buy now"])
    for r in results:
        assert isinstance(r, Outcome)
        (failed,) = [b for b in r.ballots if b.vote.model == "local-a"]
        assert failed.vote.status is Status.ERROR and "TRITON_UNAVAILABLE" in failed.vote.error
        assert "local-a abstained (error)" in r.decision.reasons
    alone = moderator([local("local-a", Scorer(fail=True))])
    results = await batch(alone, ["hello", "kill"])
    assert [getattr(r, "reason", None) for r in results] == ["NO_QUORUM", "NO_QUORUM"]


async def test_judges_slower_than_the_deadline_abstain_and_the_batch_answers_in_time() -> None:
    m = moderator([local("local-a", Scorer(delay=5.0))], model_timeout_s=30)
    start = time.monotonic()
    results = await m.moderate_batch(["hello"] * 3, "b1", [], Deadline.after(0.3), tenant="acme")
    assert time.monotonic() - start < 1.0
    assert [getattr(r, "reason", None) for r in results] == ["NO_QUORUM"] * 3


async def test_a_cancelled_batch_cancels_its_judges_calls() -> None:
    scorer = Scorer(delay=5.0)
    m = moderator([local("local-a", scorer)])
    task = asyncio.create_task(batch(m, ["hello", "you"]))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert scorer.calls == [["hello", "you"]]
    assert not [t for t in asyncio.all_tasks() if "judge_batch" in repr(t.get_coro())]


@pytest.mark.parametrize(
    ("texts", "reason", "metadata"),
    [
        ([], "BATCH_EMPTY", {"field": "texts"}),
        (["hi"] * 5, "BATCH_TOO_LARGE", {"field": "texts", "limit": "4"}),
        # 4 texts of 30 characters, 3 bytes each in UTF-8: 360 bytes
        (["\u20ac" * 30] * 4, "BATCH_TOO_LARGE", {"field": "texts", "limit_bytes": "300"}),
        (["hi", "there", " \n", ""], "TEXT_EMPTY", {"field": "texts[2]"}),
        (["hi", "x" * 101], "TEXT_TOO_LONG", {"field": "texts[1]", "limit": "100"}),
    ],
)
async def test_a_bad_batch_is_refused_whole_before_anything_is_judged(
    texts: list[str], reason: str, metadata: dict[str, str]
) -> None:
    scorer = Scorer()
    m = moderator([local("local-a", scorer)], max_batch_texts=4, max_batch_bytes=300)
    with pytest.raises(InvalidArgument) as e:
        await batch(m, texts)
    assert e.value.reason == reason and e.value.metadata == metadata
    assert not scorer.calls


async def test_an_unknown_judge_refuses_the_batch() -> None:
    m = moderator([local("local-a", Scorer())])
    with pytest.raises(NotFound) as e:
        await batch(m, ["hi"], ["nope"])
    assert e.value.reason == "JUDGE_NOT_FOUND"


async def test_a_batch_counts_one_request_a_text_against_the_rate_limit() -> None:
    now = [0.0]
    limiter = RateLimiter(Limits(Limit(requests_per_minute=5)), clock=lambda: now[0])
    scorer = Scorer()
    m = moderator([local("local-a", scorer)], limiter=limiter)
    await batch(m, ["a", "b", "c"])
    with pytest.raises(ResourceExhausted) as e:
        await batch(m, ["a", "b", "c"])
    assert e.value.reason == "RATE_LIMITED"
    assert len(scorer.calls) == 1  # the refused batch was not judged
    await batch(m, ["d", "e"])  # ... and took nothing
    await batch(m, ["f"] * 9, rate_limited=False)  # the router's (service) moderations
