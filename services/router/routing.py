"""Which model answers: pure choice over the registry.

Order of precedence: the model the client names; else the cheapest usable model suited to the
task, the others suited to it as fallbacks in price order; else the default model. Only
generative models (OpenAI-compatible backends) are routed to.
"""

from __future__ import annotations

from dataclasses import dataclass

from quorum.errors import FailedPrecondition, InvalidArgument
from quorum.registry import ModelSpec, OpenAIBackend, Registry


@dataclass(frozen=True)
class Route:
    candidates: tuple[ModelSpec, ...]  # first is the choice, the rest are fallbacks
    reason: str


def _generative(spec: ModelSpec) -> bool:
    return isinstance(spec.backend, OpenAIBackend)


def _price_key(spec: ModelSpec) -> tuple[object, ...]:
    return (spec.price.input_per_mtok + spec.price.output_per_mtok, spec.name)


def choose(registry: Registry, *, model: str = "", task: str = "") -> Route:
    if model:
        spec = registry.usable(model)
        if not _generative(spec):
            raise InvalidArgument(
                f"model {model!r} is a classifier and cannot complete prompts",
                reason="MODEL_NOT_GENERATIVE",
                metadata={"model": model},
            )
        return Route((spec,), "requested by the client")
    if task:
        suited = [m for m in registry.models.values() if task in m.tasks and _generative(m)]
        if not suited:
            known = sorted({t for m in registry.models.values() if _generative(m) for t in m.tasks})
            raise InvalidArgument(
                f"no model is configured for task {task[:50]!r}; known tasks: {', '.join(known)}",
                reason="UNKNOWN_TASK",
                metadata={"task": task[:50]},
            )
        usable = sorted((m for m in suited if m.unavailable_reason is None), key=_price_key)
        if not usable:
            raise FailedPrecondition(
                f"no usable model for task {task!r}: "
                + "; ".join(f"{m.name}: {m.unavailable_reason}" for m in suited),
                reason="MODEL_NOT_CONFIGURED",
                metadata={"task": task},
            )
        return Route(tuple(usable), f"cheapest usable model for task {task!r}")
    if not registry.default_model:
        raise InvalidArgument(
            "name a model or a task: no default model is configured",
            reason="MODEL_REQUIRED",
            metadata={"field": "model"},
        )
    return Route((registry.usable(registry.default_model),), "default model")
