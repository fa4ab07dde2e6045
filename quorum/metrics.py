"""OpenTelemetry metrics, set up once per process next to the traces (:mod:`quorum.telemetry`).

Where they go:

- a Prometheus scrape endpoint, ``http://HOST:PORT/metrics``, when the service's
  ``metrics_address`` is set (``[router]``, ``[voter]``, ``[cost]``; the embedded defaults put
  them on loopback ports 50081-50083, ``""`` turns one off; a router with several processes,
  :mod:`quorum.workers`, serves one a process). It has no authentication of its own, so it
  binds loopback only unless ``[metrics] allow_remote = true``;
- OTLP/HTTP, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``
  is set (and ``OTEL_METRICS_EXPORTER`` is not ``none``), every ``OTEL_METRIC_EXPORT_INTERVAL``
  milliseconds (60 s by default) and once more at shutdown.

With neither, no meter provider is installed and every instrument below is a no-op.

The instruments (OpenTelemetry names; the Prometheus endpoint writes dots as underscores, adds
the unit, and ``_total`` to counters):

``rpc.server.call.duration`` (histogram, s)
    every gRPC call a service serves but health checks and reflection, by ``rpc.method``
    (``quorum.router.v1.RouterService/Complete``) and ``rpc.response.status_code`` (``OK``,
    ``INVALID_ARGUMENT``, ...): its count is the requests, by status the errors;
``gen_ai.client.token.usage`` (histogram, {token})
    each provider call billed (router completions, voter LLM judges), once, when its usage
    is settled, by ``gen_ai.request.model`` (the registry's name), ``gen_ai.provider.name``
    and ``gen_ai.token.type`` (``input``, ``output``); its sum is the tokens;
``quorum.cost.micros`` (counter)
    the same calls' cost in millionths of ``quorum.cost.currency``, by model;
``quorum.voter.votes`` (counter)
    each judge's vote, by ``quorum.judge``, ``quorum.vote.status`` (``ok``, ``error``,
    ``timeout``, ``skipped``: all but ``ok`` are abstentions) and ``quorum.vote.verdict``
    (``safe``, ``unsafe``; ``none`` for an abstention);
``quorum.voter.verdicts`` (counter)
    each moderation answered, by ``quorum.moderation.is_safe`` and
    ``quorum.moderation.requires_review``;
``quorum.usage.backlog`` (gauge, {record})
    the usage records waiting for the cost service (the journal's spool), by
    ``quorum.source``.

Every label value comes from a bounded set (registered methods, status code names, registry
model names, enum values), never from a client's string. Triton's own metrics (queue time
``nv_inference_queue_duration_us``, ...) are on its metrics port; they are not re-exported.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Observation

from quorum import config
from quorum.auth import is_loopback
from quorum.backends.types import TokenUsage
from quorum.money import NoExchangeRate
from quorum.pricing import PriceNotFound, bill
from quorum.registry import ConfigError, Registry

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from quorum.usage import Meter, UsageRecord

log = logging.getLogger(__name__)

SCOPE = "quorum"
#: the semantic conventions' advice for RPC durations, in seconds
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
#: the GenAI conventions' advice for token counts
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsSettings:
    #: "HOST:PORT" of the Prometheus scrape endpoint ("": none); port 0 picks a free one
    address: str = ""

    @classmethod
    def from_config(cls, data: Mapping[str, Any], service: str) -> MetricsSettings:
        """``[<service>] metrics_address``, checked against ``[metrics] allow_remote``."""
        where = f"{service}.metrics_address"
        raw = config.section(data, service).get("metrics_address", "")
        if not isinstance(raw, str):
            raise ConfigError(f"{where}: a string, HOST:PORT or empty (no endpoint)")
        if not raw:
            return cls()
        host, port = split_address(raw, where)
        section = config.section(data, "metrics")
        remote = "allow_remote" in section and config.get_bool(section, "allow_remote", "metrics")
        if not remote and not is_loopback(host):
            raise ConfigError(
                f"{where} = {raw!r} listens beyond this machine; the scrape endpoint has no "
                "authentication, so set [metrics] allow_remote = true to mean it, or bind "
                "127.0.0.1 (or export over OTLP)"
            )
        return cls(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}")


def split_address(address: str, where: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: {address!r} is not HOST:PORT")
    return host, int(port)


def export_enabled(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for OTLP metric export (as
    :func:`quorum.telemetry.export_enabled` does for spans)."""
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if env.get("OTEL_METRICS_EXPORTER", "").lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    )


# -- the provider ------------------------------------------------------------------------------


class Installed:
    """What :func:`setup` started: the scrape URL (None without an endpoint) and a shutdown."""

    def __init__(self, url: str | None, server: WSGIServer | None, provider: Any) -> None:
        self.url = url
        self._server = server
        self._provider = provider

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown(timeout_millis=5000)  # exports once more over OTLP
            self._provider = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def setup(
    service: str,
    settings: MetricsSettings,
    env: Mapping[str, str] | None = None,
    *,
    worker: int | None = None,
) -> Installed:
    """Install the meter provider with its readers: the Prometheus endpoint (raises OSError
    when its address cannot be bound) and OTLP export, as configured. Once per process.
    ``worker``: this process is that one of several serving one service (:mod:`quorum.workers`):
    its resource gets a ``service.instance.id`` of its own (else OTLP would mix their series)
    and ``quorum.worker``."""
    env = os.environ if env is None else env
    readers: list[Any] = []
    server: WSGIServer | None = None
    url = None
    if settings.address:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        host, port = split_address(settings.address, "metrics_address")
        try:
            server, _ = start_http_server(port, addr=host)
        except OSError as e:
            raise OSError(
                f"cannot bind the metrics endpoint {settings.address}: {e.strerror}"
            ) from e
        bound = server.server_address[1]
        url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}/metrics"
        readers.append(PrometheusMetricReader())
    if export_enabled(env):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(timeout=5)))
    if not readers:
        return Installed(None, None, None)
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, str | int] = {"service.name": env.get("OTEL_SERVICE_NAME") or service}
    if worker is not None:
        attributes |= {"service.instance.id": str(uuid.uuid4()), "quorum.worker": worker}
    resource = Resource.create(attributes)
    provider = MeterProvider(metric_readers=readers, resource=resource)
    metrics.set_meter_provider(provider)
    provider.get_meter(SCOPE).create_observable_gauge(
        "quorum.usage.backlog",
        callbacks=[_observe_backlogs],
        unit="{record}",
        description="usage records waiting for the cost service",
    )
    if url:
        log.info("metrics on %s", url)
    return Installed(url, server, provider)


# -- instruments -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Instruments:
    rpc_duration: Histogram
    tokens: Histogram
    cost: Counter
    votes: Counter
    verdicts: Counter


@cache
def _instruments() -> _Instruments:
    # made on first use: before setup they are the API's proxies, and follow the provider
    # once it is installed; without one they do nothing
    m = metrics.get_meter(SCOPE)
    return _Instruments(
        rpc_duration=m.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="gRPC calls served",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        ),
        tokens=m.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="tokens of each billed provider call",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        ),
        cost=m.create_counter(
            "quorum.cost.micros", description="cost of billed provider calls, in micro-units"
        ),
        votes=m.create_counter("quorum.voter.votes", description="judges' votes"),
        verdicts=m.create_counter("quorum.voter.verdicts", description="moderations answered"),
    )


def rpc_served(method: str, code: str, seconds: float) -> None:
    """One gRPC call served: ``method`` as ``package.Service/Method``, ``code`` a status name."""
    _instruments().rpc_duration.record(
        seconds,
        {"rpc.system.name": "grpc", "rpc.method": method, "rpc.response.status_code": code},
    )


class UsageObserver:
    """Counts each settled usage record's tokens and cost (a :class:`quorum.usage.Meter`'s
    ``on_settled``); records of models the registry does not know are not counted, and a
    simulated call's tokens are counted but not its cost: nothing was billed."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def __call__(self, rec: UsageRecord) -> None:
        spec = self._registry.models.get(rec.model)
        if spec is None:
            return
        ins = _instruments()
        base = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": spec.provider_name,
            "gen_ai.request.model": spec.name,
        }
        ins.tokens.record(rec.input_tokens, {**base, "gen_ai.token.type": "input"})
        ins.tokens.record(rec.output_tokens, {**base, "gen_ai.token.type": "output"})
        if rec.simulated:
            return
        usage = TokenUsage(rec.input_tokens, rec.output_tokens, rec.cached_input_tokens)
        try:
            cost = bill(spec.name, spec.pricing, usage, rec.occurred_at_us, self._registry.rates)
        except (PriceNotFound, NoExchangeRate, ValueError):
            return  # the cost service says what it costs, or refuses it for a person
        ins.cost.add(
            cost.cost.micros,
            {"gen_ai.request.model": spec.name, "quorum.cost.currency": cost.cost.currency},
        )


def votes_cast(votes: Iterable[tuple[str, str, bool]]) -> None:
    """Judges' votes: (judge, status, is_safe) each; is_safe counts only for status ``ok``."""
    counter = _instruments().votes
    for judge, status, is_safe in votes:
        verdict = ("safe" if is_safe else "unsafe") if status == "ok" else "none"
        counter.add(
            1, {"quorum.judge": judge, "quorum.vote.status": status, "quorum.vote.verdict": verdict}
        )


def verdict_given(*, is_safe: bool, requires_review: bool) -> None:
    _instruments().verdicts.add(
        1,
        {
            "quorum.moderation.is_safe": is_safe,
            "quorum.moderation.requires_review": requires_review,
        },
    )


# -- the usage backlog gauge -----------------------------------------------------------------------

_meters: weakref.WeakSet[Meter] = weakref.WeakSet()
_meters_lock = threading.Lock()


def watch_backlog(meter: Meter) -> None:
    """Report ``meter``'s backlog in ``quorum.usage.backlog`` for as long as it lives."""
    with _meters_lock:
        _meters.add(meter)


def _observe_backlogs(options: CallbackOptions) -> Iterable[Observation]:
    with _meters_lock:
        live = list(_meters)
    by_source: dict[str, int] = {}
    for m in live:
        by_source[m.source] = by_source.get(m.source, 0) + m.backlog
    return [Observation(n, {"quorum.source": s}) for s, n in sorted(by_source.items())]
