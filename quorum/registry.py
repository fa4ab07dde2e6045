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
    input_per_mtok = "2.00"             # price per million tokens, decimal string
    output_per_mtok = "8.00"
    currency = "USD"
    tasks = ["chat", "code"]
    moderation = { weight = 1.0, categories = ["violence", "adult", "hate", "spam"] }

This module is pure: it reads a mapping and an environment mapping, never the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from quorum.errors import FailedPrecondition, NotFound

#: Moderation categories every verdict reports (the enum in quorum.common.v1 mirrors these).
CATEGORIES: tuple[str, ...] = ("violence", "adult", "hate", "spam", "harassment")

SIMULATOR_PROVIDER = "simulator"


class ConfigError(ValueError):
    """The configuration is invalid; raised at start-up, never while serving."""


@dataclass(frozen=True)
class Price:
    """Price per million tokens in ``currency`` (exact decimals, never floats)."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    currency: str = "USD"


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


@dataclass(frozen=True)
class TritonBackend:
    """A model served by our Triton model repository (``triton/<triton_model>``)."""

    triton_model: str
    kind: Literal["triton"] = "triton"


Backend = OpenAIBackend | TritonBackend


@dataclass(frozen=True)
class Moderation:
    weight: float
    categories: tuple[str, ...]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backend: Backend
    price: Price
    tasks: tuple[str, ...] = ()
    moderation: Moderation | None = None
    max_output_tokens: int = 1024
    #: why the model cannot be used right now (e.g. its key is not set); None when usable
    unavailable_reason: str | None = None

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
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{where}: {value!r} is not a decimal number") from None
    if not d.is_finite() or d < 0:
        raise ConfigError(f"{where}: must be a finite, non-negative number")
    return d


def _str(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: a non-empty string is required")
    return value


_MODEL_KEYS = {
    "name", "provider", "provider_model", "backend", "triton_model", "input_per_mtok",
    "output_per_mtok", "currency", "tasks", "moderation", "max_output_tokens",
}  # fmt: skip


def load_registry(data: Mapping[str, Any]) -> Registry:
    """Build and validate a registry from parsed configuration (``[providers]``, ``[models]``,
    ``[registry] default_model``). Raises ConfigError naming the bad entry."""
    providers: dict[str, Provider] = {}
    for pname, p in dict(data.get("providers", {})).items():
        where = f"providers.{pname}"
        if not isinstance(p, Mapping):
            raise ConfigError(f"{where}: must be a table")
        key_env = p.get("api_key_env")
        if key_env is not None and (not isinstance(key_env, str) or not key_env):
            raise ConfigError(f"{where}.api_key_env: must be the name of a variable")
        json_mode = p.get("json_mode", "json_schema")
        if json_mode not in JSON_MODES:
            raise ConfigError(f"{where}.json_mode: one of {', '.join(JSON_MODES)}")
        providers[pname] = Provider(
            name=pname,
            base_url=_str(p, "base_url", where).rstrip("/"),
            api_key_env=key_env,
            simulated=bool(p.get("simulated", False)),
            json_mode=json_mode,
        )

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
            backend = TritonBackend(triton_model=_str(m, "triton_model", where))
        elif kind == "openai":
            pname = _str(m, "provider", where)
            if pname not in providers:
                raise ConfigError(f"{where}.provider: no provider named {pname!r}")
            backend = OpenAIBackend(
                provider=providers[pname],
                provider_model=_str(m, "provider_model", where, default=name),
            )
        else:
            raise ConfigError(f"{where}.backend: must be 'openai' or 'triton', not {kind!r}")
        price = Price(
            input_per_mtok=_decimal(m.get("input_per_mtok", 0), f"{where}.input_per_mtok"),
            output_per_mtok=_decimal(m.get("output_per_mtok", 0), f"{where}.output_per_mtok"),
            currency=_str(m, "currency", where, default="USD").upper(),
        )
        if len(price.currency) != 3 or not price.currency.isalpha():
            raise ConfigError(f"{where}.currency: an ISO 4217 code is required")
        moderation = None
        if "moderation" in m:
            mod = m["moderation"]
            if not isinstance(mod, Mapping):
                raise ConfigError(f"{where}.moderation: must be a table")
            weight = float(mod.get("weight", 1.0))
            if not weight > 0:
                raise ConfigError(f"{where}.moderation.weight: must be > 0")
            cats = tuple(mod.get("categories", ()))
            bad = [c for c in cats if c not in CATEGORIES]
            if bad or not cats:
                raise ConfigError(
                    f"{where}.moderation.categories: choose one or more of {list(CATEGORIES)}"
                )
            moderation = Moderation(weight=weight, categories=cats)
        max_out = int(m.get("max_output_tokens", 1024))
        if max_out <= 0:
            raise ConfigError(f"{where}.max_output_tokens: must be > 0")
        if name in models:
            raise ConfigError(f"{where}: model name {name!r} is used twice")
        models[name] = ModelSpec(
            name=name,
            backend=backend,
            price=price,
            tasks=tuple(str(t) for t in m.get("tasks", ())),
            moderation=moderation,
            max_output_tokens=max_out,
        )

    reg = dict(data.get("registry", {}))
    default_model = str(reg.get("default_model", ""))
    if default_model and default_model not in models:
        raise ConfigError(f"registry.default_model: no model named {default_model!r}")
    return Registry(models=models, default_model=default_model, providers=providers)
