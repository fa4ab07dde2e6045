"""A real Arize Phoenix on loopback, for tests.

    with PhoenixServer(tmp_path) as px:
        ...  # export spans to px.endpoint (OTEL_EXPORTER_OTLP_ENDPOINT)
        spans = px.spans(trace_id)

Phoenix lives in its own venv (``make phoenix-setup`` makes ``.quorum/phoenix-venv``; it needs
numpy 2, the project numpy < 2), or the one whose Python ``$QUORUM_PHOENIX_PYTHON`` names.
It runs as its own process (``scripts/phoenix_serve.py``: every port on loopback) on free
ports, with its data in a given directory. :func:`python` is None when it is not installed
(the tests skip).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from quorum.ids import free_ports

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PROJECT = "default"


def python() -> Path | None:
    """The Python of the Phoenix venv, or None when Phoenix is not installed."""
    given = os.environ.get("QUORUM_PHOENIX_PYTHON")
    path = Path(given) if given else ROOT / ".quorum" / "phoenix-venv" / "bin" / "python"
    # the venv's `phoenix` script says the package is there (importing it takes seconds)
    return path if (path.parent / "phoenix").is_file() else None


class PhoenixServer:
    def __init__(self, python: Path, working_dir: Path, *, start_timeout_s: float = 120.0) -> None:
        self.python = python
        self.working_dir = working_dir
        self.start_timeout_s = start_timeout_s
        self.port, self.grpc_port = free_ports(2, HOST)
        self.log_path = working_dir / "phoenix.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._client = httpx.Client(base_url=self.url, timeout=10, trust_env=False)

    @property
    def url(self) -> str:
        """The UI and API, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{HOST}:{self.port}"

    @property
    def endpoint(self) -> str:
        """What ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes (OTLP/HTTP, protobuf only)."""
        return self.url

    def start(self) -> PhoenixServer:
        env = {
            **os.environ,
            "PHOENIX_HOST": HOST,
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_WORKING_DIR": str(self.working_dir),
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
        }
        env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
        self.working_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self.python), str(ROOT / "scripts" / "phoenix_serve.py")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.working_dir,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"phoenix exited: {self.log_tail()}")
            try:
                if self._client.get("/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"phoenix not up in {self.start_timeout_s:.0f}s")
            time.sleep(0.25)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._client.close()

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- reading back -----------------------------------------------------------------------

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        """Every span Phoenix holds for ``trace_id`` (its REST API)."""
        r = self._client.get(
            f"/v1/projects/{PROJECT}/spans", params={"trace_id": trace_id, "limit": 1000}
        )
        if r.status_code == 404:  # no project yet: nothing has arrived
            return []
        r.raise_for_status()
        return list(r.json()["data"])

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        r = self._client.post("/graphql", json={"query": query, "variables": variables})
        r.raise_for_status()
        body = r.json()
        assert not body.get("errors"), body["errors"]
        return dict(body["data"])

    def project_id(self) -> str:
        data = self.graphql("{ projects { edges { node { id name } } } }")
        (pid,) = [
            e["node"]["id"] for e in data["projects"]["edges"] if e["node"]["name"] == PROJECT
        ]
        return str(pid)

    def trace_summary(self, trace_id: str) -> dict[str, Any] | None:
        """What Phoenix's UI shows for a trace: span count and the root's token totals
        (summed by Phoenix over the whole tree)."""
        query = """
        query ($project: ID!, $trace: ID!) {
          node(id: $project) {
            ... on Project {
              trace(traceId: $trace) {
                numSpans
                rootSpan {
                  name
                  cumulativeTokenCountPrompt
                  cumulativeTokenCountCompletion
                  cumulativeTokenCountTotal
                }
              }
            }
          }
        }"""
        data = self.graphql(query, project=self.project_id(), trace=trace_id)
        trace = data["node"]["trace"]
        return dict(trace) if trace else None

    def __enter__(self) -> PhoenixServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
