"""Router settings: one frozen object, validated at start-up."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from quorum import config, ids, limits
from quorum.auth import AuthSettings
from quorum.errors import InvalidArgument
from quorum.limits import Limits
from quorum.metrics import MetricsSettings, split_address
from quorum.registry import ConfigError, Registry, load_registry
from quorum.retry import RetryPolicy
from quorum.server import ServerLimits
from quorum.tls import TlsSettings
from quorum.usage import MeterSettings
from services.router.completion import Moderation, ModerationPolicy
from services.router.routing import AutoRouting, auto_routing

log = logging.getLogger(__name__)

#: the most router processes one ``python -m services.router`` serves with
MAX_WORKERS = 64


@dataclass(frozen=True)
class RouterSettings:
    address: str
    voter_address: str
    cost_address: str
    moderation: ModerationPolicy
    #: the most texts one call to the voter carries: concurrent moderations for a tenant are
    #: coalesced into ModerateBatch calls (services/router/voterclient.py); 0 or 1: each its
    #: own Moderate call
    moderation_batch: int
    #: the calls to the voter a tenant's moderations may have in flight before the next ones
    #: queue to go together
    moderation_calls: int
    default_timeout_s: float
    max_timeout_s: float
    max_prompt_chars: int
    max_messages: int
    retry: RetryPolicy
    journal_path: Path
    meter: MeterSettings
    replay_ttl_s: float
    replay_max_entries: int
    registry: Registry
    auth: AuthSettings = field(default_factory=AuthSettings)
    #: per-tenant rate limits: the default, and the tenants that have their own
    rate_limits: Limits = field(default_factory=Limits)
    #: automatic routing for requests that name neither a model nor a task (None: off)
    auto: AutoRouting | None = None
    #: Triton's gRPC address: its chat models with ``backend = "triton"``, and the prompt
    #: classifier of ``auto`` ("" none: those models are unavailable, the classifier off)
    triton_address: str = ""
    #: the local model that answers requests naming no model or task while no provider key is
    #: set (:meth:`quorum.registry.Registry.no_key_model`; "" never)
    no_key_model: str = ""
    #: the share of a budget past which requests that name no model go to cheaper models
    #: (0: never), which task's models, and how long a tenant's budget status is kept
    #: consecutive transient failures that open a provider's breaker (0: no breakers), and
    #: how long it then stays open
    breaker_failures: int = 5
    breaker_cooldown_s: float = 10.0
    step_down_at: float = 0.8
    step_down_task: str = "chat"
    budget_cache_s: float = 5.0
    tls: TlsSettings = field(default_factory=TlsSettings)
    limits: ServerLimits = field(default_factory=ServerLimits)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    #: router processes serving ``address`` together (:mod:`quorum.workers`; 1: this one)
    workers: int = 1
    #: which of them this process is: 0 the first (it starts the others), else 1..workers-1
    worker: int = 0

    def for_worker(self, index: int) -> RouterSettings:
        """The settings of worker ``index`` (1..workers-1): its own usage journal (a journal
        belongs to one process) and its own scrape endpoint (:func:`worker_metrics`). The
        first process (0) keeps the configured ones."""
        if index == 0:
            return self
        return replace(
            self,
            worker=index,
            journal_path=worker_journal(self.journal_path, index),
            metrics=worker_metrics(self.metrics, index),
        )

    @classmethod
    def from_config(
        cls, data: Mapping[str, Any], env: Mapping[str, str] | None = None
    ) -> RouterSettings:
        env = os.environ if env is None else env
        r = config.section(data, "router")
        w = "router"
        floors = r.get("moderation_floors", {})
        if not isinstance(floors, Mapping):
            raise ConfigError("router.moderation_floors: a table of tenant = mode")
        moderation = ModerationPolicy(
            default=_mode(r.get("moderation", "input"), "router.moderation"),
            floor=_mode(r.get("moderation_floor", "none"), "router.moderation_floor"),
            tenant_floors={
                _tenant(t): _mode(m, f"router.moderation_floors.{t}") for t, m in floors.items()
            },
        )
        simulator_url = str(r.get("simulator_url") or "")
        registry = load_registry(data).resolve_keys(env, simulator_url=simulator_url or None)
        routing = config.section(data, "routing")
        settings = cls(
            address=config.get_str(r, "address", w),
            voter_address=config.get_str(r, "voter_address", w),
            cost_address=config.get_str(r, "cost_address", w),
            moderation=moderation,
            moderation_batch=config.get_int(r, "moderation_batch", w),
            moderation_calls=config.get_int(r, "moderation_calls", w, minimum=1),
            default_timeout_s=config.get_float(r, "default_timeout_s", w, minimum=0.01),
            max_timeout_s=config.get_float(r, "max_timeout_s", w, minimum=0.01),
            max_prompt_chars=config.get_int(r, "max_prompt_chars", w, minimum=1),
            max_messages=config.get_int(r, "max_messages", w, minimum=1),
            retry=RetryPolicy(
                max_attempts=config.get_int(r, "max_attempts", w, minimum=1),
                backoff_base_s=config.get_float(r, "backoff_base_s", w),
                backoff_max_s=config.get_float(r, "backoff_max_s", w),
            ),
            journal_path=config.data_dir(env) / "router-usage.journal",
            meter=MeterSettings.from_config(data),
            replay_ttl_s=config.get_float(r, "replay_ttl_s", w, minimum=1.0),
            replay_max_entries=config.get_int(r, "replay_max_entries", w, minimum=1),
            registry=registry,
            auth=AuthSettings.from_config(data, env, calls_services=True),
            rate_limits=limits.from_config(r.get("limits", {}), "router.limits"),
            auto=_auto(data, registry),
            triton_address=str(r.get("triton_address") or ""),
            no_key_model=_no_key_model(routing, registry),
            breaker_failures=config.get_int(r, "breaker_failures", w),
            breaker_cooldown_s=config.get_float(r, "breaker_cooldown_s", w),
            step_down_at=config.get_float(routing, "step_down_at", "routing"),
            step_down_task=config.get_str(routing, "step_down_task", "routing"),
            budget_cache_s=config.get_float(routing, "budget_cache_s", "routing"),
            tls=TlsSettings.from_config(data, env),
            limits=ServerLimits.from_config(data),
            metrics=MetricsSettings.from_config(data, "router"),
            workers=workers(data),
        )
        _check_worker_metrics(data, settings.metrics, settings.workers)
        if settings.auto and settings.auto.classifier and not settings.triton_address:
            raise ConfigError(
                "routing.classifier: the prompt classifier is served by Triton; set [router] "
                "triton_address (quorum up sets it)"
            )
        return settings


def _mode(value: object, where: str) -> Moderation:
    try:
        return Moderation(str(value).lower())
    except ValueError:
        raise ConfigError(f"{where}: one of none, input, output, both") from None


def _tenant(name: object, where: str = "router.moderation_floors") -> str:
    try:
        return ids.tenant(str(name), field=f"{where}.{name}", required=True)
    except InvalidArgument as e:
        raise ConfigError(e.message) from None


def _auto(data: Mapping[str, Any], registry: Registry) -> AutoRouting | None:
    """``[routing]``: the brief's keyword rules (:func:`auto_routing`)."""
    return auto_routing(data, registry)


def _no_key_model(routing: Mapping[str, Any], registry: Registry) -> str:
    """``[routing] no_key_model``: "" or a generative model of the registry ("" when the
    registry has no such model)."""
    name = str(routing.get("no_key_model") or "")
    if name and name not in registry.models:
        # a registry of one's own need not have the default's local model: the rule is off
        log.info("routing.no_key_model: no model %r in the registry; not used", name)
        return ""
    if name and not registry.models[name].generative:
        raise ConfigError(f"routing.no_key_model: {name!r} is a classifier, not a chat model")
    return name


def workers(data: Mapping[str, Any]) -> int:
    """``[router] workers``: an integer from 1 to :data:`MAX_WORKERS`; more than one on Linux
    only (where ``SO_REUSEPORT`` spreads connections over the processes and a worker can ask
    to die with its parent)."""
    value = config.section(data, "router").get("workers", 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(
            f"router.workers: an integer from 1 to {MAX_WORKERS} is required, not {value!r}"
        )
    if value > 1 and not sys.platform.startswith("linux"):
        raise ConfigError(f"router.workers = {value}: several router processes need Linux")
    return value


def worker_journal(journal: Path, index: int) -> Path:
    """Worker ``index``'s usage journal: ``router-usage-<index>.journal`` beside the first's."""
    return journal.with_name(f"{journal.stem}-{index}{journal.suffix}")


def worker_metrics(metrics: MetricsSettings, index: int) -> MetricsSettings:
    """Worker ``index``'s scrape endpoint: the configured port plus ``index`` (so the workers
    of ``127.0.0.1:50081`` serve theirs on 50082, 50083, ...), a free port of its own when
    the configured one is 0, none when none is configured."""
    if not metrics.address:
        return metrics
    _, port = split_address(metrics.address, "router.metrics_address")
    if port == 0:
        return metrics
    return MetricsSettings(metrics.address.rpartition(":")[0] + f":{port + index}")


def _check_worker_metrics(data: Mapping[str, Any], metrics: MetricsSettings, count: int) -> None:
    """The ports after a fixed ``router.metrics_address`` that the other workers take must be
    ports, and none another part's in the same configuration (with the embedded defaults a
    second worker would take the voter's 50082)."""
    if count == 1 or not metrics.address:
        return
    _, port = split_address(metrics.address, "router.metrics_address")
    if port == 0:
        return
    last = port + count - 1
    if last > 65535:
        raise ConfigError(
            f"router.metrics_address: {count} workers serve their metrics on ports {port}-"
            f"{last}, past 65535; give a lower port, or port 0 (each worker a free one)"
        )
    taken = _configured_ports(data)
    for p in range(port + 1, last + 1):
        if p in taken:
            raise ConfigError(
                f"router.metrics_address: with router.workers = {count} the workers serve "
                f"their metrics on ports {port}-{last}, and {p} is {taken[p]}'s; give a "
                f"port with {count - 1} unused after it, or port 0 (each worker a free one)"
            )


#: every port but the router's metrics that the configuration gives a part of the mesh
_PORT_KEYS = (
    ("router", "address"),
    ("voter", "address"),
    ("voter", "metrics_address"),
    ("cost", "address"),
    ("cost", "metrics_address"),
    ("triton", "http_port"),
    ("triton", "grpc_port"),
    ("triton", "metrics_port"),
    ("simulator", "port"),
)


def _configured_ports(data: Mapping[str, Any]) -> dict[int, str]:
    """The ports of :data:`_PORT_KEYS` that are set (not 0): "section.key" by port."""
    out: dict[int, str] = {}
    for section, key in _PORT_KEYS:
        table = data.get(section)
        raw = table.get(key) if isinstance(table, Mapping) else None
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            continue
        port = str(raw).rpartition(":")[2]
        if port.isdigit() and int(port):
            out.setdefault(int(port), f"{section}.{key}")
    return out
