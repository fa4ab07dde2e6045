"""The floor of a router in Python: a bare grpc.aio ``RouterService.Complete`` that forwards.

    python bench/grpcfloor.py --port 50060 --provider http://127.0.0.1:8000/v1

Each ``Complete`` becomes one chat completion sent to ``--provider`` with the client the
router sends with (httpx's API over aiohttp, :func:`quorum.backends.transport.provider_client`)
and its text is the answer. Nothing else: no routing, moderation, usage journal, budgets,
telemetry, auth, metrics or error mapping. ``bench/bench_router.py`` measures it beside the
router: what it adds over a direct call is what the gRPC hop and the HTTP client cost in one
Python process, the least any router built this way can add. For benchmarks only.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc

from quorum.backends.transport import provider_client
from quorum.router.v1 import router_pb2, router_pb2_grpc

MODEL = "gpt-4.1"


class Forwarder(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, url: str, http: Any) -> None:
        self._url, self._http = url + "/chat/completions", http

    async def Complete(self, request: Any, context: Any) -> router_pb2.CompleteResponse:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": request.max_tokens,
        }
        r = await self._http.post(self._url, json=body, timeout=30)
        r.raise_for_status()
        return router_pb2.CompleteResponse(text=r.json()["choices"][0]["message"]["content"])


async def serve(port: int, provider: str) -> None:
    async with provider_client(max_connections=100, max_keepalive_connections=100) as http:
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
