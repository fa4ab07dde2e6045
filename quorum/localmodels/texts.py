"""Input handling shared by the local text models: checking a batch, decoding a Triton tensor.

Pure: numpy only, nothing at import time. Every local model (``profanity``, ``nsfw``) takes
its texts through :func:`check_texts`, and every Triton adapter decodes its ``TEXT`` input
with :func:`decode_texts`, so a bad input gets the same InvalidArgument from all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from quorum.errors import InvalidArgument

__all__ = ["check_texts", "decode_texts"]


def check_texts(texts: Sequence[str], *, max_chars: int | None = None) -> list[str]:
    """``texts`` as a list, or InvalidArgument.

    A bare ``str`` (which is itself a sequence of characters), anything that is not a
    sequence, an item that is not a ``str`` and, when ``max_chars`` is given, an item longer
    than that are rejected; the message names the first bad item.
    """
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise InvalidArgument("texts must be a sequence of strings")
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise InvalidArgument(f"texts[{i}] is {type(t).__name__}, not str")
        if max_chars is not None and len(t) > max_chars:
            raise InvalidArgument(f"texts[{i}] has {len(t)} characters; the limit is {max_chars}")
    return items


def decode_texts(batch: npt.NDArray[Any]) -> list[str]:
    """Turn a Triton BYTES tensor (an object array of ``bytes``) into ``str``, row-major.

    Shapes ``[n]`` and ``[n, 1]`` give ``n`` texts. Invalid UTF-8 is replaced with U+FFFD
    rather than failing the request; ``str`` items pass through unchanged.
    """
    arr = np.asarray(batch)
    if arr.ndim == 2 and arr.shape[1] != 1:
        raise InvalidArgument(f"expected one text per row, got shape {list(arr.shape)}")
    if arr.ndim not in (1, 2):
        raise InvalidArgument(f"expected a [n] or [n, 1] tensor, got shape {list(arr.shape)}")
    out: list[str] = []
    for i, item in enumerate(arr.reshape(-1).tolist()):
        if isinstance(item, bytes | bytearray):
            out.append(bytes(item).decode("utf-8", errors="replace"))
        elif isinstance(item, str):
            out.append(item)
        else:
            raise InvalidArgument(f"text {i} is {type(item).__name__}, not bytes")
    return out
