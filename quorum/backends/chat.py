"""The one place a chat call is sent by its backend's kind: an OpenAI-compatible HTTP provider
(:class:`quorum.backends.openai.OpenAIChat`), a chat model on Triton
(:class:`quorum.backends.tritonchat.TritonChat`), or the ``routed_chat`` ensemble on Triton,
which picks the model itself (:class:`quorum.backends.tritonrouted.TritonRoutedChat`). All take
the same request, give the same results and fail with :mod:`quorum.errors` only."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from quorum.backends.openai import OpenAIChat
from quorum.backends.tritonchat import TritonChat
from quorum.backends.tritonrouted import TritonRoutedChat
from quorum.backends.types import ChatChunk, ChatRequest, ChatResult
from quorum.errors import FailedPrecondition
from quorum.registry import OpenAIBackend, TritonBackend

__all__ = ["ChatBackend", "Chats"]

ChatBackend = OpenAIBackend | TritonBackend


class Chats:
    """A chat client for every backend kind; ``triton`` and ``routed`` are None where no
    Triton is configured (a call to a Triton model then fails with FailedPrecondition,
    TRITON_NOT_CONFIGURED)."""

    def __init__(
        self,
        openai: OpenAIChat,
        triton: TritonChat | None = None,
        routed: TritonRoutedChat | None = None,
    ) -> None:
        self._openai = openai
        self._triton = triton
        self._routed = routed

    async def complete(
        self, backend: ChatBackend, request: ChatRequest, *, timeout_s: float
    ) -> ChatResult:
        if isinstance(backend, OpenAIBackend):
            return await self._openai.complete(backend, request, timeout_s=timeout_s)
        return await self._on_triton(backend).complete(backend, request, timeout_s=timeout_s)

    def stream(
        self, backend: ChatBackend, request: ChatRequest, *, timeout_s: float
    ) -> AsyncGenerator[ChatChunk, None]:
        if isinstance(backend, OpenAIBackend):
            return self._openai.stream(backend, request, timeout_s=timeout_s)
        return self._on_triton(backend).stream(backend, request, timeout_s=timeout_s)

    def _on_triton(self, backend: TritonBackend) -> TritonChat | TritonRoutedChat:
        client = self._routed if backend.outputs == "routed" else self._triton
        if client is None:
            raise FailedPrecondition(
                f"model {backend.triton_model!r} is on Triton, and no Triton address is configured",
                reason="TRITON_NOT_CONFIGURED",
                metadata={"model": backend.triton_model[:100]},
            )
        return client
