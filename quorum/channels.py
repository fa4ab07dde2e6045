"""gRPC channels between Quorum services: one long-lived channel per upstream, opened at
start-up, closed at shutdown, reconnecting quickly once a peer comes back."""

from __future__ import annotations

import grpc

from quorum import telemetry
from quorum.authgrpc import client_interceptors
from quorum.server import MAX_MESSAGE_BYTES
from quorum.tls import TlsSettings

#: gRPC's default reconnect backoff grows to 120 s; a restarted peer should be used within ~2 s
OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)


def connect(
    address: str, token: str | None = None, tls: TlsSettings | None = None
) -> grpc.aio.Channel:
    """A channel to another service: with ``token`` (this service's own key) every call
    carries it; with ``tls`` enabled it is a TLS channel (mutual when ``tls.client_auth``);
    each call is traced once tracing is set up (:func:`quorum.telemetry.client_interceptors`)."""
    interceptors = [*telemetry.client_interceptors(), *client_interceptors(token)]
    if tls is not None and tls.enabled:
        return grpc.aio.secure_channel(
            address,
            tls.channel_credentials(),
            options=[*OPTIONS, *tls.channel_options()],
            interceptors=interceptors,
        )
    return grpc.aio.insecure_channel(address, options=OPTIONS, interceptors=interceptors)
