"""TLS between clients and services, and mutual TLS between services (``[tls]``).

With ``enabled``, every Quorum server listens with TLS (``cert_file`` + ``key_file``), and
every channel a service or the CLI opens verifies the server against ``ca_file``. With
``client_auth`` on as well, servers also require a client certificate signed by ``ca_file``,
and services present their own certificate when they call each other (mutual TLS): a
process without a certificate from that authority cannot even open a connection. The
certificates must name the addresses they serve (a subject alternative name such as
``IP:127.0.0.1`` or ``DNS:cost.internal``); ``server_name`` overrides the name checked when
the address does not (for example when dialling by IP a certificate made for a DNS name).

Relative paths are taken from the data directory. Files are read once, at start-up; a
missing or unreadable one stops the start, naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from quorum import config
from quorum.registry import ConfigError


@dataclass(frozen=True)
class TlsSettings:
    enabled: bool = False
    client_auth: bool = False
    server_name: str = ""
    #: PEM bytes (read at load; never logged)
    cert: bytes = field(default=b"", repr=False)
    key: bytes = field(default=b"", repr=False)
    ca: bytes = field(default=b"", repr=False)

    @classmethod
    def from_config(cls, data: Mapping[str, Any], env: Mapping[str, str]) -> TlsSettings:
        t = config.section(data, "tls")
        if not config.get_bool(t, "enabled", "tls"):
            return cls()

        def read(key: str) -> bytes:
            raw = str(t.get(key) or "")
            if not raw:
                raise ConfigError(f"[tls] is enabled: tls.{key} must name a PEM file")
            path = Path(raw).expanduser()
            path = path if path.is_absolute() else config.data_dir(env) / path
            try:
                return path.read_bytes()
            except OSError as e:
                raise ConfigError(f"tls.{key}: cannot read {path}: {e.strerror}") from None

        return cls(
            enabled=True,
            client_auth=config.get_bool(t, "client_auth", "tls"),
            server_name=str(t.get("server_name") or ""),
            cert=read("cert_file"),
            key=read("key_file"),
            ca=read("ca_file"),
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.ca if self.client_auth else None,
            require_client_auth=self.client_auth,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Verifies servers against the CA; presents this process's certificate when mutual
        TLS is on."""
        if self.client_auth:
            return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)
        return grpc.ssl_channel_credentials(self.ca)

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def blocking_channel(address: str, tls: TlsSettings) -> grpc.Channel:
    """A blocking (not asyncio) channel, with TLS when ``tls`` is enabled: for the CLI and for
    ``quorum up``'s health checks."""
    if tls.enabled:
        return grpc.secure_channel(address, tls.channel_credentials(), tls.channel_options())
    return grpc.insecure_channel(address)
