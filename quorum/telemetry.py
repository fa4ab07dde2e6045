"""OpenTelemetry set-up, once per process, before any channel or client exists.

Export is configured by the standard variables: spans go out over OTLP/HTTP when
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (and
``OTEL_TRACES_EXPORTER`` is not ``none``); otherwise spans still get ids, so trace ids flow
to logs and downstream services, but nothing is exported and, unless the caller's trace is
recorded (or ``OTEL_TRACES_SAMPLER`` says otherwise), nothing is recorded.
``OTEL_SERVICE_NAME`` overrides the service name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler

log = logging.getLogger(__name__)

#: service names (without the leading slash)
_HEALTH = "grpc.health.v1.Health"
_REFLECTION = "grpc.reflection."
#: how many method names the filter remembers its decision for
_MAX_METHODS = 1024


def export_enabled(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def capture_content(env: Mapping[str, str]) -> bool:
    """Whether the operator opted in to prompts and answers on the model calls' spans: the
    OpenTelemetry GenAI variable ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``
    (off by default: content is the users' data)."""
    value = env.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
    return value.strip().lower() in ("true", "1", "yes")


def traces_url(env: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL the environment names (for Triton's own exporter)."""
    if not export_enabled(env):
        return None
    if url := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return url
    return env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"


def traces_headers(env: Mapping[str, str]) -> dict[str, str]:
    """The headers the environment asks every traces export to carry
    (``OTEL_EXPORTER_OTLP_TRACES_HEADERS``, else ``OTEL_EXPORTER_OTLP_HEADERS``: ``k=v,k2=v2``,
    URL-encoded), e.g. an API key. Secrets: never log them."""
    from opentelemetry.util.re import parse_env_headers

    value = env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS")
    return dict(parse_env_headers(value, liberal=True)) if value else {}


def setup(
    service: str,
    env: Mapping[str, str] | None = None,
    *,
    exporter: SpanExporter | None = None,
    instrument: bool = True,
) -> Callable[[], None]:
    """Install the tracer provider and the gRPC instrumentation (aio servers, and the channels
    between our services: :func:`client_interceptors`). Returns a function that flushes and
    shuts tracing down. A provider call's span is the model adapter's own (``chat <model>``,
    GenAI attributes), which also sends the trace context in the request's headers."""
    env = os.environ if env is None else env
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service})
    if exporter is None and export_enabled(env):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(timeout=5)
    sampler: Sampler | None = None  # the SDK's: OTEL_TRACES_SAMPLER, else parent-based on
    if exporter is None and not env.get("OTEL_TRACES_SAMPLER"):
        # Nothing leaves the process, so a span nobody upstream records is not recorded here
        # either: it still has ids (in the logs, sent downstream) but costs next to nothing.
        # A call whose caller records its trace is recorded (its context flows on as sampled).
        sampler = ParentBased(ALWAYS_OFF)
    provider = TracerProvider(resource=resource, sampler=sampler)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # honours OTEL_BSP_*
    trace.set_tracer_provider(provider)
    if instrument:
        _instrument()
    log.debug("tracing set up for %s (export=%s)", service, exporter is not None)

    def shutdown() -> None:
        provider.force_flush(timeout_millis=5000)
        provider.shutdown()

    return shutdown


def setup_client(service: str, env: Mapping[str, str] | None = None) -> Callable[[], None]:
    """Tracing for a synchronous gRPC client (the CLI): its calls start the trace."""
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient

    shutdown = setup(service, env, instrument=False)
    GrpcInstrumentorClient().instrument()
    return shutdown


def untraced(method: str) -> bool:
    """Whether calls of ``method`` (``/package.Service/Method``) make no span: health checks
    and reflection (they would bury the traces that matter). Triton's readiness polls make
    none either: its channel is not traced (see :func:`client_interceptors`)."""
    return method.lstrip("/").startswith((_HEALTH + "/", _REFLECTION))


def traced() -> Callable[[Any], bool]:
    """The gRPC instrumentation's filter: True for every call but the :func:`untraced` ones.

    It runs on every call, client and server, so it decides once per method name: the
    instrumentation's own filters ask ``isinstance`` of a typing protocol several times a
    call, which cost about a fifth of a busy service's CPU."""
    decided: dict[str, bool] = {}

    def filter_(details: Any) -> bool:
        name = getattr(details, "method", None) or getattr(details, "full_method", "")
        # grpc.aio's client call details hold bytes (grpc#31092)
        method = name.decode() if isinstance(name, bytes) else str(name)
        verdict = decided.get(method)
        if verdict is None:
            verdict = not untraced(method)
            if len(decided) < _MAX_METHODS:  # method names come from callers: keep it bounded
                decided[method] = verdict
        return verdict

    return filter_


def _instrument() -> None:
    global _trace_channels
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer

    # the filter goes to the constructor: instrument() ignores a filter_ argument
    GrpcAioInstrumentorServer(filter_=traced()).instrument()
    _trace_channels = True


#: whether :func:`client_interceptors` traces: set by :func:`setup` with instrumentation
_trace_channels = False


def client_interceptors() -> list[Any]:
    """The tracing interceptors for a channel to another Quorum service (one client span per
    call, its context sent on), once :func:`setup` has instrumented the process; none before.

    Only our own channels get them (:func:`quorum.channels.connect`), not every channel in
    the process: an intercepted call costs grpc.aio extra tasks, and Triton's inferences are
    traced by :mod:`quorum.backends.triton` and :mod:`quorum.backends.tritonchat` themselves
    (one GenAI client span each, its context sent on)."""
    if not _trace_channels:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(filter_=traced()))
