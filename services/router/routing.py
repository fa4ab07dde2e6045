"""Which model answers: pure choice over the registry.

Order of precedence: the model the client names; else the cheapest usable model suited to the
task, the others suited to it as fallbacks in price order; else, with automatic routing on,
the task the prompt's words point to (:class:`AutoRouting`: the first rule whose keywords
appear in it, else the fallback task), routed the same way; else the default model. Only
generative models (OpenAI-compatible backends, and chat models on Triton) are routed to, and
only while they have a price in effect: a call that could not be billed is never made
(FAILED_PRECONDITION, PRICE_NOT_FOUND).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from quorum.errors import FailedPrecondition, InvalidArgument
from quorum.pricing import Price, price_at
from quorum.registry import ModelSpec, Registry


@dataclass(frozen=True)
class Rule:
    """Prompts holding any of ``keywords`` (compared lower-cased) are ``task`` prompts."""

    task: str
    keywords: tuple[str, ...]


@dataclass(frozen=True)
class AutoRouting:
    """The brief's keyword router: the first matching rule wins; no match is
    ``fallback_task``."""

    rules: tuple[Rule, ...]
    #: "" sends prompts no rule matches to the default model
    fallback_task: str = ""

    def task_for(self, text: str) -> tuple[str, str]:
        """The task for a prompt and why (the keyword that matched, or "no rule matched")."""
        lowered = text.lower()
        for rule in self.rules:
            for word in rule.keywords:
                if word in lowered:
                    return rule.task, f"the prompt mentions {word.strip()!r}"
        return self.fallback_task, "no keyword rule matched"


@dataclass(frozen=True)
class Route:
    candidates: tuple[ModelSpec, ...]  # first is the choice, the rest are fallbacks
    reason: str


def _generative(spec: ModelSpec) -> bool:
    return spec.generative


def _list_price(price: Price) -> Decimal:
    return price.input_per_mtok + price.output_per_mtok


def choose(
    registry: Registry,
    *,
    model: str = "",
    task: str = "",
    at_us: int | None = None,
    auto: AutoRouting | None = None,
    text: str = "",
) -> Route:
    """The route for a call at ``at_us`` (default: now), whose prices decide; ``text`` is
    the prompt, read by ``auto`` when neither a model nor a task is named."""
    at = time.time_ns() // 1000 if at_us is None else at_us
    if not model and not task and auto is not None:
        task, why = auto.task_for(text)
        so = f"task {task!r}; " if task else ""
        try:
            route = choose(registry, task=task, at_us=at)
        except FailedPrecondition:  # no model for the task can be called now (no key)
            route = choose(registry, at_us=at)
            so = f"task {task!r} has no usable model; "
        return Route(route.candidates, f"automatic: {why}, so {so}{route.reason}")
    if model:
        spec = registry.usable(model)
        if not _generative(spec):
            raise InvalidArgument(
                f"model {model!r} is a classifier and cannot complete prompts",
                reason="MODEL_NOT_GENERATIVE",
                metadata={"model": model},
            )
        price_at(spec.name, spec.pricing, at)  # PriceNotFound
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
        priced: list[tuple[ModelSpec, Price]] = []
        for m in suited:
            price = m.pricing.at(at)
            if m.unavailable_reason is None and price is not None:
                priced.append((m, price))
        priced.sort(key=lambda mp: (_list_price(mp[1]), mp[0].name))
        usable = [m for m, _ in priced]
        if not usable:
            raise FailedPrecondition(
                f"no usable model for task {task!r}: "
                + "; ".join(
                    f"{m.name}: {m.unavailable_reason or 'no price in effect'}" for m in suited
                ),
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
    spec = registry.usable(registry.default_model)
    price_at(spec.name, spec.pricing, at)  # PriceNotFound
    return Route((spec,), "default model")


def step_down(registry: Registry, route: Route, task: str, used: float, at_us: int) -> Route:
    """``route`` moved to the cheapest usable models for ``task`` (the tenant has used
    ``used`` of a budget): the cheaper ones first, the original choice kept as a fallback.
    Unchanged when nothing cheaper serves the task."""
    try:
        cheap = choose(registry, task=task, at_us=at_us)
    except (FailedPrecondition, InvalidArgument):
        return route
    first = route.candidates[0]
    first_price = first.pricing.at(at_us)
    if first_price is None:
        return route
    cheaper = [
        m
        for m in cheap.candidates
        if (p := m.pricing.at(at_us)) is not None and _list_price(p) < _list_price(first_price)
    ]
    if not cheaper:
        return route
    rest = [m for m in route.candidates if m not in cheaper]
    return Route(
        (*cheaper, *rest),
        f"stepped down to the cheapest model for task {task!r}: the tenant has used "
        f"{used:.0%} of its budget (was: {route.reason})",
    )
