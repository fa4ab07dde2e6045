"""The body of a decoupled (streaming) Triton chat model over
:class:`quorum.localmodels.generation.Generator` (``triton/smollm2/1/model.py``).

Inputs, one request each (``max_batch_size: 0``):

    MESSAGES      BYTES [1]  the chat as JSON: [{"role": ..., "content": ...}, ...]
    MAX_TOKENS    INT32 [1]  the most tokens to write (0: as many as the context leaves)
    TEMPERATURE   FP32  [1]  optional; 0 (greedy) when absent

Responses, many per request (``model_transaction_policy { decoupled: true }``): one per text
delta with ``TEXT`` (BYTES [1]); the last, flagged final, with the rest of the text and
``PROMPT_TOKENS``, ``COMPLETION_TOKENS`` (INT32 [1]) and ``FINISH_REASON`` (BYTES [1]):
the model's own counts. A request that cannot be read gets one ``INVALID_ARG`` error (its
text ``REASON: message``, e.g. ``PROMPT_TOO_LONG: ...``, since a stream's errors carry no
status code); one
whose generation fails gets one ``INTERNAL`` error (after any deltas already sent); the other
requests are not affected. A request the client cancelled stops at the next token.

Triton's ``triton_python_backend_utils`` only exists inside the backend's stub, so the
adapter is given it; nothing here imports it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from quorum.errors import FailedPrecondition, InvalidArgument
from quorum.localmodels.generation import Finished, Generator, gguf_path, gpu_layers, parse_messages

__all__ = ["ChatModel"]

log = logging.getLogger(__name__)


def _scalar(pb_utils: Any, request: Any, name: str, default: float | None) -> float:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if default is None:
            raise InvalidArgument(f"input {name} is missing", reason="MISSING_INPUT")
        return default
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise InvalidArgument(f"input {name} must hold one value", reason="BAD_INPUT")
    return float(values[0])


class ChatModel:
    """``initialize``: the GGUF from its package (or the ``gguf_path`` parameter of the
    config), with every layer on the GPU on a GPU instance when llama.cpp can offload."""

    def __init__(self, pb_utils: Any, args: dict[str, str]) -> None:
        self.pb_utils = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        kind = args.get("model_instance_kind", "CPU")
        try:
            path = Path(params["gguf_path"]) if params.get("gguf_path") else gguf_path()
            self.generator = Generator(
                path,
                n_ctx=int(params.get("context_tokens") or 4096),
                n_gpu_layers=gpu_layers(kind),
                n_threads=int(params.get("threads") or 0) or None,
            )
        except FailedPrecondition as exc:
            raise pb_utils.TritonModelException(f"{config.get('name')}: {exc.message}") from None
        pb_utils.Logger.log_info(
            f"{config.get('name')}: {self.generator.name} on a {kind} instance, "
            f"n_gpu_layers={self.generator.n_gpu_layers}, context {self.generator.n_ctx}, "
            f"threads {self.generator.n_threads}"
        )

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self._serve(request)

    def finalize(self) -> None:
        self.generator.close()

    def _serve(self, request: Any) -> None:
        pb = self.pb_utils
        sender = request.get_response_sender()
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        cancelled = getattr(sender, "is_cancelled", lambda: False)
        try:
            tensor = pb.get_input_tensor_by_name(request, "MESSAGES")
            if tensor is None:
                raise InvalidArgument("input MESSAGES is missing", reason="MISSING_INPUT")
            raw = tensor.as_numpy().reshape(-1)
            if raw.size != 1:
                raise InvalidArgument("input MESSAGES must hold one value", reason="BAD_INPUT")
            messages = parse_messages(raw[0])
            max_tokens = int(_scalar(pb, request, "MAX_TOKENS", None))
            temperature = _scalar(pb, request, "TEMPERATURE", 0.0)
            stream = self.generator.stream(
                messages, max_tokens=max_tokens, temperature=temperature, cancelled=cancelled
            )
            for item in stream:
                if isinstance(item, Finished):
                    sender.send(self._last(item), flags=final)
                    return
                sender.send(pb.InferenceResponse(output_tensors=[_bytes(pb, "TEXT", item)]))
        except InvalidArgument as exc:
            # "REASON: text": a stream's error carries no status code, the client reads the
            # reason (quorum.backends.tritonchat)
            self._fail(sender, f"{exc.reason}: {exc.message}", pb.TritonError.INVALID_ARG)
        except Exception:
            log.exception("generation failed")
            self._fail(sender, "GENERATION_FAILED: generation failed", pb.TritonError.INTERNAL)

    def _fail(self, sender: Any, message: str, code: Any) -> None:
        """The request's last response, an error; a sender that cannot send any more (the
        client went away) ends the request all the same."""
        pb = self.pb_utils
        try:
            sender.send(_error(pb, message, code), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception:
            log.warning("could not send the error response of a request")

    def _last(self, done: Finished) -> Any:
        pb = self.pb_utils
        return pb.InferenceResponse(
            output_tensors=[
                _bytes(pb, "TEXT", ""),
                pb.Tensor("PROMPT_TOKENS", np.array([done.prompt_tokens], dtype=np.int32)),
                pb.Tensor("COMPLETION_TOKENS", np.array([done.completion_tokens], dtype=np.int32)),
                _bytes(pb, "FINISH_REASON", done.finish_reason),
            ]
        )


def _bytes(pb_utils: Any, name: str, text: str) -> Any:
    return pb_utils.Tensor(name, np.array([text.encode("utf-8")], dtype=np.object_))


def _error(pb_utils: Any, message: str, code: Any) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
