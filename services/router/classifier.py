"""The router's prompt classifier on Triton (``[routing] classifier``): the I/O at the edge of
automatic routing. The choice itself is pure (:func:`services.router.routing.decide`).

One call of the classifier's model (:class:`quorum.backends.triton.TritonScorer`, whose span and
error mapping it reuses) per prompt routed automatically, bounded by a small slice of the
request's time (``classifier_timeout_s``, 50 ms, or 5% of what is left if less). It never fails
a request: when Triton is down, the model is not loaded, or the call is slow, :meth:`guess` is
None and the keyword rules decide. Such an outage is logged once when it starts and once when it
ends, not for every request.
"""

from __future__ import annotations

import logging

from opentelemetry import trace

from quorum.backends.triton import TritonScorer
from quorum.deadline import Deadline
from quorum.errors import QuorumError
from services.router.routing import PromptClassifier, TaskGuess

log = logging.getLogger(__name__)

#: the share of a request's remaining time the classifier may take (at most its timeout)
CLASSIFIER_SHARE = 0.05
#: the encoder reads 256 tokens at most: more characters than this would only be sent to be cut
MAX_CHARS = 2000


class TaskClassifier:
    def __init__(self, scorer: TritonScorer, settings: PromptClassifier) -> None:
        self._scorer = scorer
        self.settings = settings
        self._failing = False

    async def guess(self, text: str, deadline: Deadline) -> TaskGuess | None:
        """The classifier's most likely task for ``text`` and its probability; None when it
        did not answer in time or failed (the reason is on the call's span)."""
        s = self.settings
        timeout = deadline.timeout(share=CLASSIFIER_SHARE, cap=s.timeout_s)
        try:
            rows = await self._scorer.score_categories(
                s.model, [text[:MAX_CHARS]], s.tasks, timeout_s=timeout
            )
        except QuorumError as err:
            trace.get_current_span().set_attribute("quorum.route.classifier_error", err.reason)
            if not self._failing:
                self._failing = True
                log.warning(
                    "the prompt classifier %s did not answer (%s); the keyword rules route "
                    "until it does",
                    s.model,
                    err.reason,
                )
            return None
        if self._failing:
            self._failing = False
            log.info("the prompt classifier %s answers again", s.model)
        scores = rows[0]
        task = max(scores, key=lambda t: scores[t])
        return TaskGuess(task, scores[task])

    async def check(self) -> bool:
        """Whether the model answers: one call at start-up, with up to 2 s, which also opens
        the connection, so that the first request does not pay for it. Logged when it does
        not; never raises."""
        s = self.settings
        try:
            await self._scorer.score_categories(s.model, ["warm up"], s.tasks, timeout_s=2.0)
        except QuorumError as err:
            log.warning(
                "the prompt classifier %s does not answer at start-up (%s); the keyword rules "
                "route until it does",
                s.model,
                err.reason,
            )
            self._failing = True
            return False
        return True
