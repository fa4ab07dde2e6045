"""``phoenix serve`` on loopback only (`make phoenix`, and the tests marked ``phoenix``).

Run it with the Python of the Phoenix venv (``make phoenix-setup`` makes
``.quorum/phoenix-venv``), never the project's: Phoenix and the project need different numpy.

    .quorum/phoenix-venv/bin/python scripts/phoenix_serve.py

Phoenix reads its settings from the environment; this sets loopback defaults for those left
unset: ``PHOENIX_HOST=127.0.0.1``, ``PHOENIX_PORT=6006`` (UI, API and OTLP/HTTP),
``PHOENIX_GRPC_PORT=4317`` (OTLP/gRPC), ``PHOENIX_WORKING_DIR=.quorum/phoenix`` (its SQLite
data), and ``PHOENIX_TELEMETRY_ENABLED=false`` / ``PHOENIX_ALLOW_EXTERNAL_RESOURCES=false`` (no
tracking pixels, no web fonts from the internet). Phoenix 20 binds its gRPC port on every
interface whatever ``PHOENIX_HOST`` says; this binds it to ``PHOENIX_HOST`` instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

DEFAULTS = {
    "PHOENIX_HOST": "127.0.0.1",
    "PHOENIX_PORT": "6006",
    "PHOENIX_GRPC_PORT": "4317",
    "PHOENIX_WORKING_DIR": str(Path(__file__).resolve().parents[1] / ".quorum" / "phoenix"),
    "PHOENIX_TELEMETRY_ENABLED": "false",
    "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
}


def _grpc_on_host(host: str) -> None:
    """Make every grpc.aio server that asks for ``[::]:PORT`` listen on ``host:PORT``."""
    import grpc.aio

    make_server = grpc.aio.server

    def server_on_host(*args: Any, **kwargs: Any) -> Any:
        server = make_server(*args, **kwargs)
        add_port = server.add_insecure_port

        def add_insecure_port(address: str) -> Any:
            return add_port(address.replace("[::]:", f"{host}:", 1))

        server.add_insecure_port = add_insecure_port
        return server

    grpc.aio.server = server_on_host


def main() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    Path(os.environ["PHOENIX_WORKING_DIR"]).mkdir(parents=True, exist_ok=True)
    _grpc_on_host(os.environ["PHOENIX_HOST"])
    from phoenix.server.main import main as phoenix_main

    sys.argv = ["phoenix", "serve"]
    phoenix_main()


if __name__ == "__main__":
    main()
