"""A provider stand-in for benchmarks: answers every OpenAI chat-completions request at once.

    python bench/fastprovider.py --port 8000

The provider simulator (``quorum.simulator``) is a faithful OpenAI-compatible server, and
costs about a millisecond of CPU a request; a benchmark of what sits in front of a provider
(the router, a gateway) then measures the simulator as much as the gateway. This server does
the least a provider can: one asyncio protocol, HTTP/1.1 keep-alive, a request's body read by
its ``Content-Length`` and one fixed, valid chat completion (with ``usage``) sent back. It has
no streaming and no errors; it is for benchmarks only, never for tests of behaviour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

ANSWER = "A quorum is the least number of members who must be present for a vote to count."
USAGE = {"prompt_tokens": 12, "completion_tokens": 18, "total_tokens": 30}
MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024


def _response(status: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def _completion(model: str) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    return _response("200 OK", json.dumps(body, separators=(",", ":")).encode())


class _Provider(asyncio.Protocol):
    def __init__(self) -> None:
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._cache: dict[str, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buf += data
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    self._transport.close()
                return
            head = self._buf[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length > MAX_BODY:
                self._transport.close()
                return
            if len(self._buf) < end + 4 + length:
                return
            body = self._buf[end + 4 : end + 4 + length]
            self._buf = self._buf[end + 4 + length :]
            self._transport.write(self._answer(head[0], body))

    def _answer(self, request_line: str, body: bytes) -> bytes:
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0]
        if method != "POST" or not path.endswith("/chat/completions"):
            return _response("404 Not Found", b'{"error":{"message":"not found"}}')
        try:
            model = str(json.loads(body).get("model", ""))
        except (ValueError, AttributeError):
            return _response("400 Bad Request", b'{"error":{"message":"bad JSON"}}')
        if model not in self._cache:
            self._cache[model] = _completion(model)
        return self._cache[model]


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Provider, "127.0.0.1", port, backlog=1024)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    asyncio.run(serve(p.parse_args().port))


if __name__ == "__main__":
    main()
