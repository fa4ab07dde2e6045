"""Which model answers: pure choice over the registry.

Order of precedence: the model the client names; else the cheapest usable model suited to the
task, the others suited to it as fallbacks in price order; else, with automatic routing on,
the task the prompt points to (:class:`AutoRouting`: the first rule whose keywords appear in
it, else the fallback task; with the prompt classifier on, the classifier's task instead when it
is confident, see :func:`decide`), routed the same way; else the default model. Only
generative models (OpenAI-compatible backends, and chat models on Triton) are routed to, and
only while they have a price in effect: a call that could not be billed is never made
(FAILED_PRECONDITION, PRICE_NOT_FOUND).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from quorum import config
from quorum.errors import FailedPrecondition, InvalidArgument
from quorum.pricing import Price, price_at
from quorum.registry import ConfigError, ModelSpec, Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """Prompts holding any of ``keywords`` (compared lower-cased) are ``task`` prompts."""

    task: str
    keywords: tuple[str, ...]


@dataclass(frozen=True)
class TaskGuess:
    """The prompt classifier's answer: its most likely task and that task's probability."""

    task: str
    confidence: float


@dataclass(frozen=True)
class PromptClassifier:
    """``[routing] classifier``: the Triton model that guesses a prompt's task (one
    ``SCORE_<TASK>`` output per task of ``tasks``), the probability from which its guess wins
    over the rules (``classifier_min_confidence``, fitted with the head: see
    ``triton/prompt_task/1/head.json``), and the most time one call of it may take."""

    model: str = "prompt_task"
    tasks: tuple[str, ...] = ("code", "quick", "analysis", "complex")
    min_confidence: float = 0.5
    timeout_s: float = 0.05


def decide(
    rule_task: str,
    rule_why: str,
    guess: TaskGuess | None,
    *,
    min_confidence: float,
    routed: Collection[str],
) -> tuple[str, str]:
    """The task of a prompt that names none, and why, from the keyword rules' task (and their
    reason) and the classifier's guess (None: it did not answer in time, or failed): the
    classifier's task when its confidence reaches ``min_confidence`` and it is one of the
    ``routed`` tasks; the rules' otherwise. The one home of this choice: the router and the
    training script's figures use it."""
    if guess is None:
        return rule_task, f"{rule_why} (the classifier did not answer)"
    if guess.task not in routed:
        return rule_task, f"{rule_why} (the classifier's task {guess.task!r} is not routed)"
    if guess.confidence >= min_confidence:
        return guess.task, f"the classifier chose {guess.task!r} ({guess.confidence:.2f})"
    return rule_task, (
        f"{rule_why} (the classifier is unsure: {guess.task!r} {guess.confidence:.2f})"
    )


@dataclass(frozen=True)
class AutoRouting:
    """The brief's keyword router: the first matching rule wins; no match is
    ``fallback_task``. With a ``classifier``, its confident guesses win over the rules."""

    rules: tuple[Rule, ...]
    #: "" sends prompts no rule matches to the default model
    fallback_task: str = ""
    #: None: the rules alone decide
    classifier: PromptClassifier | None = None

    def rule_task(self, text: str) -> tuple[str, str]:
        """The rules' task for a prompt and why (the keyword that matched, or "no rule
        matched")."""
        lowered = text.lower()
        for rule in self.rules:
            for word in rule.keywords:
                if word in lowered:
                    return rule.task, f"the prompt mentions {word.strip()!r}"
        return self.fallback_task, "no keyword rule matched"

    def task_for(self, text: str, guess: TaskGuess | None = None) -> tuple[str, str]:
        """The task for a prompt and why: the rules', or with a classifier :func:`decide`'s
        over the rules' and ``guess``."""
        task, why = self.rule_task(text)
        if self.classifier is None:
            return task, why
        return decide(
            task, why, guess, min_confidence=self.classifier.min_confidence, routed=self.routed
        )

    @property
    def routed(self) -> frozenset[str]:
        """The tasks this routing can end in: the rules' and the fallback."""
        return frozenset({r.task for r in self.rules} | {self.fallback_task} - {""})


def auto_routing(data: Mapping[str, Any], registry: Registry) -> AutoRouting | None:
    """``[routing]`` of a configuration: the brief's keyword rules (None when ``auto`` is
    off); each task must be one a model serves. The router and the Triton ``select_model``
    model read it here."""
    r = config.section(data, "routing")
    unknown = set(r) - {
        "auto", "fallback_task", "rules", "step_down_at", "step_down_task", "budget_cache_s",
        "no_key_model", *CLASSIFIER_KEYS,
    }  # fmt: skip
    if unknown:
        raise ConfigError(f"routing: unknown keys {sorted(unknown)}")
    if not r.get("auto", False):
        return None
    rules = []
    for i, rule in enumerate(r.get("rules", [])):
        where = f"routing.rules[{i}]"
        if not isinstance(rule, Mapping) or set(rule) != {"task", "keywords"}:
            raise ConfigError(f"{where}: a table with task and keywords")
        words = rule["keywords"]
        if (
            not isinstance(words, list)
            or not words
            or not all(isinstance(w, str) and w for w in words)
        ):
            raise ConfigError(f"{where}.keywords: a list of non-empty strings")
        rules.append(Rule(config.get_str(rule, "task", where), tuple(w.lower() for w in words)))
    fallback = str(r.get("fallback_task", ""))
    served = {t for m in registry.models.values() if m.generative for t in m.tasks}
    unserved = sorted({rule.task for rule in rules} - served | ({fallback} - served - {""}))
    if unserved:
        # a registry of one's own need not serve the brief's tasks: those rules are left out
        # (and an unserved fallback is the default model), said once at start-up
        log.warning("routing: no model serves %s; those rules are not used", unserved)
    return AutoRouting(
        tuple(rule for rule in rules if rule.task in served),
        fallback if fallback in served else "",
        prompt_classifier(r),
    )


CLASSIFIER_KEYS = (
    "classifier", "classifier_model", "classifier_tasks", "classifier_min_confidence",
    "classifier_timeout_s",
)  # fmt: skip


def prompt_classifier(r: Mapping[str, Any]) -> PromptClassifier | None:
    """``[routing] classifier*`` (None when ``classifier`` is off)."""
    on = r.get("classifier", False)
    if not isinstance(on, bool):
        raise ConfigError("routing.classifier: true or false")
    if not on:
        return None
    tasks = r.get("classifier_tasks", list(PromptClassifier.tasks))
    if (
        not isinstance(tasks, list)
        or len(tasks) < 2
        or not all(isinstance(t, str) and t for t in tasks)
    ):
        raise ConfigError("routing.classifier_tasks: a list of two or more task names")
    w = "routing"
    confidence = config.get_float(r, "classifier_min_confidence", w, minimum=0.0)
    if not confidence <= 1.0:
        raise ConfigError("routing.classifier_min_confidence: a probability, 0 to 1")
    timeout = config.get_float(r, "classifier_timeout_s", w, minimum=0.001)
    if not math.isfinite(timeout):
        raise ConfigError("routing.classifier_timeout_s: a number of seconds")
    return PromptClassifier(
        model=config.get_str(r, "classifier_model", w),
        tasks=tuple(tasks),
        min_confidence=confidence,
        timeout_s=timeout,
    )


def triton_models(data: Mapping[str, Any]) -> tuple[str, ...]:
    """The Triton models the router's ``[routing]`` needs (the prompt classifier's, when it is
    on): ``quorum up`` loads them even when they are optional."""
    r = config.section(data, "routing")
    if not r.get("auto", False) or r.get("classifier", False) is not True:
        return ()
    return (str(r.get("classifier_model", PromptClassifier.model)),)


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
    guess: TaskGuess | None = None,
) -> Route:
    """The route for a call at ``at_us`` (default: now), whose prices decide; ``text`` is
    the prompt, read by ``auto`` when neither a model nor a task is named, and ``guess`` the
    prompt classifier's answer for it (when ``auto`` has a classifier and it answered)."""
    at = time.time_ns() // 1000 if at_us is None else at_us
    if not model and not task and auto is not None:
        task, why = auto.task_for(text, guess)
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
