"""OpenTelemetry set-up, once per process, before any channel or client exists.

Export is configured by the standard variables: spans go out over OTLP/HTTP when
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (and
``OTEL_TRACES_EXPORTER`` is not ``none``); otherwise spans are still made, so trace ids flow
to logs and downstream services, but nothing is exported. ``OTEL_SERVICE_NAME`` overrides
the service name.
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

log = logging.getLogger(__name__)

#: service names (without the leading slash)
_HEALTH = "grpc.health.v1.Health"
_REFLECTION = "grpc.reflection."
#: Triton's liveness and readiness polls (the voter's health monitor): not worth a trace each
_TRITON_UNTRACED = (
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
    # inferences: quorum.backends.triton and .tritonchat make the client span of each (with
    # the GenAI attributes) and send its context themselves; the instrumentation's would be a
    # second one
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelStreamInfer",
)
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


def traces_url(env: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL the environment names (for Triton's own exporter)."""
    if not export_enabled(env):
        return None
    if url := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return url
    return env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"


def setup(
    service: str,
    env: Mapping[str, str] | None = None,
    *,
    exporter: SpanExporter | None = None,
    instrument: bool = True,
) -> Callable[[], None]:
    """Install the tracer provider and the gRPC (aio server and client) and httpx
    instrumentation. Returns a function that flushes and shuts tracing down."""
    env = os.environ if env is None else env
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service})
    provider = TracerProvider(resource=resource)
    if exporter is None and export_enabled(env):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(timeout=5)
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
    """Whether calls of ``method`` (``/package.Service/Method``) make no span: health checks,
    reflection and Triton's readiness polls (they would bury the traces that matter)."""
    name = method.lstrip("/")
    return name.startswith((_HEALTH + "/", _REFLECTION)) or "/" + name in _TRITON_UNTRACED


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
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
    )
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    # the filter goes to the constructor: instrument() ignores a filter_ argument
    GrpcAioInstrumentorServer(filter_=traced()).instrument()
    GrpcAioInstrumentorClient(filter_=traced()).instrument()
    HTTPXClientInstrumentor().instrument()
