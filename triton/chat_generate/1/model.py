"""Triton Python-backend adapter for :class:`quorum.localmodels.routedchat.Generator`: the
second step of ``routed_chat``.

Inputs ``TEXT`` and ``MODEL`` (BYTES) -> outputs ``ANSWER`` (BYTES), ``MODEL`` (BYTES),
``PROMPT_TOKENS`` and ``COMPLETION_TOKENS`` (INT32), ``SIMULATED`` (BOOL). The requests of a
dynamic batch are answered concurrently on this instance's event loop, over one long-lived
HTTP client; each request gets its own response or its own error (the provider's raw message
never).

Parameters (config.pbtxt): ``timeout_s`` (the deadline of one request, retries included),
``max_attempts``, ``backoff_base_s``, ``backoff_max_s``, ``max_tokens`` (0: the provider's
default). A request's own parameters (``timeout_ms``, ``max_tokens``, ``temperature``:
:func:`~quorum.localmodels.routedchat.call_options`) win for that request. Endpoints and API
keys come from the registry and the environment.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from quorum import config
from quorum.backends.openai import OpenAIChat
from quorum.backends.transport import ProviderClient
from quorum.errors import QuorumError
from quorum.localmodels.routedchat import (
    Generation,
    Generator,
    call_options,
    resolved_registry,
    triton_error,
)
from quorum.localmodels.texts import decode_texts
from quorum.retry import RetryPolicy


def _param(cfg: dict[str, Any], key: str, default: str) -> str:
    return str(cfg.get("parameters", {}).get(key, {}).get("string_value", default))


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        cfg = json.loads(args["model_config"])
        env = dict(os.environ)
        self.loop = asyncio.new_event_loop()
        self.client = ProviderClient(max_connections=100)
        max_tokens = int(_param(cfg, "max_tokens", "0"))
        self.generator = Generator(
            resolved_registry(config.load(None, env), env),
            OpenAIChat(self.client, env),
            timeout_s=float(_param(cfg, "timeout_s", "30")),
            retry=RetryPolicy(
                max_attempts=int(_param(cfg, "max_attempts", "3")),
                backoff_base_s=float(_param(cfg, "backoff_base_s", "0.2")),
                backoff_max_s=float(_param(cfg, "backoff_max_s", "2.0")),
            ),
            max_tokens=max_tokens or None,
        )

    async def _one(self, request: Any) -> Any:
        try:
            texts = decode_texts(pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy())
            models = decode_texts(pb_utils.get_input_tensor_by_name(request, "MODEL").as_numpy())
            options = call_options(request.parameters())
            done: list[Generation] = await asyncio.gather(
                *(
                    self.generator.generate(t, m, options)
                    for t, m in zip(texts, models, strict=True)
                )
            )
        except QuorumError as err:
            return pb_utils.InferenceResponse(error=triton_error(pb_utils, err))

        def column(values: list[Any], dtype: Any) -> Any:
            return np.array([[v] for v in values], dtype=dtype)

        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor("ANSWER", column([g.text.encode() for g in done], np.object_)),
                pb_utils.Tensor("MODEL", column([g.model.encode() for g in done], np.object_)),
                pb_utils.Tensor("PROMPT_TOKENS", column([g.prompt_tokens for g in done], np.int32)),
                pb_utils.Tensor(
                    "COMPLETION_TOKENS", column([g.completion_tokens for g in done], np.int32)
                ),
                pb_utils.Tensor("SIMULATED", column([g.simulated for g in done], np.bool_)),
            ]
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        async def batch() -> list[Any]:
            return list(await asyncio.gather(*(self._one(r) for r in requests)))

        return self.loop.run_until_complete(batch())

    def finalize(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()
