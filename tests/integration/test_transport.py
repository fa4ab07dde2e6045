"""The provider client (one aiohttp session) against real sockets on loopback: what the model
adapters rely on (a POST whose answer streams, decoding, timeouts, its error tree, the
environment's proxy, no cookies kept). The whole OpenAI adapter suite
(test_openai_adapter.py) runs over it as well."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from quorum import __version__
from quorum.backends.transport import (
    BadURL,
    ConnectError,
    ConnectionLost,
    ProviderClient,
    ProviderResponse,
    ReadTimeout,
    Undecodable,
)
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
async def client() -> AsyncIterator[ProviderClient]:
    async with contextlib.aclosing(ProviderClient(max_connections=4)) as c:
        yield c


async def _post(
    client: ProviderClient,
    url: str,
    body: bytes = b"x",
    headers: dict[str, str] | None = None,
    read_s: float = 5.0,
) -> tuple[ProviderResponse, bytes]:
    r = await client.post(url, body, headers or {}, connect_s=5.0, read_s=read_s)
    try:
        return r, b"".join([c async for c in r.aiter_bytes()])
    finally:
        await r.aclose()


async def test_a_request_and_its_answer_pass_through_whole(client: ProviderClient) -> None:
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
            body = json.dumps({"a": n}).encode()
            headers = {"X-Key": "k", "Content-Type": "application/json"}
            r, got = await _post(client, f"{url}/v1/x?q=1", body, headers)
            assert r.status_code == 201
            assert json.loads(got) == {"n": n}  # gzip decoded
            assert r.headers.get("X-THING") == "a"  # any case; the first of a repeated one
        assert len(seen) == 2  # one connection, kept alive
        line, headers, sent = seen[1]
        assert line == "POST /v1/x?q=1 HTTP/1.1"
        assert json.loads(sent) == {"a": 2} and headers["x-key"] == "k"
        assert headers["content-type"] == "application/json"
        assert headers["host"] == url.removeprefix("http://")
        assert headers["user-agent"] == f"quorum/{__version__}"
        assert "gzip" in headers["accept-encoding"]


async def test_a_streamed_body_arrives_as_it_is_sent(client: ProviderClient) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"4\r\nlast\r\n0\r\n\r\n")
        await writer.drain()

    async with _serve(handler) as url:
        r = await client.post(url, b"{}", {}, connect_s=5.0, read_s=5.0)
        try:
            chunks = r.aiter_bytes()
            assert await asyncio.wait_for(anext(chunks), 5) == b"first"  # before the rest
            release.set()
            assert [c async for c in chunks] == [b"last"]
        finally:
            await r.aclose()


async def test_nothing_listening_is_a_connect_error(client: ProviderClient) -> None:
    (port,) = free_ports(1)
    with pytest.raises(ConnectError):
        await _post(client, f"http://127.0.0.1:{port}/")


async def test_a_silent_server_is_a_read_timeout(client: ProviderClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    async with _serve(handler) as url:
        with pytest.raises(ReadTimeout):
            await _post(client, url, read_s=0.2)


async def test_a_body_cut_short_is_a_lost_connection(client: ProviderClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    async with _serve(handler) as url:
        with pytest.raises(ConnectionLost):
            await _post(client, url)


async def test_a_body_its_encoding_cannot_decode_is_undecodable(client: ProviderClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 8\r\n\r\nnot gzip"
        )
        await writer.drain()
        await asyncio.sleep(5)  # open: the body is whole, and still not gzip

    async with _serve(handler) as url:
        with pytest.raises(Undecodable):
            await _post(client, url)


async def test_a_url_that_is_not_http_is_bad(client: ProviderClient) -> None:
    with pytest.raises(BadURL):
        await _post(client, "ftp://127.0.0.1/")
    with pytest.raises(BadURL):
        await _post(client, "http://[::1/")


async def test_a_redirect_is_answered_as_it_is(client: ProviderClient) -> None:
    seen: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await _read_request(reader)
        seen.append(line)
        writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\n")
        writer.write(b"content-length: 0\r\n\r\n")
        await writer.drain()

    async with _serve(handler) as url:
        r, _ = await _post(client, url + "/v1")
        assert r.status_code == 307 and seen == ["POST /v1 HTTP/1.1"]


async def test_a_providers_cookies_are_not_kept(client: ProviderClient) -> None:
    cookies: list[str | None] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                _, headers, _ = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            cookies.append(headers.get("cookie"))
            writer.write(b"HTTP/1.1 200 OK\r\nset-cookie: session=tenant-a; Path=/\r\n")
            writer.write(b"content-length: 0\r\n\r\n")
            await writer.drain()

    async with _serve(handler) as url:
        await _post(client, url)
        await _post(client, url)
    assert cookies == [None, None]


async def test_the_environments_proxy_is_used_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines: list[str] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await _read_request(reader)
        lines.append(line)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nproxied")
        await writer.drain()

    async with _serve(proxy) as proxy_url:
        for var in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.setenv("NO_PROXY", "bypassed.invalid")
        async with contextlib.aclosing(ProviderClient(max_connections=4)) as client:
            _, body = await _post(client, "http://provider.invalid/v1/chat")
            assert body == b"proxied"
            assert lines == ["POST http://provider.invalid/v1/chat HTTP/1.1"]  # absolute form
            with pytest.raises(ConnectError):  # not proxied: resolving .invalid fails
                await _post(client, "http://bypassed.invalid/v1/chat")
        assert len(lines) == 1
