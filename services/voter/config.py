"""Voter settings: one frozen object, validated at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quorum import config
from quorum.registry import ConfigError, Registry, load_registry


@dataclass(frozen=True)
class VoterSettings:
    address: str
    triton_address: str
    cost_address: str
    default_timeout_s: float
    max_timeout_s: float
    max_text_chars: int
    model_timeout_s: float
    min_votes: int
    category_threshold: float
    review_confidence: float
    spool_path: Path
    registry: Registry

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
            model_timeout_s=config.get_float(v, "model_timeout_s", w, minimum=0.01),
            min_votes=config.get_int(v, "min_votes", w, minimum=1),
            category_threshold=config.get_float(v, "category_threshold", w),
            review_confidence=config.get_float(v, "review_confidence", w),
            spool_path=config.data_dir(env) / "voter-usage-spool.jsonl",
            registry=registry,
        )
        if not settings.registry.judges():
            raise ConfigError(
                "no usable moderation model is configured (see [models.*].moderation)"
            )
        if settings.category_threshold > 1 or settings.review_confidence > 1:
            raise ConfigError("voter thresholds must be within [0, 1]")
        return settings
