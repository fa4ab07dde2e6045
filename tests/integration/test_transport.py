"""The provider client's transport (httpx over aiohttp) against real sockets on loopback: what
the model adapters rely on from httpx, kept (decoding, streaming, timeouts, the exception
tree). The whole OpenAI adapter suite (test_openai_adapter.py) runs over it as well."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from quorum.backends.transport import provider_client
from quorum.ids import free_ports

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {}
    for line in head[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return head[0], headers, body


@contextlib.asynccontextmanager
async def _serve(handler: Handler) -> AsyncIterator[str]:
    """``handler`` serving each connection on a free port; every connection closed on exit."""
    writers: list[asyncio.StreamWriter] = []
    tasks: list[asyncio.Task[None]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in writers:
            writer.close()
        await server.wait_closed()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with provider_client(max_connections=4, max_keepalive_connections=4) as c:
        yield c


async def test_a_request_and_its_answer_pass_through_whole(client: httpx.AsyncClient) -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # keep-alive: every request on one connection
            try:
                seen.append(await _read_request(reader))
            except asyncio.IncompleteReadError:
                break
            body = gzip.compress(json.dumps({"n": len(seen)}).encode())
            writer.write(
                b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n"
                b"content-encoding: gzip\r\nx-thing: a\r\nx-thing: b\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()

    async with _serve(handler) as url:
        for n in (1, 2):
            r = await client.post(f"{url}/v1/x?q=1", json={"a": n}, headers={"X-Key": "k"})
            assert r.status_code == 201 and r.reason_phrase == "Created"
            assert r.json() == {"n": n}  # gzip decoded once, by httpx
            assert r.headers.get_list("x-thing") == ["a", "b"]
        line, headers, body = seen[1]
        assert line == "POST /v1/x?q=1 HTTP/1.1"
        assert json.loads(body) == {"a": 2} and headers["x-key"] == "k"
        assert headers["content-type"] == "application/json"
        assert headers["host"] == url.removeprefix("http://")


async def test_a_streamed_body_arrives_as_it_is_sent(client: httpx.AsyncClient) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"4\r\nlast\r\n0\r\n\r\n")
        await writer.drain()

    async with _serve(handler) as url, client.stream("POST", url, content=b"{}") as r:
        chunks = r.aiter_bytes()
        assert await asyncio.wait_for(anext(chunks), 5) == b"first"  # before the rest
        release.set()
        assert [c async for c in chunks] == [b"last"]


async def test_nothing_listening_is_a_connect_error(client: httpx.AsyncClient) -> None:
    (port,) = free_ports(1)
    with pytest.raises(httpx.ConnectError):
        await client.post(f"http://127.0.0.1:{port}/", content=b"x", timeout=5)


async def test_a_silent_server_is_a_read_timeout(client: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    async with _serve(handler) as url:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(url, content=b"x", timeout=httpx.Timeout(5, read=0.2))


async def test_a_body_cut_short_is_a_transport_error(client: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    async with _serve(handler) as url:
        with pytest.raises(httpx.TransportError):
            await client.post(url, content=b"x", timeout=5)


async def test_a_url_that_is_not_http_is_unsupported(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        await client.post("ftp://127.0.0.1/", content=b"x", timeout=5)
