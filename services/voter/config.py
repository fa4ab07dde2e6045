"""Voter settings: one frozen object, validated at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quorum import config, limits
from quorum.auth import AuthSettings
from quorum.limits import Limits
from quorum.metrics import MetricsSettings
from quorum.registry import CATEGORIES, ConfigError, Registry, load_registry
from quorum.server import ServerLimits
from quorum.tls import TlsSettings
from quorum.usage import MeterSettings
from services.voter.voting import NO_QUORUM_ACTIONS, Policy


@dataclass(frozen=True)
class VoterSettings:
    address: str
    triton_address: str
    cost_address: str
    default_timeout_s: float
    max_timeout_s: float
    max_text_chars: int
    #: ModerateBatch: the most texts, and the most UTF-8 bytes of text in all, one batch holds
    max_batch_texts: int
    max_batch_bytes: int
    model_timeout_s: float
    policy: Policy
    early_decision: bool
    journal_path: Path
    meter: MeterSettings
    registry: Registry
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    limits: ServerLimits = field(default_factory=ServerLimits)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    #: per-tenant rate limits of the moderations clients ask for (not the router's)
    rate_limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_config(
        cls, data: Mapping[str, Any], env: Mapping[str, str] | None = None
    ) -> VoterSettings:
        env = os.environ if env is None else env
        v = config.section(data, "voter")
        w = "voter"
        # judges need real keys: never the simulator
        registry = load_registry(data).resolve_keys(env)
        settings = cls(
            address=config.get_str(v, "address", w),
            triton_address=config.get_str(v, "triton_address", w),
            cost_address=config.get_str(v, "cost_address", w),
            default_timeout_s=config.get_float(v, "default_timeout_s", w, minimum=0.01),
            max_timeout_s=config.get_float(v, "max_timeout_s", w, minimum=0.01),
            max_text_chars=config.get_int(v, "max_text_chars", w, minimum=1),
            max_batch_texts=config.get_int(v, "max_batch_texts", w, minimum=1),
            max_batch_bytes=config.get_int(v, "max_batch_bytes", w, minimum=1),
            model_timeout_s=config.get_float(v, "model_timeout_s", w, minimum=0.01),
            policy=policy_from(v),
            early_decision=config.get_bool(v, "early_decision", w),
            journal_path=config.data_dir(env) / "voter-usage.journal",
            meter=MeterSettings.from_config(data),
            registry=registry,
            auth=AuthSettings.from_config(data, env, calls_services=True),
            tls=TlsSettings.from_config(data, env),
            limits=ServerLimits.from_config(data),
            metrics=MetricsSettings.from_config(data, "voter"),
            rate_limits=limits.from_config(v.get("limits", {}), "voter.limits"),
        )
        if not settings.registry.judges():
            raise ConfigError(
                "no usable moderation model is configured (see [models.*].moderation)"
            )
        return settings


def _share(table: Mapping[str, Any], key: str, where: str) -> float:
    value = config.get_float(table, key, where)
    if value > 1:
        raise ConfigError(f"{where}.{key}: a number within [0, 1] is required")
    return value


def policy_from(v: Mapping[str, Any]) -> Policy:
    """The voting policy from the ``[voter]`` table (one home for every knob)."""
    w = "voter"
    raw = v.get("thresholds", {})
    if not isinstance(raw, Mapping):
        raise ConfigError("voter.thresholds: a table of category = number is required")
    unknown = sorted(set(raw) - set(CATEGORIES))
    if unknown:
        raise ConfigError(
            f"voter.thresholds: unknown categories {unknown}; known: {', '.join(CATEGORIES)}"
        )
    on_no_quorum = str(v.get("on_no_quorum", "error"))
    if on_no_quorum not in NO_QUORUM_ACTIONS:
        raise ConfigError(f"voter.on_no_quorum: one of {', '.join(NO_QUORUM_ACTIONS)}")
    raw_weights = v.get("weights", {})
    if not isinstance(raw_weights, Mapping) or not all(
        isinstance(t, Mapping) for t in raw_weights.values()
    ):
        raise ConfigError("voter.weights: tables of category = {judge = weight} are required")
    unknown = sorted(set(raw_weights) - set(CATEGORIES))
    if unknown:
        raise ConfigError(f"voter.weights: unknown categories {unknown}")
    category_weights = {
        c: {j: config.get_float(t, j, f"{w}.weights.{c}") for j in t}
        for c, t in raw_weights.items()
    }
    return Policy(
        category_weights=category_weights,
        min_votes=config.get_int(v, "min_votes", w, minimum=1),
        vote_threshold=_share(v, "vote_threshold", w),
        category_threshold=_share(v, "category_threshold", w),
        thresholds={c: _share(raw, c, f"{w}.thresholds") for c in raw},
        review_threshold=_share(v, "review_threshold", w),
        review_confidence=_share(v, "review_confidence", w),
        on_no_quorum=on_no_quorum,
        cascade=config.get_bool(v, "cascade", w),
        cascade_margin=_share(v, "cascade_margin", w),
    )
