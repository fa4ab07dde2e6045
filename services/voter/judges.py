"""Judges: one per moderation model, each turning a text into a vote through a backend.

The prompt and JSON schema the LLM judges answer with live here; the parsing of what they
answer lives in :mod:`services.voter.parsing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from quorum.backends.openai import OpenAIChat
from quorum.backends.triton import TritonScorer
from quorum.backends.types import ChatMessage, ChatRequest, TokenUsage
from quorum.errors import Unavailable
from quorum.registry import CATEGORIES, ModelSpec, OpenAIBackend, TritonBackend
from services.voter.parsing import VerdictParseError, parse_verdict
from services.voter.voting import Status, Vote

SYSTEM_PROMPT = (
    "You are a content-moderation classifier. Judge the user's text, not its author. "
    "Answer with a single JSON object and nothing else: "
    '{"is_safe": bool, "confidence": number 0..1, "categories": {'
    + ", ".join(f'"{c}": number 0..1' for c in CATEGORIES)
    + '}, "reason": short string}. '
    "A category score is the probability that the text belongs to it. is_safe is false when "
    "the text should not be shown to a general audience."
)

VERDICT_SCHEMA: dict[str, Any] = {
    "name": "moderation_verdict",
    "strict": True,
    "schema": {
        "type": "object",
        "additionalProperties": False,
        "required": ["is_safe", "confidence", "categories", "reason"],
        "properties": {
            "is_safe": {"type": "boolean"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "categories": {
                "type": "object",
                "additionalProperties": False,
                "required": list(CATEGORIES),
                "properties": {
                    c: {"type": "number", "minimum": 0, "maximum": 1} for c in CATEGORIES
                },
            },
            "reason": {"type": "string"},
        },
    },
}


def response_format(mode: str) -> dict[str, Any] | None:
    """What to ask the provider for; the prompt asks for JSON in every mode, and the parser
    copes with whatever comes back."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": VERDICT_SCHEMA}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


@dataclass(frozen=True)
class JudgeResult:
    vote: Vote
    usage: TokenUsage


class Judge(Protocol):
    spec: ModelSpec

    async def judge(self, text: str, *, timeout_s: float) -> JudgeResult: ...


def _weight(spec: ModelSpec) -> float:
    return spec.moderation.weight if spec.moderation else 1.0


def _judged(spec: ModelSpec, scores: dict[str, float]) -> dict[str, float]:
    cats = spec.moderation.categories if spec.moderation else ()
    return {c: scores[c] for c in cats if c in scores}


class LLMJudge:
    """A remote LLM asked for a JSON verdict (structured output where the provider has it)."""

    def __init__(self, spec: ModelSpec, chat: OpenAIChat, *, max_tokens: int = 300) -> None:
        if not isinstance(spec.backend, OpenAIBackend):
            raise TypeError("LLMJudge needs an OpenAI-compatible backend")
        self.spec = spec
        self._backend = spec.backend
        self._chat = chat
        self._max_tokens = max_tokens

    async def judge(self, text: str, *, timeout_s: float) -> JudgeResult:
        request = ChatRequest(
            messages=(ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", text)),
            max_tokens=self._max_tokens,
            temperature=0.0,
            response_format=response_format(self._backend.provider.json_mode),
        )
        result = await self._chat.complete(self._backend, request, timeout_s=timeout_s)
        try:
            verdict = parse_verdict(result.text)
        except VerdictParseError as e:
            raise Unavailable(
                f"{self.spec.name} gave no usable verdict: {e}", reason="UNPARSEABLE_VERDICT"
            ) from None
        vote = Vote(
            model=self.spec.name,
            weight=_weight(self.spec),
            status=Status.OK,
            is_safe=verdict.is_safe,
            confidence=verdict.confidence,
            categories=_judged(self.spec, dict(verdict.categories)),
        )
        return JudgeResult(vote, result.usage)


class TritonJudge:
    """A local classifier on Triton returning P(offensive) per text."""

    def __init__(self, spec: ModelSpec, scorer: TritonScorer, *, threshold: float = 0.5) -> None:
        if not isinstance(spec.backend, TritonBackend):
            raise TypeError("TritonJudge needs a Triton backend")
        self.spec = spec
        self._model = spec.backend.triton_model
        self._scorer = scorer
        self._threshold = threshold

    async def judge(self, text: str, *, timeout_s: float) -> JudgeResult:
        (score,) = await self._scorer.score(self._model, [text], timeout_s=timeout_s)
        vote = Vote(
            model=self.spec.name,
            weight=_weight(self.spec),
            status=Status.OK,
            is_safe=score < self._threshold,
            confidence=max(score, 1.0 - score),
            categories={
                c: score for c in (self.spec.moderation.categories if self.spec.moderation else ())
            },
        )
        return JudgeResult(vote, TokenUsage())
