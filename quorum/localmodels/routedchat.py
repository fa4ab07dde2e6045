"""The brief's Triton-native path, as pure code: the two steps of the ``routed_chat`` ensemble
(``triton/routed_chat``), thin adapters in ``triton/select_model`` and ``triton/chat_generate``.

- :class:`ModelSelector` (step 1): a prompt and the brief's ``MODEL_SELECT`` id in, the
  registry model's name out. An id names its model (0 = gpt-4.1, 1 = claude-sonnet-4.5,
  2 = gemini-2.5-flash, 3 = deepseek-v3.2 with the embedded registry); :data:`SELECT_AUTO`
  (-1) routes from the prompt with the router's own rules (``[routing]``,
  :func:`services.router.routing.choose`), so code goes to deepseek-v3.2. An unknown id is
  :class:`~quorum.errors.NotFound` (the brief falls back to gpt-4.1; Quorum refuses). The
  :class:`Selection` says why (the route's reason, or the id), output ``ROUTE_REASON``.
- :class:`Generator` (step 2): the prompt and the model name in; one OpenAI-compatible chat
  completion through :class:`quorum.backends.openai.OpenAIChat` (the router's adapter: its
  error table, no secret in any message) with a deadline and bounded retries
  (:class:`quorum.retry.RetryPolicy`: transient failures and 429 only, Retry-After honoured,
  never past the deadline); the answer, the model, the token counts and whether the provider
  simulator answered (output ``SIMULATED``) out.

Both read the same configuration as the services (:func:`quorum.config.load`: the embedded
defaults, ``$QUORUM_CONFIG``, ``QUORUM_*`` variables), and so the same registry: a model's
endpoint and API-key variable come from its provider; a model whose key is not in the
environment is answered by the provider simulator when ``[router] simulator_url`` is set
(as in the router), and is otherwise refused (FAILED_PRECONDITION, naming the variable).

The ensemble's contract with its callers (the router's adapter,
:mod:`quorum.backends.tritonrouted`, reads it here):

- outputs :data:`OUTPUTS`;
- optional request parameters (KServe v2 ``parameters``; an ensemble hands them to its steps):
  ``timeout_ms``, the caller's deadline (the step gives up within it and never outlives the
  caller), ``max_tokens`` and ``temperature`` (:func:`call_options`);
- a per-request error's message ends with ``[<class>:<REASON>]``, the
  :mod:`quorum.errors` class and reason it was raised with (:func:`error_text`), so a caller
  gets back the same error (:func:`parse_error_tag`) without reading anything else of
  Triton's text.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quorum import errors
from quorum.backends.openai import OpenAIChat
from quorum.backends.types import ChatMessage, ChatRequest
from quorum.errors import DeadlineExceeded, InvalidArgument, QuorumError
from quorum.registry import OpenAIBackend, Registry, load_registry
from quorum.retry import RetryPolicy
from services.router.routing import AutoRouting, auto_routing, choose

__all__ = [
    "OUTPUTS",
    "SELECT_AUTO",
    "CallOptions",
    "Generation",
    "Generator",
    "ModelSelector",
    "Selection",
    "call_options",
    "error_text",
    "parse_error_tag",
    "resolved_registry",
]

#: MODEL_SELECT for "route from the prompt"
SELECT_AUTO = -1
#: the ensemble's outputs: the answer, the model that wrote it, its token counts, whether the
#: provider simulator answered, and why select_model chose the model
OUTPUTS = ("ANSWER", "MODEL", "PROMPT_TOKENS", "COMPLETION_TOKENS", "SIMULATED", "ROUTE_REASON")
#: the request parameters :func:`call_options` reads
PARAM_TIMEOUT_MS = "timeout_ms"
PARAM_MAX_TOKENS = "max_tokens"
PARAM_TEMPERATURE = "temperature"
MAX_TOKENS_LIMIT = 32_768


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

    def select(self, text: str, model_select: int) -> Selection:
        """The registry model for ``text``, and why. Raises InvalidArgument for an id below
        -1, NotFound for an unknown one, FailedPrecondition when no model can answer."""
        if model_select == SELECT_AUTO:
            auto = self.auto or AutoRouting((), "")  # auto routing off: the default model
            route = choose(self.registry, auto=auto, text=text)
            return Selection(route.candidates[0].name, route.reason)
        if model_select < SELECT_AUTO:
            raise InvalidArgument(
                f"MODEL_SELECT: {model_select} is neither a model id (>= 0) nor -1 (automatic)",
                reason="INVALID_FIELD",
                metadata={"field": "MODEL_SELECT"},
            )
        name = self.registry.by_id(model_select).name
        return Selection(name, f"MODEL_SELECT {model_select} is {name}")


@dataclass(frozen=True)
class Selection:
    #: the registry name of the chosen model
    model: str
    #: why: the route's reason, or the id that named the model
    reason: str


@dataclass(frozen=True)
class Generation:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    #: the provider simulator answered (the model's API key is not set where Triton runs)
    simulated: bool = False


@dataclass(frozen=True)
class CallOptions:
    """What a caller may set for one request (request parameters, see :func:`call_options`);
    None: the step's own setting."""

    timeout_s: float | None = None
    max_tokens: int | None = None
    temperature: float | None = None


def call_options(parameters: str | Mapping[str, Any] | None) -> CallOptions:
    """The request parameters (a request's ``parameters()`` JSON, or the mapping) as
    :class:`CallOptions`: ``timeout_ms`` an integer > 0, ``max_tokens`` an integer within
    0..32768 (0: the step's own), ``temperature`` a number within 0..2 (a numeric string is
    taken: not every client sends doubles). Other parameters are ignored; a bad value is
    InvalidArgument (reason INVALID_FIELD) naming it."""
    if parameters is None or parameters == "":
        return CallOptions()
    if isinstance(parameters, str):
        try:
            parameters = json.loads(parameters)
        except ValueError:
            raise _bad_param("parameters", "is not a JSON object") from None
    if not isinstance(parameters, Mapping):
        raise _bad_param("parameters", "is not a JSON object")
    timeout_s: float | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    if PARAM_TIMEOUT_MS in parameters:
        ms = parameters[PARAM_TIMEOUT_MS]
        if isinstance(ms, bool) or not isinstance(ms, int) or ms <= 0:
            raise _bad_param(PARAM_TIMEOUT_MS, "must be an integer > 0")
        timeout_s = ms / 1000
    if PARAM_MAX_TOKENS in parameters:
        n = parameters[PARAM_MAX_TOKENS]
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_TOKENS_LIMIT:
            raise _bad_param(PARAM_MAX_TOKENS, f"must be an integer within 0..{MAX_TOKENS_LIMIT}")
        max_tokens = n or None
    if PARAM_TEMPERATURE in parameters:
        temperature = _number(parameters[PARAM_TEMPERATURE])
        if temperature is None or not 0.0 <= temperature <= 2.0:
            raise _bad_param(PARAM_TEMPERATURE, "must be a number within 0..2")
    return CallOptions(timeout_s, max_tokens, temperature)


def _number(value: Any) -> float | None:
    """A finite number, from a number or a numeric string; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _bad_param(name: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"request parameter {name} {why}", reason="INVALID_FIELD", metadata={"field": name}
    )


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

    async def generate(
        self, text: str, model: str, options: CallOptions | None = None
    ) -> Generation:
        """One completion of ``text`` by ``model``, within :attr:`timeout_s` overall, or the
        caller's ``options.timeout_s`` when that is sooner."""
        options = options or CallOptions()
        backend = self.backend(model)
        request = ChatRequest(
            messages=(ChatMessage(role="user", content=text),),
            max_tokens=options.max_tokens or self.max_tokens,
            temperature=options.temperature,
        )
        timeout_s = min(self.timeout_s, options.timeout_s or self.timeout_s)
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"{model}: no answer within {timeout_s:g}s",
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
                result.text,
                model,
                result.usage.input_tokens,
                result.usage.output_tokens,
                simulated=backend.provider.simulated,
            )


#: the classes an error tag may name: every class of the tree but the base
_ERROR_CLASSES: dict[str, type[QuorumError]] = {
    cls.__name__: cls
    for cls in (
        errors.InvalidArgument, errors.ContentBlocked, errors.NotFound, errors.AlreadyExists,
        errors.FailedPrecondition, errors.ResourceExhausted, errors.Unauthenticated,
        errors.PermissionDenied, errors.Unavailable, errors.DeadlineExceeded, errors.Internal,
    )
}  # fmt: skip
_TAG = re.compile(r"\[([A-Za-z]{3,40}):([A-Z][A-Z0-9_]{1,63})\]\s*$")


def error_text(err: QuorumError) -> str:
    """The message of a per-request error: ours (never a provider's), ending with its tag
    ``[<class>:<REASON>]`` (the nearest class of the tree for a class of one's own)."""
    name = next((c.__name__ for c in type(err).__mro__ if c.__name__ in _ERROR_CLASSES), "")
    return f"{err.message} [{name or 'Internal'}:{err.reason}]"


def parse_error_tag(text: str) -> tuple[type[QuorumError], str] | None:
    """The class and reason of an :func:`error_text` message (Triton may put words of its own
    before it), or None when it holds no tag of ours."""
    m = _TAG.search(text)
    if m is None or m.group(1) not in _ERROR_CLASSES:
        return None
    return _ERROR_CLASSES[m.group(1)], m.group(2)


def triton_error(pb_utils: Any, err: QuorumError) -> Any:
    """A per-request ``TritonError`` for ``err``: :func:`error_text`, and the Triton code
    nearest its gRPC status."""
    codes = pb_utils.TritonError
    code = codes.INTERNAL
    if isinstance(err, errors.InvalidArgument | errors.FailedPrecondition):
        code = codes.INVALID_ARG
    elif isinstance(err, errors.NotFound):
        code = codes.NOT_FOUND
    elif isinstance(err, errors.Unavailable | errors.ResourceExhausted | errors.DeadlineExceeded):
        code = codes.UNAVAILABLE
    return pb_utils.TritonError(error_text(err), code)
