"""Router settings: one frozen object, validated at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quorum import config
from quorum.registry import ConfigError, Registry, load_registry
from quorum.retry import RetryPolicy
from services.router.completion import Moderation


@dataclass(frozen=True)
class RouterSettings:
    address: str
    voter_address: str
    cost_address: str
    moderation: Moderation
    default_timeout_s: float
    max_timeout_s: float
    max_prompt_chars: int
    max_messages: int
    retry: RetryPolicy
    spool_path: Path
    registry: Registry

    @classmethod
    def from_config(
        cls, data: Mapping[str, Any], env: Mapping[str, str] | None = None
    ) -> RouterSettings:
        env = os.environ if env is None else env
        r = config.section(data, "router")
        w = "router"
        try:
            moderation = Moderation(str(r.get("moderation", "input")).lower())
        except ValueError:
            raise ConfigError("router.moderation: one of none, input, output, both") from None
        simulator_url = str(r.get("simulator_url") or "")
        registry = load_registry(data).resolve_keys(env, simulator_url=simulator_url or None)
        return cls(
            address=config.get_str(r, "address", w),
            voter_address=config.get_str(r, "voter_address", w),
            cost_address=config.get_str(r, "cost_address", w),
            moderation=moderation,
            default_timeout_s=config.get_float(r, "default_timeout_s", w, minimum=0.01),
            max_timeout_s=config.get_float(r, "max_timeout_s", w, minimum=0.01),
            max_prompt_chars=config.get_int(r, "max_prompt_chars", w, minimum=1),
            max_messages=config.get_int(r, "max_messages", w, minimum=1),
            retry=RetryPolicy(
                max_attempts=config.get_int(r, "max_attempts", w, minimum=1),
                backoff_base_s=config.get_float(r, "backoff_base_s", w),
                backoff_max_s=config.get_float(r, "backoff_max_s", w),
            ),
            spool_path=config.data_dir(env) / "router-usage-spool.jsonl",
            registry=registry,
        )
