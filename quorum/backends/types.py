"""Plain data that crosses the backend seam (no gRPC, no HTTP types)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    #: OpenAI ``response_format`` object, e.g. {"type": "json_schema", "json_schema": {...}}
    response_format: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    #: the part of ``input_tokens`` the provider served from its prompt cache
    cached_input_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        """Both calls' tokens together."""
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
        )


@dataclass(frozen=True)
class Routed:
    """What a routing backend (``triton_outputs = "routed"``) says of its answer: the
    registry model it chose and that wrote the answer (the call is billed as that model's),
    why it chose it, and whether the provider simulator answered."""

    model: str
    reason: str = ""
    simulated: bool = False


@dataclass(frozen=True)
class ChatResult:
    text: str
    usage: TokenUsage
    finish_reason: str = ""
    #: the model name the provider reported (may differ from what was asked)
    provider_model: str = ""
    #: False when the provider sent no usage block: ``usage`` is then zero, not an estimate
    usage_reported: bool = True
    #: set by a routing backend: the model it chose (None: the model asked for answered)
    routed: Routed | None = None


@dataclass(frozen=True)
class ChatChunk:
    """One piece of a streamed answer. The last chunk carries usage and finish_reason."""

    delta: str = ""
    usage: TokenUsage | None = None
    finish_reason: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    #: on the last chunk: False when the provider sent no usage (``usage`` is then zero)
    usage_reported: bool = True
    #: on the last chunk of a routing backend: the model it chose (see ChatResult)
    routed: Routed | None = None
