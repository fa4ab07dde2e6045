"""Request ids, tenants and loopback ports: small helpers every service (and the tests)
share."""

from __future__ import annotations

import re
import socket
import uuid
from contextlib import ExitStack

from quorum.errors import InvalidArgument


def request_id(given: str, *, limit: int, field: str = "request_id") -> str:
    """The client's request id, checked (at most ``limit`` printable characters; an error
    names ``field``), or a new one when it gave none."""
    if not given:
        return uuid.uuid4().hex
    if len(given) > limit or not given.isprintable():
        raise InvalidArgument(
            f"{field} must be at most {limit} printable characters",
            reason="BAD_REQUEST_ID",
            metadata={"field": field},
        )
    return given


#: the tenant of a request that names none (until authentication says whose it is)
DEFAULT_TENANT = "default"
_TENANT = re.compile(r"[A-Za-z0-9._-]{1,64}")


def tenant(given: str, *, field: str = "tenant", required: bool = False) -> str:
    """A tenant name, checked (1 to 64 letters, digits, '.', '_', '-'); DEFAULT_TENANT when
    none is given and none is required."""
    if not given and not required:
        return DEFAULT_TENANT
    if not _TENANT.fullmatch(given):
        raise InvalidArgument(
            f"{field}: must be 1 to 64 letters, digits, '.', '_' or '-'",
            reason="INVALID_FIELD",
            metadata={"field": field},
        )
    return given


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports on ``host`` (held together while picking, then
    released: another process may still take one before it is used)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((host, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def free_port_run(count: int, host: str = "127.0.0.1", *, attempts: int = 100) -> int:
    """The first of ``count`` consecutive free ports on ``host`` (held together while
    checked, then released, as :func:`free_ports`)."""
    for _ in range(attempts):
        with ExitStack() as stack:
            first = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            if port + count - 1 > 65535:
                continue
            try:
                for p in range(port + 1, port + count):
                    stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)).bind(
                        (host, p)
                    )
            except OSError:
                continue
            return port
    raise OSError(f"no {count} consecutive free ports on {host} in {attempts} tries")
