"""What every Quorum gRPC server shares: reflection, the standard health service kept in step
with the service's own dependencies, and a graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from quorum import config
from quorum.auth import AuthSettings
from quorum.authgrpc import server_interceptors
from quorum.metricsgrpc import MetricsInterceptor
from quorum.tls import TlsSettings

log = logging.getLogger(__name__)

#: max message size both ways by default; requests also have per-field limits
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """``[server]``: what one service process takes at most. A message over
    ``max_message_bytes`` (either way) and a call beyond ``max_concurrent_calls`` in flight
    are refused at once by gRPC with RESOURCE_EXHAUSTED, before any handler runs."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_concurrent_calls: int = 512

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> ServerLimits:
        s = config.section(data, "server")
        if not s:
            return cls()
        return cls(
            max_message_bytes=config.get_int(s, "max_message_bytes", "server", minimum=1024),
            max_concurrent_calls=config.get_int(s, "max_concurrent_calls", "server", minimum=1),
        )


Register = Callable[[grpc.aio.Server], None]
Check = Callable[[], Awaitable[bool]]


def create_server(
    address: str,
    register: Register,
    service_names: Sequence[str],
    *,
    auth: AuthSettings | None = None,
    tls: TlsSettings | None = None,
    limits: ServerLimits | None = None,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A server with our services (added by ``register``), reflection and health, bound to
    ``address`` ("127.0.0.1:0" picks a free port), with TLS when ``tls`` is enabled
    (:mod:`quorum.tls`), every call identified by its API key (:mod:`quorum.authgrpc`) and
    measured (:mod:`quorum.metricsgrpc`). Without keys (``auth`` off or None) only a loopback
    address is allowed (ConfigError otherwise). Run the HealthMonitor's first
    :meth:`HealthMonitor.update` before starting the server, so health is never SERVING before
    the dependencies have been checked.

    ``reuse_port`` sets ``SO_REUSEPORT``: only for the processes of one service that share a
    port on purpose (:mod:`quorum.workers`); otherwise a second server on a port in use fails
    to bind instead of silently sharing it."""
    auth = auth or AuthSettings()
    limits = limits or ServerLimits()
    auth.check_bind(address, "the listening address")
    server = grpc.aio.server(
        # metrics first: a call the edge refuses is measured too
        interceptors=[MetricsInterceptor(), *server_interceptors(auth)],
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
        maximum_concurrent_rpcs=limits.max_concurrent_calls,
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        *service_names,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    _serve_reflection_v1(names, server)
    try:
        if tls is not None and tls.enabled:
            port = server.add_secure_port(address, tls.server_credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises where it once returned 0 (its log line says why)
        port = 0
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return server, port, health_servicer


#: the current name of the reflection service; grpcio-reflection serves only v1alpha, whose
#: messages are the same on the wire, so the same servicer answers under both names
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _serve_reflection_v1(names: Sequence[str], server: grpc.aio.Server) -> None:
    servicer = reflection_aio.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),)
    )


class HealthMonitor:
    """Sets SERVING / NOT_SERVING for the services (and the server as a whole, "") from a
    dependency check run every ``interval_s`` seconds."""

    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        service_names: Sequence[str],
        check: Check,
        *,
        interval_s: float = 2.0,
    ) -> None:
        self._servicer = servicer
        self._names = ("", *service_names)
        self._check = check
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        self.serving = False

    async def update(self) -> bool:
        try:
            ok = await self._check()
        except Exception:
            log.exception("health check failed")
            ok = False
        if ok != self.serving:
            log.info("health: %s", "SERVING" if ok else "NOT_SERVING")
        self.serving = ok
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._names:
            await self._servicer.set(name, status)
        return ok

    def start(self) -> None:
        async def loop() -> None:
            while True:
                await self.update()
                await asyncio.sleep(self._interval)

        self._task = asyncio.create_task(loop(), name="health-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._servicer.enter_graceful_shutdown()


async def serve_until_signal(
    server: grpc.aio.Server,
    monitor: HealthMonitor,
    *,
    grace_s: float = 5.0,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    on_ready: Callable[[], None] | None = None,
    on_signal: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM or SIGINT (or until ``stop`` is set), then: health NOT_SERVING, stop
    taking RPCs, let in-flight ones finish for ``grace_s``, then ``on_stop`` (close clients,
    flush). ``on_ready`` runs once the signal handlers are in place (announce readiness there,
    so a caller that signals at once is handled); ``on_signal`` is told each signal received
    (a parent passes it on to its workers)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def received(sig: int) -> None:
        if on_signal is not None:
            on_signal(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, received, sig)
    if on_ready is not None:
        on_ready()
    monitor.start()
    await stop.wait()
    log.info("draining (grace %.1fs)", grace_s)
    await monitor.stop()
    await server.stop(grace_s)
    if on_stop is not None:
        await on_stop()
    log.info("stopped")
