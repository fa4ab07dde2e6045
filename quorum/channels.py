"""gRPC channels between Quorum services: one long-lived channel per upstream, opened at
start-up, closed at shutdown, reconnecting quickly once a peer comes back."""

from __future__ import annotations

import grpc

from quorum.server import MAX_MESSAGE_BYTES

#: gRPC's default reconnect backoff grows to 120 s; a restarted peer should be used within ~2 s
OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)


def insecure_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=OPTIONS)
