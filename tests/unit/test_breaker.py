"""Circuit breakers per provider, the pure part, on a clock moved by hand."""

from __future__ import annotations

from services.router.breaker import Breakers


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_breaker_opens_after_failures_in_a_row_and_probes_after_the_cooldown() -> None:
    clock = Clock()
    b = Breakers(failures=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        b.failed("p")
    b.succeeded("p")  # a success in between starts the count again
    for _ in range(2):
        b.failed("p")
    assert b.allow("p") and not b.is_open("p")
    b.failed("p")
    assert b.is_open("p") and not b.allow("p")
    assert b.allow("other")  # per provider
    clock.now += 10
    assert b.allow("p")  # one probe ...
    assert not b.allow("p")  # ... at a time
    b.failed("p")  # the probe failed: open again, for a whole cooldown
    assert not b.allow("p")
    clock.now += 10
    assert b.allow("p")
    b.succeeded("p")
    assert not b.is_open("p") and b.allow("p") and b.allow("p")


def test_zero_failures_means_no_breakers() -> None:
    b = Breakers(failures=0, cooldown_s=10, clock=Clock())
    for _ in range(100):
        b.failed("p")
    assert b.allow("p") and not b.enabled
