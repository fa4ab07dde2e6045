"""The floor of a router in Python: a bare grpc.aio ``RouterService.Complete`` that forwards.

    python bench/grpcfloor.py --port 50060 --provider http://127.0.0.1:8000/v1

Each ``Complete`` becomes one chat completion sent to ``--provider`` with the client the
router sends with (:class:`quorum.backends.transport.ProviderClient`) and its text is the
answer. Nothing else: no routing, moderation, usage journal, budgets,
telemetry, auth, metrics or error mapping. ``bench/bench_router.py`` measures it beside the
router: what it adds over a direct call is what the gRPC hop and the HTTP client cost in one
Python process, the least any router built this way can add. For benchmarks only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from contextlib import aclosing
from typing import Any

import grpc

from quorum.backends.transport import ProviderClient
from quorum.router.v1 import router_pb2, router_pb2_grpc

MODEL = "gpt-4.1"


async def post_json(http: ProviderClient, url: str, body: dict[str, Any]) -> Any:
    """POST ``body`` as JSON; the answer's JSON (an error unless it is 200)."""
    data = json.dumps(body).encode()
    r = await http.post(url, data, {"Content-Type": "application/json"}, connect_s=5.0, read_s=30.0)
    try:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code} from {url}")
        return json.loads(b"".join([chunk async for chunk in r.aiter_bytes()]))
    finally:
        await r.aclose()


class Forwarder(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, url: str, http: ProviderClient) -> None:
        self._url, self._http = url + "/chat/completions", http

    async def Complete(self, request: Any, context: Any) -> router_pb2.CompleteResponse:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": request.max_tokens,
        }
        answer = await post_json(self._http, self._url, body)
        return router_pb2.CompleteResponse(text=answer["choices"][0]["message"]["content"])


async def serve(port: int, provider: str) -> None:
    async with aclosing(ProviderClient(max_connections=100)) as http:
        server = grpc.aio.server()
        router_pb2_grpc.add_RouterServiceServicer_to_server(Forwarder(provider, http), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--provider", required=True, help="the provider's /v1 URL")
    args = p.parse_args()
    asyncio.run(serve(args.port, args.provider))


if __name__ == "__main__":
    main()
