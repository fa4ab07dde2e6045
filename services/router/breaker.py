"""Circuit breakers per provider: stop calling a provider that keeps failing, and try it
again now and then. Pure (the clock is passed in); one :class:`Breakers` per router process.

A provider's breaker is *closed* (calls go through) until ``failures`` calls in a row fail
with a transient error (the provider down, timing out, answering 5xx or 429); it is then
*open* for ``cooldown_s``: calls skip the provider at once (their route falls back to the
next model) instead of each waiting for it to fail. After the cooldown one call is let
through (*half-open*): its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from quorum.errors import Unavailable


@dataclass
class _State:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class Breakers:
    def __init__(self, *, failures: int, cooldown_s: float, clock: Callable[[], float]) -> None:
        self._threshold = failures
        self._cooldown = cooldown_s
        self._clock = clock
        self._states: dict[str, _State] = {}

    @property
    def enabled(self) -> bool:
        return self._threshold > 0

    def allow(self, provider: str) -> bool:
        """Whether a call to ``provider`` may go now (a half-open breaker lets one through)."""
        st = self._states.get(provider)
        if not self.enabled or st is None or st.opened_at is None:
            return True
        if st.probing or self._clock() - st.opened_at < self._cooldown:
            return False
        st.probing = True
        return True

    def succeeded(self, provider: str) -> None:
        self._states.pop(provider, None)

    def failed(self, provider: str) -> None:
        """A transient failure of a call to ``provider``."""
        if not self.enabled:
            return
        st = self._states.setdefault(provider, _State())
        st.failures += 1
        if st.probing or st.failures >= self._threshold:
            st.opened_at = self._clock()
            st.probing = False

    def is_open(self, provider: str) -> bool:
        st = self._states.get(provider)
        return st is not None and st.opened_at is not None

    def refusal(self, provider: str, model: str) -> Unavailable:
        return Unavailable(
            f"provider {provider!r} failed {self._threshold} calls in a row; it is skipped "
            f"for {self._cooldown:g}s",
            reason="CIRCUIT_OPEN",
            metadata={"provider": provider, "model": model},
        )
