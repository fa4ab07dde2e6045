"""The HTTP client that the model adapters send provider calls with: httpx's API over aiohttp's
connection pool.

:class:`quorum.backends.openai.OpenAIChat` is written against ``httpx.AsyncClient`` (its
timeouts, its exception tree, its streaming responses). httpx's own transport (httpcore over
anyio) costs about a millisecond of CPU a request here and its connection pool serialises under
load: straight to a provider that answers at once, 32 requests in flight got a few hundred
requests/s from httpx's transport and several thousand from aiohttp's (``bench/bench_router.py``
measures the router over each). :class:`AiohttpTransport` is an ``httpx.AsyncBaseTransport``
that sends with one ``aiohttp.ClientSession`` instead, so the adapters keep httpx's interface
and every error they handle:

- a connect timeout is ``httpx.ConnectTimeout``; a read timeout ``httpx.ReadTimeout``;
- a refused or unresolvable connection is ``httpx.ConnectError``;
- a connection lost mid-response (or a malformed one) is ``httpx.ReadError`` /
  ``httpx.RemoteProtocolError``; a URL that is not HTTP(S) ``httpx.UnsupportedProtocol``.

The timeouts are httpx's, per request (``httpx.Timeout``: ``connect`` bounds getting a
connection, pool wait included; ``read`` each wait for bytes). Bodies are not decompressed
here: httpx decodes them by their ``Content-Encoding``, as with its own transport. A proxy
from the environment is still httpx's business: the client sends proxied URLs through its own
proxy transport, and the rest here. The session is made on the
first request (it belongs to the running event loop) and closed by ``aclose``.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator

import aiohttp
import certifi
import httpx

__all__ = ["AiohttpTransport", "provider_client"]

#: a response cut short, or one that is not HTTP
_CUT_SHORT = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientResponseError,
)

#: request headers aiohttp sets itself from the body and the URL
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})


def provider_client(*, max_connections: int, max_keepalive_connections: int) -> httpx.AsyncClient:
    """The one long-lived client a service sends its provider calls with."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_keepalive_connections
    )
    return httpx.AsyncClient(transport=AiohttpTransport(limits=limits), limits=limits)


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped():
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """aiohttp's exceptions as the httpx ones the adapters handle."""
    try:
        yield
    except (aiohttp.ClientError, TimeoutError) as exc:
        name = type(exc).__name__
        mapped: httpx.TransportError
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            mapped = httpx.ConnectTimeout(name)
        elif isinstance(exc, TimeoutError):  # waiting for bytes (aiohttp's sock_read)
            mapped = httpx.ReadTimeout(name)
        elif isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
            mapped = httpx.UnsupportedProtocol(name)
        elif isinstance(exc, aiohttp.ClientConnectorError):
            mapped = httpx.ConnectError(name)
        elif isinstance(exc, _CUT_SHORT):
            mapped = httpx.RemoteProtocolError(name)  # cut short, or not HTTP
        else:
            mapped = httpx.ReadError(name)
        raise mapped from exc


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session (see the module's docstring)."""

    def __init__(self, *, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits()
        self._max_connections = limits.max_connections or 0  # 0: no limit
        self._keepalive_s = limits.keepalive_expiry or 5.0
        self._session: aiohttp.ClientSession | None = None
        self._ssl = ssl.create_default_context(cafile=certifi.where())

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_s,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes by Content-Encoding
                trust_env=False,  # the httpx client routes proxied URLs (its own mounts)
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        t = request.extensions.get("timeout", {})
        connect = t.get("connect")
        pool = t.get("pool")
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=t.get("read"),
        )
        headers = [
            (k, v) for k, v in request.headers.multi_items() if k.lower() not in _OWN_HEADERS
        ]
        body = await request.aread()
        session = self._open()
        with _mapped():
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
                compress=None,
            )
        return httpx.Response(
            status_code=response.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
            stream=_Body(response),
            extensions={
                "http_version": f"HTTP/{response.version.major}.{response.version.minor}".encode()
                if response.version
                else b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
