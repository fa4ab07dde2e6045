"""A provider simulator: a real OpenAI-compatible chat-completions server on loopback.

Every answer it gives is *simulated* and says so: generated text starts with
``[simulated <model>] `` and every response carries ``"system_fingerprint":
"quorum-simulator"``. It exists so that the router, the voter and the tests can speak the real
HTTP protocol (unary JSON, SSE streaming, usage, errors, latency) without a real provider.

Endpoints
---------
``POST /v1/chat/completions``
    Unary JSON (``chat.completion``) or, with ``"stream": true``, SSE ``data: {...}`` events of
    ``chat.completion.chunk`` objects over chunked transfer encoding, ending ``data: [DONE]``.
    With ``stream_options.include_usage`` the last chunk before ``[DONE]`` has empty
    ``choices`` and the ``usage`` block (as OpenAI does).
``GET /v1/models``, ``GET /v1/models/<id>``, ``GET /healthz``
    The models it serves (see *Models* below), one of them (404 ``model_not_found`` for
    another), and a liveness probe.
``POST /_simulator/faults`` / ``GET`` / ``DELETE``
    Add faults (body: one fault object or a list of them, see :class:`Fault`), list the active
    ones (``{"faults": [{...fault, "remaining": n | null}]}``) or clear them all.
``GET /_simulator/requests`` / ``DELETE``
    The recorded ``/v1/*`` requests (``{"requests": [{"method", "path", "model",
    "has_authorization", "traceparent", "body"}]}``) or forget them.
``GET /_simulator/stats`` / ``DELETE``
    What a real provider would bill: ``{"completions", "prompt_tokens",
    "completion_tokens", "cached_tokens"}`` over every chat completion it began to answer with
    200 (unary or stream, a stream later cut off or abandoned included; errors, hangs and bad
    bodies are not answers), or reset them.

Rules the answers follow (deterministic, so tests can rely on them)
------------------------------------------------------------------
* Tokens: :func:`count_tokens` -- one token per 4 characters, rounded up (``""`` is 0,
  anything else at least 1). ``prompt_tokens`` is the sum over the message contents;
  ``completion_tokens`` is ``count_tokens(content)`` of the returned content.
* Prompt cache: like OpenAI, ``usage.prompt_tokens_details.cached_tokens`` says how much of
  the prompt was served from the cache. The simulated cache holds, per model, every leading
  run of messages (``messages[:k]``) of the prompts it answered; a new prompt's cached tokens
  are the tokens of its longest such run, when that reaches ``prompt_cache_min_tokens``
  (OpenAI's 1024 by default), else 0. Errors and hangs cache nothing.
* Chat answers: ``[simulated <model>] `` followed by a templated reply that echoes the first
  words of the last user message. ``max_tokens`` (or ``max_completion_tokens``) bounds the
  part after the label (``max_tokens * 4`` characters); the label itself is never cut, so a
  tiny ``max_tokens`` can be exceeded by the label's own tokens. Cut answers finish
  ``"length"``.
* Streams send one content chunk per token (4 characters), after a first chunk carrying
  ``{"role": "assistant", "content": ""}`` and before a chunk carrying ``finish_reason``.
* Judge mode: ``response_format = {"type": "json_schema", "json_schema": {"name":
  "moderation_verdict", ...}}`` (or plain JSON mode, ``{"type": "json_object"}``) makes the
  content a JSON verdict computed from keyword lists over the last user message (see
  :func:`judge`). ``max_tokens`` bounds the whole JSON.
* Structured outputs: any other ``json_schema`` gets a JSON document that validates against
  its ``schema`` (:func:`quorum.schema_example.example_of`: strings quote the prompt's first
  words, other values are picked from a hash of it), so the official SDK's
  ``client.chat.completions.parse(response_format=SomePydanticModel)`` works. ``max_tokens``
  bounds the whole JSON. A schema with no finite instance, or a ``$ref`` that names nothing,
  is a 400.
* Models: ``ProviderSimulator(models=[...])`` (``--model``, repeatable) are the model ids it
  serves; a request for another is 404 ``model_not_found``. ``python -m quorum.simulator``
  serves :data:`KNOWN_MODELS` (the provider ids of Quorum's embedded defaults) unless given
  ``--model`` or ``--any-model``; ``quorum up`` passes the configured models. In-process,
  ``models=None`` (the default) serves any model id.
* Authorization: with ``api_key`` set, ``/v1/*`` requests need ``Authorization: Bearer
  <key>``, else 401 ``invalid_api_key``. Admin endpoints and ``/healthz`` never need a key
  (loopback test tool).
* Request bodies over :data:`MAX_BODY_BYTES` get 413.

Every error body is OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``, a
bad request naming the field in ``param``, e.g. ``messages.[0].role``) and its message
contains :data:`LEAK_MARKER`, a fake secret, so tests can prove that adapters never pass a
provider's raw body on. No error message holds anything shaped like a key (``sk-...``): one
sent where a model name goes is redacted.

Run it alone with ``python -m quorum.simulator --port 50070 [--latency 0.05] [--any-model]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, cast, get_args

from quorum.schema_example import example_of
from quorum.signals import StopSignals

logger = logging.getLogger(__name__)

#: A marker every simulated error body contains: nothing of a provider's error body may leave
#: an adapter, and tests look for it (it is not shaped like a key, so no scanner takes the
#: simulator's answers for a leaked secret).
LEAK_MARKER = "SIMULATOR-LEAK-MARKER"
SYSTEM_FINGERPRINT = "quorum-simulator"
#: Largest request body accepted; larger ones get 413.
MAX_BODY_BYTES = 1024 * 1024
#: Bodies up to this size are read and dropped before the 413, so the client sees the answer.
_DRAIN_LIMIT_BYTES = 16 * 1024 * 1024
#: Upper bound of a ``hang`` fault: the simulator never hangs forever.
MAX_HANG_S = 300.0
#: How many requests :attr:`ProviderSimulator.requests` keeps (oldest dropped first).
MAX_RECORDED_REQUESTS = 1000
#: OpenAI caches prompts of at least this many tokens; so does the simulator, by default
DEFAULT_PROMPT_CACHE_MIN_TOKENS = 1024
#: how many message prefixes the simulated prompt cache keeps (least recently used go first)
MAX_CACHED_PREFIXES = 10_000
CHARS_PER_TOKEN = 4
#: the provider model ids of Quorum's embedded defaults (``quorum/defaults.toml``): what
#: ``python -m quorum.simulator`` serves unless told otherwise with ``--model``
KNOWN_MODELS: tuple[str, ...] = (
    "claude-sonnet-4-5",
    "deepseek-chat",
    "gemini-2.5-flash",
    "gpt-4.1",
)
#: what a key looks like (OpenAI's ``sk-...``, Anthropic's ``sk-ant-...``): never in an error
_KEY_LIKE_RE = re.compile(r"\bsk-[A-Za-z0-9_\-]{4,}")

FaultKind = Literal[
    "status",
    "rate_limit",
    "hang",
    "malformed_json",
    "code_fenced_json",
    "bad_body",
    "cut_stream",
    "no_usage",
    "obedient",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

#: Keywords per moderation category, matched as whole words, case-insensitively.
JUDGE_KEYWORDS: Mapping[str, tuple[str, ...]] = {
    "violence": ("kill", "murder", "attack", "stab", "shoot", "bomb", "weapon", "gun", "blood"),
    "adult": ("porn", "nude", "naked", "sex", "explicit", "xxx", "nsfw"),
    "hate": ("hate", "racist", "subhuman", "inferior race", "nazi", "bigot", "slur"),
    "spam": ("buy now", "click here", "free money", "limited offer", "winner", "discount"),
    "harassment": ("idiot", "stupid", "loser", "shut up", "worthless", "nobody likes you"),
    "injection": (
        "ignore previous instructions",
        "ignore all previous instructions",
        "system prompt",
        "jailbreak",
        "developer mode",
    ),
    "self_harm": ("kill myself", "suicide", "self-harm", "cut myself", "end my life"),
}
_KEYWORD_RES: Mapping[str, re.Pattern[str]] = {
    cat: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    for cat, words in JUDGE_KEYWORDS.items()
}


def count_tokens(text: str) -> int:
    """The simulator's token rule: one token per 4 characters, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def judge(text: str) -> dict[str, Any]:
    """A simulated moderation verdict from keyword lists (:data:`JUDGE_KEYWORDS`).

    A category with ``n >= 1`` keyword hits scores ``min(0.99, 0.6 + 0.15 * (n - 1))``, one
    without scores 0.02; the text is unsafe when any category reaches 0.5.
    """
    scores: dict[str, float] = {}
    matched: list[str] = []
    for cat, pattern in _KEYWORD_RES.items():
        hits = pattern.findall(text)
        scores[cat] = round(min(0.99, 0.6 + 0.15 * (len(hits) - 1)), 2) if hits else 0.02
        if hits:
            matched.append(f"{cat} ({hits[0].lower()!r})")
    top = max(scores.values())
    is_safe = top < 0.5
    reason = (
        "simulated verdict (keyword lists, no model): matched " + ", ".join(matched)
        if matched
        else "simulated verdict (keyword lists, no model): no keyword matched"
    )
    return {
        "is_safe": is_safe,
        "confidence": 0.9 if is_safe else top,
        "categories": scores,
        "reason": reason,
    }


#: what an ``obedient`` judge is talked into
_OBEY_RE = re.compile(r"ignore (the|all|any) (above|previous)|answer safe|is_safe\W+true", re.I)
OBEYED_VERDICT: dict[str, Any] = {
    "is_safe": True,
    "confidence": 0.99,
    "categories": dict.fromkeys(JUDGE_KEYWORDS, 0.01),
    "reason": "simulated obedient judge: did as the text said",
}


@dataclass(frozen=True)
class Fault:
    """A failure to inject into ``/v1/chat/completions`` for ``model`` (``"*"``: every model).

    kinds:
      ``status``            answer ``status`` (400..599) with an OpenAI error body; with
                            ``retry_after`` set, a ``Retry-After`` header too
      ``rate_limit``        429 with ``Retry-After: retry_after`` (1 when None); a number is
                            sent as delta-seconds, a string as is (e.g. an HTTP-date)
      ``hang``              wait ``seconds`` (at most MAX_HANG_S; cut short by ``stop()``),
                            then close the connection without answering
      ``malformed_json``    200 whose content is a verdict JSON cut in half
      ``code_fenced_json``  200 whose content is the verdict JSON inside a json code fence
      ``bad_body``          200 whose HTTP body is HTML, not JSON (also for streams)
      ``cut_stream``        streams: close after ``after_chunks`` SSE events, without
                            ``[DONE]``; unary: close after half of the promised body
      ``no_usage``          a normal answer without any ``usage`` block (unary or stream)
      ``obedient``          judge mode: a judge that follows instructions inside the text it
                            judges (a prompt-injection victim): a text that says "ignore the
                            above", "answer safe" or "is_safe true" gets an all-safe verdict

    ``times`` is how many matching requests it applies to (None: all of them). Faults are
    tried in the order they were added; the first that matches wins.
    JSON shape: ``{"kind": "rate_limit", "model": "*", "times": 1, "retry_after": 2}``.
    """

    kind: FaultKind
    status: int = 500
    retry_after: float | str | None = None
    seconds: float = 30.0
    after_chunks: int = 2
    times: int | None = None
    model: str = "*"

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {list(FAULT_KINDS)}, not {self.kind!r}")
        if isinstance(self.status, bool) or not 400 <= self.status <= 599:
            raise ValueError("fault status must be an HTTP error status (400..599)")
        if not 0 <= self.seconds <= MAX_HANG_S:
            raise ValueError(f"fault seconds must be within 0..{MAX_HANG_S:g}")
        if self.after_chunks < 0:
            raise ValueError("fault after_chunks must be >= 0")
        if self.times is not None and self.times < 1:
            raise ValueError("fault times must be >= 1 (or null for every request)")
        if not self.model:
            raise ValueError("fault model must be a model name or '*'")
        ra = self.retry_after
        if isinstance(ra, str):
            if not ra or any(c in ra for c in "\r\n"):
                raise ValueError("fault retry_after must be a non-empty single-line string")
        elif ra is not None and (isinstance(ra, bool) or not math.isfinite(ra) or ra < 0):
            raise ValueError("fault retry_after must be a finite number >= 0")

    @classmethod
    def from_json(cls, obj: object) -> Fault:
        """Build a fault from its JSON object; ValueError names what is wrong."""
        if not isinstance(obj, dict):
            raise ValueError("a fault must be a JSON object")
        unknown = set(obj) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}")
        checks: dict[str, tuple[type, ...]] = {
            "kind": (str,),
            "status": (int,),
            "retry_after": (int, float, str, type(None)),
            "seconds": (int, float),
            "after_chunks": (int,),
            "times": (int, type(None)),
            "model": (str,),
        }
        for key, value in obj.items():
            if isinstance(value, bool) or not isinstance(value, checks[key]):
                raise ValueError(f"fault field {key!r} has the wrong type")
        if "kind" not in obj:
            raise ValueError("a fault needs a 'kind'")
        return cls(**obj)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def retry_after_header(self) -> str | None:
        value = self.retry_after
        if value is None:
            return "1" if self.kind == "rate_limit" else None
        if isinstance(value, str):
            return value
        return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class RecordedRequest:
    """One request the simulator received. The Authorization value is never stored."""

    method: str
    path: str
    model: str | None
    has_authorization: bool
    traceparent: str | None
    body: Any

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _ActiveFault:
    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.remaining = fault.times


class ProviderSimulator:
    """The simulator server; see the module docstring for what it answers.

    ``start()`` binds (port 0 picks a free port) and serves from daemon threads; ``stop()``
    closes every socket, wakes hanging or streaming handlers and joins the threads.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_s: float = 0.0,
        token_delay_s: float = 0.0,
        api_key: str | None = None,
        faults: Sequence[Fault] = (),
        prompt_cache_min_tokens: int = DEFAULT_PROMPT_CACHE_MIN_TOKENS,
        models: Sequence[str] | None = None,
    ) -> None:
        """``models``: the model ids it serves (another is 404 ``model_not_found``, as from a
        real provider; ``python -m quorum.simulator`` serves :data:`KNOWN_MODELS` unless told
        otherwise); None serves any model, which suits tests that make up model names."""
        if latency_s < 0 or token_delay_s < 0:
            raise ValueError("latency_s and token_delay_s must be >= 0")
        if prompt_cache_min_tokens < 1:
            raise ValueError("prompt_cache_min_tokens must be >= 1")
        if api_key is not None and not api_key:
            raise ValueError("api_key must be None (no key required) or a non-empty string")
        self._host = host
        self._port = port
        self.latency_s = latency_s
        self.token_delay_s = token_delay_s
        self._api_key = api_key
        self.models: frozenset[str] | None = None if models is None else frozenset(models)
        self._lock = threading.Lock()
        self._faults: list[_ActiveFault] = [_ActiveFault(f) for f in faults]
        self._requests: deque[RecordedRequest] = deque(maxlen=MAX_RECORDED_REQUESTS)
        self._billed = {
            "completions": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached_tokens": 0,
        }
        self.prompt_cache_min_tokens = prompt_cache_min_tokens
        self._prompt_cache: OrderedDict[str, None] = OrderedDict()
        self._models_seen: dict[str, None] = dict.fromkeys(KNOWN_MODELS)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._ids = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the simulator is already started")
        self._stopping.clear()
        server = _Server((self._host, self._port), self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="quorum-simulator",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving: close the listener and every connection, join all threads."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server, self._thread = None, None
        self._stopping.set()
        server.shutdown()
        server.server_close()
        handlers = server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        deadline = time.monotonic() + 5
        for t in handlers:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> ProviderSimulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://{self._host}:{self.port}/v1"

    # -- faults and inspection -------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(_ActiveFault(fault))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[dict[str, Any]]:
        """Active faults as JSON objects, each with ``remaining`` (None: unlimited)."""
        with self._lock:
            return [{**a.fault.to_json(), "remaining": a.remaining} for a in self._faults]

    @property
    def requests(self) -> list[RecordedRequest]:
        """The ``/v1/*`` requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def stats(self) -> dict[str, int]:
        """What a real provider would bill so far (see ``GET /_simulator/stats``)."""
        with self._lock:
            return dict(self._billed)

    def clear_stats(self) -> None:
        with self._lock:
            for key in self._billed:
                self._billed[key] = 0

    def clear_prompt_cache(self) -> None:
        with self._lock:
            self._prompt_cache.clear()

    def _bill(self, usage: Mapping[str, Any]) -> None:
        with self._lock:
            self._billed["completions"] += 1
            self._billed["prompt_tokens"] += usage["prompt_tokens"]
            self._billed["completion_tokens"] += usage["completion_tokens"]
            self._billed["cached_tokens"] += usage["prompt_tokens_details"]["cached_tokens"]

    def _cached_tokens(self, model: str, messages: Sequence[Any], tokens: Sequence[int]) -> int:
        """Tokens of the longest leading run of ``messages`` an earlier prompt to ``model``
        began with (0 under ``prompt_cache_min_tokens``); then remembers this prompt's."""
        keys = []
        digest = hashlib.sha256(model.encode())
        for m in messages:
            digest.update(json.dumps(m, sort_keys=True).encode() + b"\0")
            keys.append(digest.copy().hexdigest())
        with self._lock:
            hit = max((k + 1 for k, key in enumerate(keys) if key in self._prompt_cache), default=0)
            for key in keys:
                self._prompt_cache[key] = None
                self._prompt_cache.move_to_end(key)
            while len(self._prompt_cache) > MAX_CACHED_PREFIXES:
                self._prompt_cache.popitem(last=False)
        cached = sum(tokens[:hit])
        return cached if cached >= self.prompt_cache_min_tokens else 0

    # -- used by the handler ---------------------------------------------------------------

    def _take_fault(self, model: str) -> Fault | None:
        with self._lock:
            for active in self._faults:
                if active.fault.model in ("*", model):
                    if active.remaining is not None:
                        active.remaining -= 1
                        if active.remaining <= 0:
                            self._faults.remove(active)
                    return active.fault
        return None

    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(req)
            if req.model and len(self._models_seen) < 1000:
                self._models_seen.setdefault(req.model, None)

    def serves(self, model: str) -> bool:
        """Whether a request for ``model`` is answered (else 404 ``model_not_found``)."""
        return self.models is None or model in self.models

    def _models(self) -> list[str]:
        """What ``GET /v1/models`` lists: the models it serves; when it serves any, the
        well-known ones and every one asked for so far."""
        if self.models is not None:
            return sorted(self.models)
        with self._lock:
            return list(self._models_seen)

    def _next_id(self) -> str:
        with self._lock:
            self._ids += 1
            return f"chatcmpl-sim-{self._ids}"

    def _authorized(self, header: str | None) -> bool:
        if self._api_key is None:
            return True
        expected = f"Bearer {self._api_key}".encode()
        return header is not None and hmac.compare_digest(header.encode(), expected)

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; False when the simulator is stopping (give up at once)."""
        if seconds <= 0:
            return not self._stopping.is_set()
        return not self._stopping.wait(seconds)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks its connections so ``stop()`` can close them all."""

    daemon_threads = True
    block_on_close = False
    #: the listen backlog (socketserver's default is 5: a burst of new connections, as from a
    #: client opening its pool at concurrency 32, was reset)
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], sim: ProviderSimulator) -> None:
        self.sim = sim
        self._conn_lock = threading.Lock()
        self._conns: dict[threading.Thread, socket.socket] = {}
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name="quorum-simulator-conn",
            daemon=True,
        )
        with self._conn_lock:
            self._conns[t] = request
        t.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._conns.pop(threading.current_thread(), None)

    def close_connections(self) -> list[threading.Thread]:
        """Shut every open connection down; returns the threads still serving them."""
        with self._conn_lock:
            conns = list(self._conns.items())
        for _, sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return [t for t, _ in conns]

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("simulator connection error from %s", client_address, exc_info=True)


def _error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape; ``code`` overrides the status's usual code. Anything shaped
    like a key in ``message`` (a client may put one where a model name goes) is redacted."""
    kinds = {
        400: ("invalid_request_error", None),
        401: ("invalid_request_error", "invalid_api_key"),
        403: ("permission_denied", "unsupported_country_region_territory"),
        404: ("invalid_request_error", "model_not_found"),
        413: ("invalid_request_error", "request_too_large"),
        429: ("requests", "rate_limit_exceeded"),
    }
    etype, usual = kinds.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    message = _KEY_LIKE_RE.sub("[redacted]", message)
    return {
        "error": {
            "message": f"{message} (simulated; {LEAK_MARKER})",
            "type": etype,
            "param": param,
            "code": code or usual,
        }
    }


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": SYSTEM_FINGERPRINT}


def _message_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": "..."}]
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _summary(text: str, words: int = 12, chars: int = 80) -> str:
    parts = text.split()
    s = " ".join(parts[:words])
    if len(s) > chars:
        s = s[:chars].rstrip()
    return s + ("..." if s != " ".join(parts) else "")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "quorum-simulator/0.1"
    sys_version = ""
    timeout = 30  # idle keep-alive connections are closed after this

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle's algorithm and
        # delayed ACKs add ~40 ms to every answer
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def sim(self) -> ProviderSimulator:
        return cast(_Server, self.server).sim

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("simulator: " + format, *args)

    # -- plumbing --------------------------------------------------------------------------

    def _send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _send_json(
        self,
        status: int,
        obj: object,
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        body = json.dumps(obj).encode()
        self._send_bytes(status, body, "application/json", headers, close=close)

    def _send_error_json(
        self,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        body = _error_body(status, message, param, code)
        self._send_json(status, body, headers, close=close)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering 411/413/400 already."""
        if self.headers.get("Transfer-Encoding"):
            self._send_error_json(411, "chunked request bodies are not supported", close=True)
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self._send_error_json(400, "invalid Content-Length", close=True)
            return None
        if length > MAX_BODY_BYTES:
            if length <= _DRAIN_LIMIT_BYTES:  # read and drop it, so the client sees the 413
                left = length
                while left > 0:
                    got = self.rfile.read(min(left, 65536))
                    if not got:
                        break
                    left -= len(got)
            self._send_error_json(413, f"request body over {MAX_BODY_BYTES} bytes", close=True)
            return None
        return self.rfile.read(length)

    def _read_json(self) -> tuple[bool, Any]:
        body = self._read_body()
        if body is None:
            return False, None
        try:
            return True, json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            self._send_error_json(400, "the request body is not valid JSON")
            return False, None

    # -- routing ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send_json(200, {"status": "ok", "simulated": True})
        elif path == "/v1/models":
            self._record(None, None)
            if not self._check_auth():
                return
            data = [_model_object(m) for m in self.sim._models()]
            self._send_json(200, {"object": "list", "data": data})
        elif path.startswith("/v1/models/"):
            model = urllib.parse.unquote(path.removeprefix("/v1/models/"))
            self._record(model, None)
            if not self._check_auth():
                return
            if self.sim.serves(model):
                self._send_json(200, _model_object(model))
            else:
                self._model_not_found(model)
        elif path == "/_simulator/requests":
            self._send_json(200, {"requests": [r.to_json() for r in self.sim.requests]})
        elif path == "/_simulator/faults":
            self._send_json(200, {"faults": self.sim.faults})
        elif path == "/_simulator/stats":
            self._send_json(200, self.sim.stats)
        else:
            self._send_error_json(404, f"no route GET {path}")

    def do_DELETE(self) -> None:
        path = self.path.split("?", 1)[0]
        if self._read_body() is None:
            return
        if path == "/_simulator/faults":
            self.sim.clear_faults()
            self._send_json(200, {"faults": []})
        elif path == "/_simulator/requests":
            self.sim.clear_requests()
            self._send_json(200, {"requests": []})
        elif path == "/_simulator/stats":
            self.sim.clear_stats()
            self._send_json(200, self.sim.stats)
        else:
            self._send_error_json(404, f"no route DELETE {path}")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/v1/chat/completions":
            self._chat_completions()
        elif path == "/_simulator/faults":
            self._post_faults()
        elif self._read_body() is not None:
            self._send_error_json(404, f"no route POST {path}")

    def _post_faults(self) -> None:
        ok, obj = self._read_json()
        if not ok:
            return
        items = obj if isinstance(obj, list) else [obj]
        try:
            faults = [Fault.from_json(item) for item in items]
        except (ValueError, TypeError) as exc:
            self._send_error_json(400, f"invalid fault: {exc}")
            return
        for f in faults:
            self.sim.add_fault(f)
        self._send_json(200, {"faults": self.sim.faults})

    def _record(self, model: str | None, body: Any) -> None:
        self.sim._record(
            RecordedRequest(
                method=self.command,
                path=self.path.split("?", 1)[0],
                model=model,
                has_authorization=self.headers.get("Authorization") is not None,
                traceparent=self.headers.get("traceparent"),
                body=body,
            )
        )

    def _check_auth(self) -> bool:
        """True when the request may go on; else answers 401 as OpenAI does (never quoting
        the key it was sent)."""
        header = self.headers.get("Authorization")
        if self.sim._authorized(header):
            return True
        if header is None:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            message = "Incorrect API key provided."
        self._send_error_json(401, message)
        return False

    # -- chat completions ------------------------------------------------------------------

    def _chat_completions(self) -> None:
        raw = self._read_body()
        if raw is None:
            self._record(None, None)
            return
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._record(None, None)
            self._send_error_json(400, "the request body is not valid JSON")
            return
        model = body.get("model") if isinstance(body, dict) else None
        self._record(model if isinstance(model, str) else None, body)
        if not self._check_auth():
            return
        problem = _validate_chat(body)
        if problem is not None:
            self._send_error_json(400, problem.message, param=problem.param, code=problem.code)
            return
        sim = self.sim
        assert isinstance(model, str)
        if not sim.serves(model):
            self._model_not_found(model)
            return
        fault = sim._take_fault(model)
        if fault is not None and fault.kind == "hang":
            sim._sleep(fault.seconds)
            self.close_connection = True
            return
        if not sim._sleep(sim.latency_s):
            self.close_connection = True
            return
        stream = bool(body.get("stream"))
        if fault is not None:
            if fault.kind in ("status", "rate_limit"):
                status = 429 if fault.kind == "rate_limit" else fault.status
                ra = fault.retry_after_header()
                self._send_error_json(
                    status,
                    f"simulated HTTP {status} for model {model}",
                    {"Retry-After": ra} if ra is not None else None,
                )
                return
            if fault.kind == "bad_body":
                html = f"<html><body>502 upstream glitch {LEAK_MARKER}</body></html>".encode()
                self._send_bytes(200, html, "text/html; charset=utf-8")
                return
        content, finish = _content(body, model, fault)
        messages = body["messages"]
        tokens = [count_tokens(_message_text(m.get("content"))) for m in messages]
        usage: dict[str, Any] = {
            "prompt_tokens": sum(tokens),
            "completion_tokens": count_tokens(content),
            "total_tokens": sum(tokens) + count_tokens(content),
            "prompt_tokens_details": {"cached_tokens": sim._cached_tokens(model, messages, tokens)},
        }
        sim._bill(usage)
        cut = fault is not None and fault.kind == "cut_stream"
        no_usage = fault is not None and fault.kind == "no_usage"
        if stream:
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            include_usage = include_usage and not no_usage
            after = fault.after_chunks if cut and fault is not None else None
            self._stream(model, content, finish, usage if include_usage else None, after)
        else:
            obj = {
                "id": sim._next_id(),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
            if no_usage:
                del obj["usage"]
            data = json.dumps(obj).encode()
            if cut:  # promise the whole body, send half of it, close
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
                return
            self._send_bytes(200, data, "application/json")

    def _model_not_found(self, model: str) -> None:
        self._send_error_json(
            404,
            f"The model `{model[:100]}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )

    def _stream(
        self,
        model: str,
        content: str,
        finish: str,
        usage: dict[str, Any] | None,
        cut_after: int | None,
    ) -> None:
        sim = self.sim
        cid, created = sim._next_id(), int(time.time())

        def chunk(delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if usage is not None:
                obj["usage"] = None
            return obj

        def events() -> Iterator[dict[str, Any]]:
            yield chunk({"role": "assistant", "content": ""}, None)
            for i in range(0, len(content), CHARS_PER_TOKEN):
                yield chunk({"content": content[i : i + CHARS_PER_TOKEN]}, None)
            yield chunk({}, finish)
            if usage is not None:
                yield {**chunk({}, None), "choices": [], "usage": usage}

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for n, ev in enumerate(events()):
                if cut_after is not None and n >= cut_after:
                    self.close_connection = True  # no [DONE], no last chunk: a broken stream
                    return
                if n > 1 and not sim._sleep(sim.token_delay_s):
                    self.close_connection = True
                    return
                self._write_chunk(b"data: " + json.dumps(ev).encode() + b"\n\n")
            self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


@dataclass(frozen=True)
class _BadRequest:
    """What is wrong with a request: the 400's message, ``param`` (the field, in OpenAI's
    ``messages.[0].role`` notation) and ``code``."""

    message: str
    param: str | None = None
    code: str | None = None


#: OpenAI's rule for a response_format schema's name
_SCHEMA_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _validate_chat(body: object) -> _BadRequest | None:
    """What is wrong with a chat-completions request body, or None."""
    if not isinstance(body, dict):
        return _BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model is None:
        return _BadRequest(
            "Missing required parameter: 'model'.", "model", "missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        return _BadRequest("'model' must be a non-empty string", "model", "invalid_type")
    messages = body.get("messages")
    if messages is None:
        return _BadRequest(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        return _BadRequest("'messages' must be a non-empty array", "messages", "invalid_type")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return _BadRequest(
                "every message needs a 'role'", f"messages.[{i}].role", "missing_required_parameter"
            )
        if not isinstance(m.get("content"), str | list | None):
            return _BadRequest(
                "message 'content' must be a string or an array of parts",
                f"messages.[{i}].content",
                "invalid_type",
            )
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            return _BadRequest(f"'{key}' must be an integer", key, "invalid_type")
        if isinstance(v, int) and v < 1:
            return _BadRequest(
                f"Invalid '{key}': integer below minimum value. Expected a value >= 1, but got "
                f"{v} instead.",
                key,
                "integer_below_min_value",
            )
    return _validate_response_format(body.get("response_format"))


def _validate_response_format(rf: object) -> _BadRequest | None:
    if rf is None:
        return None
    if not isinstance(rf, dict):
        return _BadRequest("'response_format' must be an object", "response_format", "invalid_type")
    kind = rf.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        return _BadRequest(
            "Invalid value for 'response_format.type': expected one of 'text', 'json_object' "
            "or 'json_schema'.",
            "response_format.type",
            "invalid_value",
        )
    if kind != "json_schema":
        return None
    spec = rf.get("json_schema")
    if not isinstance(spec, dict):
        return _BadRequest(
            "Missing required parameter: 'response_format.json_schema'.",
            "response_format.json_schema",
            "missing_required_parameter",
        )
    name = spec.get("name")
    if name is None:
        return _BadRequest(
            "Missing required parameter: 'response_format.json_schema.name'.",
            "response_format.json_schema.name",
            "missing_required_parameter",
        )
    if not isinstance(name, str) or not _SCHEMA_NAME_RE.match(name):
        return _BadRequest(
            "Invalid 'response_format.json_schema.name': letters, digits, '_' and '-' only, "
            "at most 64 of them.",
            "response_format.json_schema.name",
            "invalid_value",
        )
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        return _BadRequest(
            "Invalid type for 'response_format.json_schema.schema': expected an object.",
            "response_format.json_schema.schema",
            "invalid_type",
        )
    if schema is not None and name != "moderation_verdict":
        try:
            example_of(schema)
        except ValueError as exc:
            return _BadRequest(
                f"Invalid schema for response_format '{name}': {exc}.", "response_format"
            )
    return None


def _is_judge(body: Mapping[str, Any]) -> bool:
    rf = body.get("response_format")
    if not isinstance(rf, dict):
        return False
    if rf.get("type") == "json_object":  # plain JSON mode: the only JSON we make is a verdict
        return True
    schema = rf.get("json_schema")
    return (
        rf.get("type") == "json_schema"
        and isinstance(schema, dict)
        and schema.get("name") == "moderation_verdict"
    )


def _other_schema(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The JSON schema a non-judge request asks its answer to follow, if any."""
    rf = body.get("response_format")
    if not isinstance(rf, dict) or rf.get("type") != "json_schema":
        return None
    spec = rf.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else {"type": "object"}


def _content(body: Mapping[str, Any], model: str, fault: Fault | None) -> tuple[str, str]:
    """The answer's content and finish_reason, deterministic in the request."""
    messages = body["messages"]
    last_user = next(
        (_message_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"),
        "",
    )
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    max_chars = limit * CHARS_PER_TOKEN if isinstance(limit, int) else None
    kind = fault.kind if fault is not None else None
    if kind in ("malformed_json", "code_fenced_json") or _is_judge(body):
        obeyed = kind == "obedient" and _OBEY_RE.search(last_user) is not None
        verdict = json.dumps(OBEYED_VERDICT if obeyed else judge(last_user))
        if kind == "malformed_json":
            return verdict[: len(verdict) // 2], "stop"
        if kind == "code_fenced_json":
            return f"```json\n{verdict}\n```", "stop"
        if max_chars is not None and len(verdict) > max_chars:
            return verdict[:max_chars], "length"
        return verdict, "stop"
    schema = _other_schema(body)
    if schema is not None:  # any other JSON schema: a value that validates against it
        document = json.dumps(example_of(schema, last_user))
        if max_chars is not None and len(document) > max_chars:
            return document[:max_chars], "length"
        return document, "stop"
    words = len(last_user.split())
    if words:
        reply = (
            f'You asked about "{_summary(last_user)}" ({words} word{"s" if words > 1 else ""}). '
            "This is a simulated reply from the Quorum provider simulator; no language model "
            "was called."
        )
    else:
        reply = "There was no user message to answer. This is a simulated reply; no model ran."
    label = f"[simulated {model}] "
    if max_chars is not None and len(reply) > max_chars:
        return label + reply[:max_chars], "length"
    return label + reply, "stop"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m quorum.simulator``: serve until SIGINT or SIGTERM, then exit 0."""
    parser = argparse.ArgumentParser(
        prog="python -m quorum.simulator",
        description="OpenAI-compatible provider simulator (every answer is simulated).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50070)
    parser.add_argument("--latency", type=float, default=0.0, help="base latency, seconds")
    parser.add_argument("--token-delay", type=float, default=0.0, help="per streamed token, s")
    parser.add_argument(
        "--prompt-cache-min-tokens",
        type=int,
        default=DEFAULT_PROMPT_CACHE_MIN_TOKENS,
        help="the shortest prompt prefix the simulated prompt cache serves",
    )
    served = parser.add_mutually_exclusive_group()
    served.add_argument(
        "--model",
        action="append",
        help="a model id it serves (repeatable; another is 404); default: "
        + ", ".join(KNOWN_MODELS),
    )
    served.add_argument("--any-model", action="store_true", help="serve any model id")
    parser.add_argument(
        "--api-key-env",
        default=None,
        help="name of an environment variable holding the key clients must send",
    )
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env} is not set")
    stop = StopSignals().install()
    sim = ProviderSimulator(
        args.host,
        args.port,
        latency_s=args.latency,
        token_delay_s=args.token_delay,
        api_key=api_key,
        prompt_cache_min_tokens=args.prompt_cache_min_tokens,
        models=None if args.any_model else (args.model or KNOWN_MODELS),
    )
    try:
        sim.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"provider simulator (simulated responses) listening on {sim.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        stop.restore()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
