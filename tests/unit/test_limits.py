"""Per-tenant rate limits, the pure part: token buckets on a clock we move by hand."""

from __future__ import annotations

import pytest

from quorum.errors import ResourceExhausted
from quorum.limits import Limit, Limits, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_refill_continuously() -> None:
    clock = Clock()
    rl = RateLimiter(Limits(Limit(requests_per_minute=3)), clock=clock)
    for _ in range(3):
        rl.admit("acme", 10)
    with pytest.raises(ResourceExhausted) as e:
        rl.admit("acme", 10)
    assert e.value.reason == "RATE_LIMITED" and e.value.retry_after == pytest.approx(20.0)
    rl.admit("globex", 10)  # another tenant has its own buckets
    clock.now += 20.0
    rl.admit("acme", 10)
    with pytest.raises(ResourceExhausted):
        rl.admit("acme", 10)


def test_tokens_are_taken_with_the_request_or_not_at_all() -> None:
    clock = Clock()
    rl = RateLimiter(Limits(Limit(requests_per_minute=100, tokens_per_minute=1000)), clock=clock)
    rl.admit("acme", 900)
    with pytest.raises(ResourceExhausted) as e:
        rl.admit("acme", 200)
    assert e.value.retry_after == pytest.approx(6.0)  # 100 short at 1000/60 a second
    rl.admit("acme", 100)  # the refused request took nothing: 100 were still there
    with pytest.raises(ResourceExhausted) as e:
        rl.admit("acme", 1001)  # more than a minute's allowance: never
    assert e.value.retry_after is None and "lower max_tokens" in e.value.message


def test_a_tenant_limit_overrides_the_default_and_zero_is_unlimited() -> None:
    rl = RateLimiter(
        Limits(
            Limit(requests_per_minute=1), {"vip": Limit(), "small": Limit(tokens_per_minute=10)}
        ),
        clock=Clock(),
    )
    for _ in range(50):
        rl.admit("vip", 10**6)
    rl.admit("small", 10)
    with pytest.raises(ResourceExhausted):
        rl.admit("small", 1)
    rl.admit("other", 1)
    with pytest.raises(ResourceExhausted):
        rl.admit("other", 1)


def test_a_batch_takes_one_request_a_text_all_or_nothing() -> None:
    rl = RateLimiter(Limits(Limit(requests_per_minute=5)), clock=Clock())
    rl.admit("acme", 10, requests=3)
    with pytest.raises(ResourceExhausted) as e:
        rl.admit("acme", 10, requests=3)  # 2 left
    assert e.value.reason == "RATE_LIMITED" and e.value.metadata["requests"] == "3"
    assert e.value.retry_after == pytest.approx(12.0)  # 1 short at 5/60 a second
    rl.admit("acme", 10, requests=2)  # the refused batch took nothing
    with pytest.raises(ResourceExhausted) as e:
        rl.admit("globex", 10, requests=6)  # more than a minute's allowance: never
    assert e.value.retry_after is None and "send fewer texts" in e.value.message
