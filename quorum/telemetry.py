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

#: service names (without the leading slash: the filters compare the service part)
_HEALTH = "grpc.health.v1.Health"
_REFLECTION = "grpc.reflection."
#: Triton's liveness and readiness polls (the voter's health monitor): not worth a trace each
_TRITON_POLLS = (
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
)


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


def traced() -> Any:
    """The gRPC instrumentation's filter: every call but health checks, reflection and
    Triton's readiness polls (they would bury the traces that matter)."""
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(
        filters.any_of(
            filters.service_name(_HEALTH),
            filters.service_prefix(_REFLECTION),
            *(filters.full_method_name(m) for m in _TRITON_POLLS),
        )
    )


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
