"""Parse a judge model's verdict robustly.

LLMs asked for JSON answer with JSON, JSON in a code fence, JSON after a sentence, "true" as
a string, confidence as a percentage, or garbage. :func:`parse_verdict` takes any string and
returns a :class:`Verdict` or raises :class:`VerdictParseError` (and nothing else).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quorum.registry import CATEGORIES

MAX_VERDICT_CHARS = 20_000

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_ALIASES = {
    "sexual": "adult",
    "sexual_content": "adult",
    "nsfw": "adult",
    "hate_speech": "hate",
    "harassment": "harassment",
    "insult": "harassment",
    "toxicity": "harassment",
    "violent": "violence",
    "scam": "spam",
    "prompt_injection": "injection",
    "jailbreak": "injection",
    "selfharm": "self_harm",
    "suicide": "self_harm",
}


class VerdictParseError(ValueError):
    """The answer holds no usable verdict."""


@dataclass(frozen=True)
class Verdict:
    is_safe: bool
    confidence: float
    categories: Mapping[str, float] = field(default_factory=dict)


def _objects(text: str) -> list[Any]:
    """Every JSON object found in ``text``: whole, fenced, or embedded in prose."""
    found: list[Any] = []
    candidates = [text.strip()] + [m.strip() for m in _FENCE.findall(text)]
    decoder = json.JSONDecoder()
    for cand in candidates:
        try:
            found.append(json.loads(cand))
            continue
        except ValueError:
            pass
        for i, ch in enumerate(cand):
            if ch == "{":
                try:
                    obj, _ = decoder.raw_decode(cand[i:])
                except ValueError:
                    continue
                found.append(obj)
                break
    return [o for o in found if isinstance(o, dict)]


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if v in {"true", "yes", "safe", "1"}:
            return True
        if v in {"false", "no", "unsafe", "0", "flagged"}:
            return False
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    return None


def _unit(value: Any) -> float | None:
    """A score in [0, 1]; percentages (1 < x <= 100) are scaled; anything else is None."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, str):
        try:
            value = float(value.strip().rstrip("%"))
        except ValueError:
            return None
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    x = float(value)
    if 1.0 < x <= 100.0:
        x /= 100.0
    if 0.0 <= x <= 1.0:
        return x
    return None


def _categories(raw: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, list):  # ["hate", "spam"] means flagged
        items = [(c, 1.0) for c in raw if isinstance(c, str)]
    else:
        return out
    for key, value in items:
        if not isinstance(key, str):
            continue
        name = key.strip().lower().replace("-", "_").replace(" ", "_")
        name = _ALIASES.get(name, name)
        if name not in CATEGORIES:
            continue
        if isinstance(value, Mapping):
            value = value.get("score", value.get("probability"))
        score = _unit(value)
        if score is not None:
            out[name] = max(out.get(name, 0.0), score)
    return out


def parse_verdict(text: str) -> Verdict:
    if not isinstance(text, str) or not text.strip():
        raise VerdictParseError("empty answer")
    if len(text) > MAX_VERDICT_CHARS:
        raise VerdictParseError("answer too long")
    for obj in _objects(text):
        lowered = {str(k).strip().lower(): v for k, v in obj.items()}
        cats = _categories(lowered.get("categories", lowered.get("category_scores", {})))
        is_safe = _bool(lowered.get("is_safe", lowered.get("safe")))
        if is_safe is None:
            flagged = _bool(lowered.get("flagged", lowered.get("unsafe")))
            is_safe = None if flagged is None else not flagged
        if is_safe is None:
            continue
        conf = _unit(lowered.get("confidence", lowered.get("score")))
        return Verdict(is_safe=is_safe, confidence=1.0 if conf is None else conf, categories=cats)
    raise VerdictParseError("no verdict object with is_safe in the answer")
