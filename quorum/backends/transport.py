"""The HTTP client that the model adapters send provider calls with: one aiohttp session.

The adapters (:class:`quorum.backends.openai.OpenAIChat`) make one kind of call: a POST of a
JSON body whose answer they read as it arrives, under a connect and a read timeout.
:class:`ProviderClient` does that and no more, over one ``aiohttp.ClientSession`` (its
connection pool, keep-alive, TLS with certifi's roots). A general-purpose client costs more:
with httpx's client over this session, ``bench/bench_router.py``'s calls straight to the
provider did 1,652-1,952 requests/s at 32 in flight; with this client, 4,107-5,294 (most of
the difference in building the request, merging headers and cookies, and extracting cookies
from every answer).

What it keeps of a client, on purpose:

- **Timeouts per call**: ``connect_s`` bounds getting a connection (the wait for the pool
  included), ``read_s`` each wait for bytes. A deadline over the whole call is the caller's.
- **Errors** as a small tree under :class:`TransportError`: :class:`ConnectTimeout`,
  :class:`ReadTimeout`, :class:`ConnectError` (refused, unresolvable), :class:`BadURL` (not
  HTTP(S), or not a URL), :class:`Undecodable` (a body its ``Content-Encoding`` cannot decode)
  and :class:`ConnectionLost` (cut short, or not HTTP). No aiohttp exception leaves here.
- **Bodies decoded** by their ``Content-Encoding`` (gzip, deflate; and br when brotli is
  installed), as the session asks for them.
- **A proxy from the environment** (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``, read when
  the client is made): each host's choice is made once and kept. aiohttp's own
  ``trust_env`` reads the environment and ``~/.netrc`` on every request (in a thread, each
  time), and would send ``.netrc`` credentials to a provider.

What it leaves out: cookies (a provider's are dropped: one long-lived client serves every
tenant), redirects (a 3xx is answered as it is, and the adapter refuses it), and retries (the
router's attempt loop owns them). The session is made on the first call (it belongs to the
running event loop) and closed by :meth:`ProviderClient.aclose` (``contextlib.aclosing`` makes a
client a context manager).
"""

from __future__ import annotations

import contextlib
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping

import aiohttp
import certifi
from aiohttp import http_exceptions

from quorum import __version__

__all__ = [
    "BadURL",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "ProviderClient",
    "ProviderResponse",
    "ReadTimeout",
    "TransportError",
    "Undecodable",
]

USER_AGENT = f"quorum/{__version__}"


class TransportError(Exception):
    """A provider call that failed below HTTP (its message names the cause's type only)."""


class ConnectTimeout(TransportError):
    """No connection within ``connect_s``."""


class ReadTimeout(TransportError):
    """No bytes within ``read_s``."""


class ConnectError(TransportError):
    """The connection was refused, or the host could not be resolved."""


class BadURL(TransportError):
    """The URL is not an HTTP(S) URL."""


class Undecodable(TransportError):
    """A body that its ``Content-Encoding`` does not decode."""


class ConnectionLost(TransportError):
    """The connection closed or broke mid-answer, or the answer is not HTTP."""


#: either timeout
Timeout = (ConnectTimeout, ReadTimeout)


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """aiohttp's exceptions (and a timeout while reading) as :class:`TransportError`."""
    try:
        yield
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        name = type(exc).__name__
        mapped: TransportError
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            mapped = ConnectTimeout(name)
        elif isinstance(exc, TimeoutError):  # waiting for bytes (aiohttp's sock_read)
            mapped = ReadTimeout(name)
        elif isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError | ValueError):
            mapped = BadURL(name)
        elif isinstance(exc, aiohttp.ClientConnectorError):
            mapped = ConnectError(name)
        elif isinstance(exc, aiohttp.ClientPayloadError) and isinstance(
            exc.__cause__ or exc.__context__, http_exceptions.ContentEncodingError
        ):
            mapped = Undecodable(name)
        else:
            mapped = ConnectionLost(name)
        raise mapped from exc


def bypassed(host: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (``no_proxy``: comma-separated hosts and domains, ``*`` for all)
    names ``host`` (``name[:port]``): the host itself, or a domain it is in."""
    # [IPv6]:port or name:port
    name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    name = name.lower().rstrip(".")
    for entry in no_proxy.replace(" ", "").lower().split(","):
        entry = entry.lstrip("*").lstrip(".").rstrip(".")
        if entry == "" and "*" in no_proxy:
            return True
        if entry and (name == entry or name.endswith("." + entry)):
            return True
    return False


class ProviderResponse:
    """An answer whose body has not been read yet: read it with :meth:`aiter_bytes`, and
    :meth:`aclose` it in every case (its connection goes back to the pool)."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers, looked up without regard to case (the first value of a repeated one)."""
        return self._response.headers

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body, decoded, as it arrives."""
        with _mapped():
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


class ProviderClient:
    """One long-lived client for a service's provider calls (see the module's docstring).

    ``max_connections`` bounds the connections open at once (over every host; 0: no bound);
    an idle one is closed after ``keepalive_s``."""

    def __init__(self, *, max_connections: int, keepalive_s: float = 5.0) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._ssl = ssl.create_default_context(cafile=certifi.where())
        env = urllib.request.getproxies_environment()
        self._proxies = {k: v for k, v in env.items() if k in ("http", "https")}
        self._no_proxy = env.get("no", "")
        self._proxy_for: dict[str, str | None] = {}

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
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # the environment's proxy is read once, in __init__
                timeout=aiohttp.ClientTimeout(total=None),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    def _proxy(self, url: str) -> str | None:
        """The environment's proxy for ``url``'s scheme and host, decided once a host."""
        if not self._proxies:
            return None
        scheme, _, rest = url.partition("://")
        netloc = rest.split("/", 1)[0]
        origin = f"{scheme}://{netloc}"
        if origin not in self._proxy_for:
            proxy = self._proxies.get(scheme.lower())
            if proxy and bypassed(netloc.rpartition("@")[2], self._no_proxy):
                proxy = None
            self._proxy_for[origin] = proxy
        return self._proxy_for[origin]

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        connect_s: float,
        read_s: float,
    ) -> ProviderResponse:
        """POST ``body`` to ``url``: the answer once its status line and headers are in (its
        body still to read). Raises :class:`TransportError`."""
        timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_s, sock_connect=connect_s, sock_read=read_s
        )
        with _mapped():
            response = await self._open().post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
                proxy=self._proxy(url),
            )
        return ProviderResponse(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
