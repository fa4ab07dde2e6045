"""The model registry: every model is named once, here, from configuration.

A model has a backend (an OpenAI-compatible HTTP provider, or a model on Triton), prices,
the tasks it suits and, when it can judge content, its moderation weight and categories.
Router and voter read the same registry; nothing names a model in code.

The registry is plain data built from a TOML table (see ``quorum/defaults.toml``)::

    [providers.openai]
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"      # the *name* of the variable; never the key
    json_mode = "json_schema"           # or "json_object", "none": how judges ask for JSON

    [models.gpt-4-1]
    name = "gpt-4.1"                    # optional; defaults to the table key
    provider = "openai"                 # or backend = "triton" + triton_model = "..."
    provider_model = "gpt-4.1"
    input_per_mtok = "2.00"             # price per million tokens, decimal string: the
    output_per_mtok = "8.00"            # price since the beginning (both keys, or neither)
    cached_input_per_mtok = "0.50"      # prompt-cache hits; optional, default the input price
    currency = "USD"                    # the list currency; optional, default USD
    tasks = ["chat", "code"]
    moderation = { weight = 1.0, categories = ["violence", "adult", "hate", "spam"] }

    [[models.gpt-4-1.prices]]           # later prices, oldest first, each with its date
    effective_from = "2026-12-01T00:00:00Z"   # RFC 3339 with a zone
    input_per_mtok = "1.50"
    output_per_mtok = "6.00"            # (cached_input_per_mtok and currency optional)

    [models.profanity-check]
    backend = "triton"
    triton_model = "profanity_check"    # one output SCORE, reported for every category
    input_per_mtok = "0"                # free, and says so: a model with no price cannot
    output_per_mtok = "0"               # be billed (PRICE_NOT_FOUND), it is never $0
    moderation = { weight = 1.0, categories = ["harassment", "hate"], threshold = 0.5 }

    [models.smollm2-135m]               # a generative model on Triton (streams text and
    backend = "triton"                  # its own token counts)
    triton_model = "smollm2"
    triton_outputs = "chat"
    input_per_mtok = "0"
    output_per_mtok = "0"

    [models.routed-chat]                # the routed_chat ensemble (triton/routed_chat): it
    backend = "triton"                  # picks a model and generates with it; the call is
    triton_model = "routed_chat"        # billed at the prices of the model that wrote the
    triton_outputs = "routed"           # answer. Its own prices are what the call is reserved
    input_per_mtok = "3.00"             # at and, when no answer came back, estimated at: the
    output_per_mtok = "15.00"           # dearest model it may pick

    [models.text-heads]
    backend = "triton"
    triton_model = "text_heads"
    triton_outputs = "per_category"     # one output SCORE_<CATEGORY> per category
    moderation = { weight = 1.0, categories = ["spam", "violence"],
                   threshold = { spam = 0.6, violence = 0.3 } }

A provider (or one model) that bills in another currency than its list prices' says so, with
its own rate or, without one, the official rate of the day from ``[[exchange_rates]]``::

    [providers.reseller]
    base_url = "https://api.reseller.example/v1"
    billing_currency = "CNY"            # costs of its models are recorded in CNY
    billing_rate = "1"                  # 1 CNY per 1 USD of list price (or dated:
                                        # [[providers.reseller.billing_rates]] rate, effective_from)

    [[exchange_rates]]                  # official rates: dated data, never constants in code
    from = "USD"
    to = "CNY"
    rate = "7.3"                        # CNY per USD; converts CNY to USD too, by division
    effective_from = "2026-01-01T00:00:00Z"   # optional for a pair's first rate

A Triton judge's ``threshold`` is its cut-off (a score at or above it votes unsafe): one number
for all its categories or one per category. It is required for Triton judges (each model's
scale is its own) and refused for LLM judges, which give their own verdict.

This module is pure: it reads a mapping and an environment mapping, never the network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from quorum import money
from quorum.errors import FailedPrecondition, NotFound
from quorum.money import ExchangeRate, Rates
from quorum.pricing import Billing, Price, Pricing

#: Moderation categories every verdict reports (the enum in quorum.common.v1 mirrors these).
CATEGORIES: tuple[str, ...] = (
    "violence",
    "adult",
    "hate",
    "spam",
    "harassment",
    "injection",
    "self_harm",
)

SIMULATOR_PROVIDER = "simulator"


class ConfigError(ValueError):
    """The configuration is invalid; raised at start-up, never while serving."""


JsonMode = Literal["json_schema", "json_object", "none"]
JSON_MODES: tuple[str, ...] = ("json_schema", "json_object", "none")


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str
    api_key_env: str | None = None
    simulated: bool = False
    #: how to ask for JSON: OpenAI-style structured output, plain JSON mode, or the prompt only
    json_mode: JsonMode = "json_schema"


@dataclass(frozen=True)
class OpenAIBackend:
    """An OpenAI-compatible chat-completions endpoint."""

    provider: Provider
    provider_model: str
    kind: Literal["openai"] = "openai"
    #: the registry's name of the model this endpoint serves: spans name the model by it (the
    #: provider's own name is ``gen_ai.request.model``); "" falls back to ``provider_model``
    model: str = ""


TritonOutputs = Literal["score", "per_category", "chat", "routed"]
TRITON_OUTPUTS: tuple[str, ...] = ("score", "per_category", "chat", "routed")
#: the Triton outputs of generative models (a judge never is one)
GENERATIVE_OUTPUTS: tuple[str, ...] = ("chat", "routed")


@dataclass(frozen=True)
class TritonBackend:
    """A model served by our Triton model repository (``triton/<triton_model>``).

    ``outputs``: ``"score"``, one ``SCORE`` output that stands for every category the model
    judges; ``"per_category"``, one ``SCORE_<CATEGORY>`` output per category; ``"chat"``, a
    generative model: a decoupled model that streams ``TEXT`` deltas and ends with its token
    counts (:mod:`quorum.backends.tritonchat`); ``"routed"``, a generative ensemble that
    chooses one of the registry's models itself and answers with it, naming the model and
    its token counts (``triton/routed_chat``, :mod:`quorum.backends.tritonrouted`).
    """

    triton_model: str
    kind: Literal["triton"] = "triton"
    outputs: TritonOutputs = "score"
    #: the registry's name of the model (as for :class:`OpenAIBackend`)
    model: str = ""


Backend = OpenAIBackend | TritonBackend


@dataclass(frozen=True)
class Moderation:
    weight: float
    categories: tuple[str, ...]
    #: a scoring (Triton) judge's cut-off per category: a score at or above it votes
    #: "unsafe". Required for Triton judges (each model's scale is its own, so it is measured
    #: per model and lives here); empty for LLM judges, which give their own verdict.
    thresholds: Mapping[str, float] = field(default_factory=dict)
    #: the one cut-off of an entry that gives a single number for all its categories; None
    #: for a per-category table and for LLM judges
    threshold: float | None = None

    def cutoff(self, category: str) -> float:
        """The cut-off for ``category`` (KeyError when the judge has none)."""
        return self.thresholds[category]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backend: Backend
    #: its prices over time and how it is billed; no prices: it cannot be billed
    pricing: Pricing = field(default_factory=Pricing)
    tasks: tuple[str, ...] = ()
    moderation: Moderation | None = None
    max_output_tokens: int = 1024
    #: why the model cannot be used right now (e.g. its key is not set); None when usable
    unavailable_reason: str | None = None
    #: the brief's integer model id (its MODEL_SELECT input), when the model has one
    model_id: int | None = None

    @property
    def generative(self) -> bool:
        """Whether the model completes prompts: an OpenAI-compatible chat model, or a chat
        model or routing ensemble on Triton (``triton_outputs = "chat"`` or ``"routed"``);
        the other Triton models only score."""
        b = self.backend
        return isinstance(b, OpenAIBackend) or b.outputs in GENERATIVE_OUTPUTS

    @property
    def simulated(self) -> bool:
        return isinstance(self.backend, OpenAIBackend) and self.backend.provider.simulated

    @property
    def provider_name(self) -> str:
        if isinstance(self.backend, OpenAIBackend):
            return self.backend.provider.name
        return "triton"


@dataclass(frozen=True)
class Registry:
    models: Mapping[str, ModelSpec]
    default_model: str
    providers: Mapping[str, Provider] = field(default_factory=dict)
    #: the official exchange rates (``[[exchange_rates]]``)
    rates: Rates = field(default_factory=Rates)

    def get(self, name: str) -> ModelSpec:
        """The model called ``name``; NotFound names the known ones."""
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFound(
                f"unknown model {name!r}; known models: {known}",
                reason="MODEL_NOT_FOUND",
                metadata={"model": name[:100]},
            ) from None

    def by_id(self, model_id: int) -> ModelSpec:
        """The model with the brief's integer id; NotFound (field ``model_id``) names the
        known ids."""
        for spec in self.models.values():
            if spec.model_id == model_id:
                return spec
        known = ", ".join(
            f"{m.model_id} = {m.name}"
            for m in sorted(self.models.values(), key=lambda m: m.model_id or 0)
            if m.model_id is not None
        )
        raise NotFound(
            f"model_id: no model has id {model_id}; known: {known or 'none'}",
            reason="MODEL_NOT_FOUND",
            metadata={"field": "model_id", "model_id": str(model_id)},
        )

    def usable(self, name: str) -> ModelSpec:
        """Like :meth:`get`, but FailedPrecondition when the model cannot be called now."""
        spec = self.get(name)
        if spec.unavailable_reason:
            raise FailedPrecondition(
                f"model {name!r} is not usable: {spec.unavailable_reason}",
                reason="MODEL_NOT_CONFIGURED",
                metadata={"model": name},
            )
        return spec

    def without(self, reasons: Mapping[str, str]) -> Registry:
        """The models named in ``reasons`` marked unavailable, each for its reason (e.g. a
        Triton chat model that is not loaded)."""
        models = {
            name: replace(spec, unavailable_reason=reasons[name]) if name in reasons else spec
            for name, spec in self.models.items()
        }
        return replace(self, models=models)

    def no_key_model(self, model: str) -> str:
        """``model`` when it should answer the requests that name neither a model nor a task
        (``[routing] no_key_model``), else "": when no OpenAI-compatible model can reach its
        real provider (each is simulated or unavailable: no API key is set) and ``model``, a
        local generative model such as ``smollm2-135m`` on Triton, is usable. The router then
        makes it the default model and turns keyword routing off; requests that name a model
        or a task still get what they name (a simulated model stays simulated)."""
        spec = self.models.get(model) if model else None
        if spec is None or not spec.generative or spec.unavailable_reason is not None:
            return ""
        remote = [m for m in self.models.values() if isinstance(m.backend, OpenAIBackend)]
        if any(not m.simulated and m.unavailable_reason is None for m in remote):
            return ""
        return spec.name

    def judges(self) -> tuple[ModelSpec, ...]:
        """Usable models that take part in moderation, in a stable order."""
        return tuple(
            m
            for _, m in sorted(self.models.items())
            if m.moderation is not None and m.unavailable_reason is None
        )

    def resolve_keys(self, env: Mapping[str, str], *, simulator_url: str | None = None) -> Registry:
        """Bind models to what the environment provides.

        A model whose provider needs an API key that ``env`` lacks is either moved onto the
        provider simulator at ``simulator_url`` (labelled simulated) or, without one, marked
        unavailable with the reason. The router may pass a simulator; the voter never does:
        a simulated vote would make a verdict meaningless.
        """
        sim = (
            Provider(SIMULATOR_PROVIDER, simulator_url.rstrip("/"), None, simulated=True)
            if simulator_url
            else None
        )
        models: dict[str, ModelSpec] = {}
        for name, spec in self.models.items():
            b = spec.backend
            if isinstance(b, OpenAIBackend) and b.provider.api_key_env:
                if not env.get(b.provider.api_key_env):
                    if sim is not None:
                        spec = replace(spec, backend=replace(b, provider=sim))
                    else:
                        spec = replace(
                            spec, unavailable_reason=f"{b.provider.api_key_env} is not set"
                        )
            models[name] = spec
        return replace(self, models=models)


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: {value!r} is not a decimal number")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(f"{where}: {value!r} is not a decimal number") from None
    if not d.is_finite() or d < 0:
        raise ConfigError(f"{where}: must be a finite, non-negative number")
    return d


def _positive(value: Any, where: str) -> Decimal:
    d = _decimal(value, where)
    if d == 0:
        raise ConfigError(f"{where}: must be greater than 0")
    return d


def _currency(value: Any, where: str) -> str:
    code = value.strip().upper() if isinstance(value, str) else ""
    if not money.is_currency(code):
        raise ConfigError(f"{where}: an ISO 4217 code is required (e.g. USD), not {value!r}")
    return code


_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _instant(value: Any, where: str) -> int:
    """An RFC 3339 date-time with a zone (a string, or a TOML offset date-time) as
    microseconds since the epoch."""
    if isinstance(value, str) and _RFC3339.fullmatch(value.strip()):
        when = datetime.fromisoformat(value.strip().replace("z", "Z").replace("t", "T"))
    elif isinstance(value, datetime) and value.tzinfo is not None:
        when = value
    else:
        raise ConfigError(
            f"{where}: {value!r} is not an RFC 3339 date-time with a zone "
            '(e.g. "2026-12-01T00:00:00Z")'
        )
    return (when - _EPOCH) // timedelta(microseconds=1)


def _table_list(value: Any, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise ConfigError(f"{where}: must be an array of tables ([[{where}]])")
    return value


def _in_order(starts: list[int | None], where: str, i: int) -> None:
    """Check that entry ``i`` (``starts[i]``; None: undated) comes after those before it."""
    if i == 0:
        return
    now, before = starts[i], starts[i - 1]
    if now is None:
        raise ConfigError(f"{where}.effective_from: required (only the first entry may be undated)")
    if before is not None and now == before:
        raise ConfigError(f"{where}.effective_from: duplicate ({money.format_instant(now)} again)")
    if before is not None and now < before:
        raise ConfigError(
            f"{where}.effective_from: entries must be in increasing order "
            f"({money.format_instant(now)} is before {money.format_instant(before)})"
        )


def load_rates(data: Mapping[str, Any]) -> Rates:
    """The official exchange rates, ``[[exchange_rates]]``: ``from``, ``to``, ``rate`` (units
    of ``to`` per unit of ``from``, a decimal) and ``effective_from`` (optional for a pair's
    first rate). A pair's rates are listed oldest first."""
    rates: list[ExchangeRate] = []
    starts: dict[tuple[str, str], list[int | None]] = {}
    for i, t in enumerate(_table_list(data.get("exchange_rates", []), "exchange_rates")):
        where = f"exchange_rates[{i}]"
        unknown = set(t) - {"from", "to", "rate", "effective_from"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        src = _currency(t.get("from"), f"{where}.from")
        dst = _currency(t.get("to"), f"{where}.to")
        if src == dst:
            raise ConfigError(f"{where}.to: a rate from {src} to itself")
        if "rate" not in t:
            raise ConfigError(f"{where}.rate: required")
        at = None
        if "effective_from" in t:
            at = _instant(t["effective_from"], f"{where}.effective_from")
        series = starts.setdefault((src, dst), [])
        series.append(at)
        _in_order(series, where, len(series) - 1)
        rates.append(ExchangeRate(src, dst, _positive(t["rate"], f"{where}.rate"), at))
    return Rates(rates)


_PRICE_KEYS = {"input_per_mtok", "output_per_mtok", "cached_input_per_mtok"}
_DATED_PRICE_KEYS = {*_PRICE_KEYS, "currency", "effective_from"}
_BILLING_KEYS = ("billing_currency", "billing_rate", "billing_rates")


def _price(t: Mapping[str, Any], where: str, currency: str, at: int | None) -> Price:
    for key in ("input_per_mtok", "output_per_mtok"):
        if key not in t:
            raise ConfigError(
                f"{where}.{key}: required (a price has input_per_mtok and output_per_mtok; "
                '"0" for a free model)'
            )
    cached = t.get("cached_input_per_mtok")
    return Price(
        input_per_mtok=_decimal(t["input_per_mtok"], f"{where}.input_per_mtok"),
        output_per_mtok=_decimal(t["output_per_mtok"], f"{where}.output_per_mtok"),
        currency=currency,
        cached_input_per_mtok=(
            None if cached is None else _decimal(cached, f"{where}.cached_input_per_mtok")
        ),
        effective_from_us=at,
    )


def _prices(m: Mapping[str, Any], where: str) -> tuple[Price, ...]:
    """The flat keys (the price since the beginning) and then ``[[prices]]``, oldest first."""
    currency = _currency(m.get("currency", "USD"), f"{where}.currency")
    prices: list[Price] = []
    if _PRICE_KEYS & set(m):
        prices.append(_price(m, where, currency, None))
    starts: list[int | None] = [p.effective_from_us for p in prices]
    for i, t in enumerate(_table_list(m.get("prices", []), f"{where}.prices")):
        w = f"{where}.prices[{i}]"
        unknown = set(t) - _DATED_PRICE_KEYS
        if unknown:
            raise ConfigError(f"{w}: unknown keys {sorted(unknown)}")
        if "effective_from" not in t:
            raise ConfigError(f"{w}.effective_from: required")
        at = _instant(t["effective_from"], f"{w}.effective_from")
        starts.append(at)
        _in_order(starts, w, len(starts) - 1)
        entry_currency = _currency(t.get("currency", currency), f"{w}.currency")
        prices.append(_price(t, w, entry_currency, at))
    return tuple(prices)


@dataclass(frozen=True)
class _BillingTerms:
    """``billing_currency`` and the provider's own rate(s), as configured (not yet tied to a
    list currency)."""

    currency: str
    #: (rate, effective_from_us) oldest first; None: the official rate of the day
    rates: tuple[tuple[Decimal, int | None], ...] | None
    where: str


def _billing_terms(t: Mapping[str, Any], where: str) -> _BillingTerms | None:
    if not any(k in t for k in _BILLING_KEYS):
        return None
    if "billing_currency" not in t:
        raise ConfigError(f"{where}.billing_currency: required with a billing rate")
    currency = _currency(t["billing_currency"], f"{where}.billing_currency")
    if "billing_rate" in t and "billing_rates" in t:
        raise ConfigError(f"{where}.billing_rates: give billing_rate or billing_rates, not both")
    rates: tuple[tuple[Decimal, int | None], ...] | None = None
    if "billing_rate" in t:
        rates = ((_positive(t["billing_rate"], f"{where}.billing_rate"), None),)
    elif "billing_rates" in t:
        found: list[tuple[Decimal, int | None]] = []
        starts: list[int | None] = []
        for i, r in enumerate(_table_list(t["billing_rates"], f"{where}.billing_rates")):
            w = f"{where}.billing_rates[{i}]"
            unknown = set(r) - {"rate", "effective_from"}
            if unknown:
                raise ConfigError(f"{w}: unknown keys {sorted(unknown)}")
            if "rate" not in r:
                raise ConfigError(f"{w}.rate: required")
            at = None
            if "effective_from" in r:
                at = _instant(r["effective_from"], f"{w}.effective_from")
            starts.append(at)
            _in_order(starts, w, i)
            found.append((_positive(r["rate"], f"{w}.rate"), at))
        if not found:
            raise ConfigError(f"{where}.billing_rates: at least one rate is required")
        rates = tuple(found)
    return _BillingTerms(currency, rates, where)


def _pricing(
    prices: tuple[Price, ...], terms: _BillingTerms | None, rates: Rates, where: str
) -> Pricing:
    """The model's prices and, when its provider bills in another currency, how."""
    if terms is None or not prices:
        return Pricing(prices)
    listed = sorted({p.currency for p in prices})
    if terms.rates is None:
        for currency in listed:
            if not rates.knows(currency, terms.currency):
                raise ConfigError(
                    f"{terms.where}.billing_currency: no [[exchange_rates]] rate converts "
                    f"{currency} (the list currency of {where}) into {terms.currency}; "
                    "add one, or give the provider's own billing_rate"
                )
        return Pricing(prices, Billing(terms.currency))
    if len(listed) > 1:
        raise ConfigError(
            f"{terms.where}.billing_rate: {where} is listed in several currencies "
            f"({', '.join(listed)}); one billing rate cannot convert them all"
        )
    if listed[0] == terms.currency:
        if terms.where == where:
            raise ConfigError(
                f"{where}.billing_rate: the model is listed in {terms.currency} already"
            )
        return Pricing(prices)  # the provider bills in this model's list currency
    first_rate, first_price = terms.rates[0][1], prices[0].effective_from_us
    if first_rate is not None and (first_price is None or first_rate > first_price):
        raise ConfigError(
            f"{terms.where}.billing_rates[0].effective_from: the provider's rate must be in "
            f"effect from {where}'s first price on (undated, or no later than it)"
        )
    own = Rates(ExchangeRate(listed[0], terms.currency, r, at) for r, at in terms.rates)
    return Pricing(prices, Billing(terms.currency, own))


def _str(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: a non-empty string is required")
    return value


def _unit(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: {value!r} is not a number in [0, 1]")
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ConfigError(f"{where}: {value!r} is not a number in [0, 1]")
    return float(value)


def _thresholds(
    mod: Mapping[str, Any], cats: tuple[str, ...], where: str, *, triton: bool
) -> dict[str, float]:
    value = mod.get("threshold")
    if not triton:
        if value is not None:
            raise ConfigError(
                f"{where}.threshold: only a Triton judge takes a cut-off "
                "(an LLM judge gives its own verdict)"
            )
        return {}
    if value is None:
        raise ConfigError(
            f"{where}.threshold: a Triton judge needs its safe/unsafe cut-off, a number in "
            "[0, 1] or a table of one per category (a score at or above it votes unsafe)"
        )
    if not isinstance(value, Mapping):
        cutoff = _unit(value, f"{where}.threshold")
        return dict.fromkeys(cats, cutoff)
    missing = [c for c in cats if c not in value]
    extra = sorted(set(value) - set(cats))
    if missing or extra:
        raise ConfigError(
            f"{where}.threshold: needs exactly one cut-off per category "
            f"(missing {missing}, not judged {extra})"
        )
    return {c: _unit(value[c], f"{where}.threshold.{c}") for c in cats}


_PROVIDER_KEYS = {"base_url", "api_key_env", "simulated", "json_mode", *_BILLING_KEYS}
_MODEL_KEYS = {
    "name", "provider", "provider_model", "backend", "triton_model", "triton_outputs",
    "input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "currency", "prices",
    *_BILLING_KEYS, "tasks", "moderation", "max_output_tokens", "model_id",
}  # fmt: skip


def load_registry(data: Mapping[str, Any]) -> Registry:
    """Build and validate a registry from parsed configuration (``[providers]``, ``[models]``,
    ``[[exchange_rates]]``, ``[registry] default_model``). Raises ConfigError naming the bad
    entry."""
    rates = load_rates(data)
    providers: dict[str, Provider] = {}
    provider_billing: dict[str, _BillingTerms | None] = {}
    for pname, p in dict(data.get("providers", {})).items():
        where = f"providers.{pname}"
        if not isinstance(p, Mapping):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(p) - _PROVIDER_KEYS
        if unknown:
            hint = " (keys come from the environment: api_key_env)" if "api_key" in p else ""
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}{hint}")
        base_url = _str(p, "base_url", where).rstrip("/")
        if not base_url.startswith(("http://", "https://")) or base_url.endswith("://"):
            raise ConfigError(
                f"{where}.base_url: an http:// or https:// URL such as "
                f"https://api.example.com/v1, not {base_url[:60]!r}"
            )
        key_env = p.get("api_key_env")
        if key_env is not None and (not isinstance(key_env, str) or not key_env):
            raise ConfigError(f"{where}.api_key_env: must be the name of a variable")
        json_mode = p.get("json_mode", "json_schema")
        if json_mode not in JSON_MODES:
            raise ConfigError(f"{where}.json_mode: one of {', '.join(JSON_MODES)}")
        providers[pname] = Provider(
            name=pname,
            base_url=base_url,
            api_key_env=key_env,
            simulated=bool(p.get("simulated", False)),
            json_mode=json_mode,
        )
        provider_billing[pname] = _billing_terms(p, where)

    models: dict[str, ModelSpec] = {}
    for key, m in dict(data.get("models", {})).items():
        where = f"models.{key}"
        if not isinstance(m, Mapping):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(m) - _MODEL_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        name = _str(m, "name", where, default=key)
        backend: Backend
        kind = m.get("backend", "triton" if "triton_model" in m else "openai")
        if kind == "triton":
            outputs = m.get("triton_outputs", "score")
            if outputs not in TRITON_OUTPUTS:
                raise ConfigError(f"{where}.triton_outputs: one of {', '.join(TRITON_OUTPUTS)}")
            backend = TritonBackend(
                triton_model=_str(m, "triton_model", where), outputs=outputs, model=name
            )
        elif kind == "openai":
            pname = _str(m, "provider", where)
            if pname not in providers:
                raise ConfigError(f"{where}.provider: no provider named {pname!r}")
            backend = OpenAIBackend(
                provider=providers[pname],
                provider_model=_str(m, "provider_model", where, default=name),
                model=name,
            )
        else:
            raise ConfigError(f"{where}.backend: must be 'openai' or 'triton', not {kind!r}")
        terms = _billing_terms(m, where)
        if terms is None and isinstance(backend, OpenAIBackend):
            terms = provider_billing[backend.provider.name]
        pricing = _pricing(_prices(m, where), terms, rates, where)
        moderation = None
        if "moderation" in m:
            mod = m["moderation"]
            if not isinstance(mod, Mapping):
                raise ConfigError(f"{where}.moderation: must be a table")
            unknown = set(mod) - {"weight", "categories", "threshold"}
            if unknown:
                raise ConfigError(f"{where}.moderation: unknown keys {sorted(unknown)}")
            weight = float(mod.get("weight", 1.0))
            if not weight > 0:
                raise ConfigError(f"{where}.moderation.weight: must be > 0")
            cats = tuple(mod.get("categories", ()))
            bad = [c for c in cats if c not in CATEGORIES]
            if bad or not cats:
                raise ConfigError(
                    f"{where}.moderation.categories: choose one or more of {list(CATEGORIES)}"
                )
            thresholds = _thresholds(mod, cats, f"{where}.moderation", triton=kind == "triton")
            single = mod.get("threshold")
            moderation = Moderation(
                weight=weight,
                categories=cats,
                thresholds=thresholds,
                threshold=(
                    float(single) if thresholds and isinstance(single, int | float) else None
                ),
            )
        max_out = int(m.get("max_output_tokens", 1024))
        if max_out <= 0:
            raise ConfigError(f"{where}.max_output_tokens: must be > 0")
        generative = isinstance(backend, TritonBackend) and backend.outputs in GENERATIVE_OUTPUTS
        if generative and moderation:
            raise ConfigError(
                f"{where}.moderation: a generative Triton model (triton_outputs = "
                f'"{m.get("triton_outputs")}") writes text and gives no scores; it cannot judge'
            )
        if name in models:
            raise ConfigError(f"{where}: model name {name!r} is used twice")
        model_id = m.get("model_id")
        if model_id is not None:
            if isinstance(model_id, bool) or not isinstance(model_id, int) or model_id < 0:
                raise ConfigError(f"{where}.model_id: an integer >= 0")
            taken = [n for n, spec in models.items() if spec.model_id == model_id]
            if taken:
                raise ConfigError(f"{where}.model_id: {model_id} is {taken[0]!r}'s already")
        models[name] = ModelSpec(
            name=name,
            backend=backend,
            pricing=pricing,
            tasks=tuple(str(t) for t in m.get("tasks", ())),
            moderation=moderation,
            max_output_tokens=max_out,
            model_id=model_id,
        )

    reg = dict(data.get("registry", {}))
    default_model = str(reg.get("default_model", ""))
    if default_model and default_model not in models:
        raise ConfigError(f"registry.default_model: no model named {default_model!r}")
    return Registry(models=models, default_model=default_model, providers=providers, rates=rates)
