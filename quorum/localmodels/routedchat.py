"""The brief's Triton-native path, as pure code: the two steps of the ``routed_chat`` ensemble
(``triton/routed_chat``), thin adapters in ``triton/select_model`` and ``triton/chat_generate``.

- :class:`ModelSelector` (step 1): a prompt and the brief's ``MODEL_SELECT`` id in, the
  registry model's name out. An id names its model (0 = gpt-4.1, 1 = claude-sonnet-4.5,
  2 = gemini-2.5-flash, 3 = deepseek-v3.2 with the embedded registry); :data:`SELECT_AUTO`
  (-1) routes from the prompt with the router's own rules (``[routing]``,
  :func:`services.router.routing.choose`), so code goes to deepseek-v3.2. An unknown id is
  :class:`~quorum.errors.NotFound` (the brief falls back to gpt-4.1; Quorum refuses).
- :class:`Generator` (step 2): the prompt and the model name in; one OpenAI-compatible chat
  completion through :class:`quorum.backends.openai.OpenAIChat` (the router's adapter: its
  error table, no secret in any message) with a deadline and bounded retries
  (:class:`quorum.retry.RetryPolicy`: transient failures and 429 only, Retry-After honoured,
  never past the deadline); the answer, the model and the token counts out.

Both read the same configuration as the services (:func:`quorum.config.load`: the embedded
defaults, ``$QUORUM_CONFIG``, ``QUORUM_*`` variables), and so the same registry: a model's
endpoint and API-key variable come from its provider; a model whose key is not in the
environment is answered by the provider simulator when ``[router] simulator_url`` is set
(as in the router), and is otherwise refused (FAILED_PRECONDITION, naming the variable).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quorum.backends.openai import OpenAIChat
from quorum.backends.types import ChatMessage, ChatRequest
from quorum.errors import DeadlineExceeded, InvalidArgument, QuorumError
from quorum.registry import OpenAIBackend, Registry, load_registry
from quorum.retry import RetryPolicy
from services.router.routing import AutoRouting, auto_routing, choose

__all__ = ["SELECT_AUTO", "Generation", "Generator", "ModelSelector", "resolved_registry"]

#: MODEL_SELECT for "route from the prompt"
SELECT_AUTO = -1


def resolved_registry(data: Mapping[str, Any], env: Mapping[str, str]) -> Registry:
    """The registry of ``data`` bound to ``env``'s API keys, keyless models on the simulator
    when ``[router] simulator_url`` is set (the router's rule)."""
    simulator = str(data.get("router", {}).get("simulator_url") or "")
    return load_registry(data).resolve_keys(env, simulator_url=simulator or None)


@dataclass(frozen=True)
class ModelSelector:
    registry: Registry
    auto: AutoRouting | None

    @classmethod
    def from_config(cls, data: Mapping[str, Any], env: Mapping[str, str]) -> ModelSelector:
        registry = resolved_registry(data, env)
        return cls(registry, auto_routing(data, registry))

    def select(self, text: str, model_select: int) -> str:
        """The registry name of the model for ``text``. Raises InvalidArgument for an id
        below -1, NotFound for an unknown one, FailedPrecondition when no model can answer."""
        if model_select == SELECT_AUTO:
            auto = self.auto or AutoRouting((), "")  # auto routing off: the default model
            return choose(self.registry, auto=auto, text=text).candidates[0].name
        if model_select < SELECT_AUTO:
            raise InvalidArgument(
                f"MODEL_SELECT: {model_select} is neither a model id (>= 0) nor -1 (automatic)",
                reason="INVALID_FIELD",
                metadata={"field": "MODEL_SELECT"},
            )
        return self.registry.by_id(model_select).name


@dataclass(frozen=True)
class Generation:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int


class Generator:
    """Chat completions for the ``chat_generate`` step. ``chat`` holds the one long-lived
    HTTP client (open it at start-up, close it at shutdown)."""

    def __init__(
        self,
        registry: Registry,
        chat: OpenAIChat,
        *,
        timeout_s: float,
        retry: RetryPolicy,
        max_tokens: int | None = None,
    ) -> None:
        if timeout_s <= 0 or retry.max_attempts < 1:
            raise ValueError("timeout_s must be > 0 and max_attempts >= 1")
        self.registry = registry
        self.timeout_s = timeout_s
        self.retry = retry
        self.max_tokens = max_tokens
        self._chat = chat

    def backend(self, model: str) -> OpenAIBackend:
        spec = self.registry.usable(model)  # NotFound, FailedPrecondition (no key)
        if not isinstance(spec.backend, OpenAIBackend):
            raise InvalidArgument(
                f"MODEL: {model!r} is a classifier and cannot complete prompts",
                reason="MODEL_NOT_GENERATIVE",
                metadata={"model": model},
            )
        return spec.backend

    async def generate(self, text: str, model: str) -> Generation:
        """One completion of ``text`` by ``model``, within :attr:`timeout_s` overall."""
        backend = self.backend(model)
        request = ChatRequest(
            messages=(ChatMessage(role="user", content=text),), max_tokens=self.max_tokens
        )
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"{model}: no answer within {self.timeout_s:g}s",
                    reason="DEADLINE_EXCEEDED",
                    metadata={"model": model},
                )
            try:
                result = await self._chat.complete(backend, request, timeout_s=remaining)
            except QuorumError as err:
                wait = self.retry.next_wait(err, attempt, deadline - time.monotonic())
                if wait is None:
                    raise
                await asyncio.sleep(wait)
                continue
            return Generation(
                result.text, model, result.usage.input_tokens, result.usage.output_tokens
            )


def triton_error(pb_utils: Any, err: QuorumError) -> Any:
    """A per-request ``TritonError`` for ``err``: its message (ours, never a provider's) with
    its reason, and the Triton code nearest its gRPC status."""
    from quorum import errors

    codes = pb_utils.TritonError
    code = codes.INTERNAL
    if isinstance(err, errors.InvalidArgument | errors.FailedPrecondition):
        code = codes.INVALID_ARG
    elif isinstance(err, errors.NotFound):
        code = codes.NOT_FOUND
    elif isinstance(err, errors.Unavailable | errors.ResourceExhausted | errors.DeadlineExceeded):
        code = codes.UNAVAILABLE
    return pb_utils.TritonError(f"{err.message} [{err.reason}]", code)
