"""The ``execute`` loop every Triton text-scoring model shares (``triton/*/1/model.py``).

Input ``TEXT`` (BYTES, [batch, 1], UTF-8) -> output ``SCORE`` (FP32, [batch, 1]), or one
output per category for a model that has several (``outputs``). The texts
of all requests in a dynamic batch are scored in one call, then split back: one response per
request, in request order. A request that cannot be read, or that holds a text over the
model's limit, gets its own ``INVALID_ARG`` error response; the others still get their
scores. A failure of the model fails the batch (each request gets ``INTERNAL``), never the
server.

Triton's ``triton_python_backend_utils`` only exists inside the backend's stub, so the
adapter passes it in; nothing here imports it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from quorum.errors import InvalidArgument
from quorum.localmodels.texts import check_texts, decode_texts

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "HeadsModel",
    "Instance",
    "category_columns",
    "execute_scoring",
    "heads_model",
    "limit_blas_threads",
    "output_dtype",
    "parameter",
]

INPUT_NAME = "TEXT"
OUTPUT_NAME = "SCORE"
#: a per-category model's outputs are SCORE_<CATEGORY>, e.g. SCORE_SELF_HARM
CATEGORY_PREFIX = "SCORE_"

Scorer = Callable[[Sequence[str]], npt.NDArray[np.float32]]
#: texts -> the features a model's heads score
Features = Callable[[Sequence[str]], Any]


@dataclass(frozen=True)
class Instance:
    """One Triton instance of a model, as a runtime that owns its device and threads (ONNX
    Runtime) needs it: from ``initialize``'s args and the config's thread parameters."""

    kind: str = "CPU"  # args["model_instance_kind"]: CPU, GPU or MODEL
    device_id: int = 0  # args["model_instance_device_id"]
    threads: int = 0  # blas_threads (0: the runtime's own choice)
    threads_one_text: int = 0  # blas_threads_one_text (0: threads)


class HeadsModel:
    """The body of a per-category head judge's Triton model (``text_heads``, ``ngram_heads``,
    ``prompt_task``): the heads from ``load(<version folder>)``, the config's
    ``SCORE_<CATEGORY>`` outputs mapped to their columns (:func:`category_columns`), and
    ``execute`` over ``heads.score(features(texts))``. A head file that cannot be used fails
    the load, saying why; the features run once at load, so the first request pays no
    start-up.

    ``features`` is a function over texts (numpy, scikit-learn) or, as ``features_for``, a
    runtime made at load for this :class:`Instance` (ONNX Runtime: its device and thread
    pools). The config's ``blas_threads`` parameter, when set, caps the BLAS (OpenBLAS) threads
    of the model's process (:func:`limit_blas_threads`); ``blas_threads_one_text``, when set,
    is the cap for a batch of one text instead (an idle model: one text's latency is then
    what counts, and a second thread cuts it), the other cap coming back for the next larger
    batch. A ``features_for`` runtime gets both counts in its :class:`Instance` and sizes its
    own thread pools with them."""

    def __init__(
        self,
        pb_utils: Any,
        args: dict[str, str],
        *,
        what: str,
        load: Callable[[Path], Any],
        features: Features | None = None,
        features_for: Callable[[Instance], Features] | None = None,
    ) -> None:
        from quorum.localmodels.embedding import HeadsError

        if (features is None) == (features_for is None):
            raise TypeError("give features or features_for, not both")
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        try:
            self.heads = load(folder)
        except HeadsError as exc:
            raise pb_utils.TritonModelException(f"{what}: {exc}") from None
        self.columns = category_columns(pb_utils, config, self.heads.categories, what=what)
        self.pb_utils, self.what = pb_utils, what
        try:
            threads = limit_blas_threads(parameter(config, "blas_threads"), what=what)
            alone = _whole(
                parameter(config, "blas_threads_one_text"), "blas_threads_one_text", what
            )
            device_id = _whole(args.get("model_instance_device_id", ""), "device id", what)
        except ValueError as exc:
            raise pb_utils.TritonModelException(str(exc)) from None
        kind = args.get("model_instance_kind", "CPU")
        if features_for is not None:
            features = features_for(Instance(kind, device_id, threads, alone))
            self._threads = None  # the runtime sizes its own pools
        else:
            self._threads = BlasThreads(threads, alone) if threads and alone else None
        assert features is not None
        self.features = features
        features(["warm up"])
        features(["warm up", "a batch"])
        pb_utils.Logger.log_info(
            f"{what}: {kind} instance, categories {','.join(self.heads.categories)}; "
            f"BLAS threads {threads or 'default'}"
            + (f"; features {features!r}" if features_for is not None else "")
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_scoring(
            self.pb_utils,
            requests,
            self._score,
            np.float32,
            what=self.what,
            outputs=self.columns,
        )

    def _score(self, texts: Sequence[str]) -> Any:
        if self._threads is not None:
            self._threads.for_batch(len(texts))
        return self.heads.score(self.features(texts))


class BlasThreads:
    """BLAS threads by batch size: ``alone`` for a batch of one text, ``loaded`` otherwise
    (set only when it changes: about a microsecond)."""

    def __init__(self, loaded: int, alone: int) -> None:
        from threadpoolctl import ThreadpoolController

        self._libs = ThreadpoolController().select(user_api="blas").lib_controllers
        self._loaded, self._alone = loaded, alone
        self._now = loaded

    def for_batch(self, n: int) -> int:
        want = self._alone if n == 1 else self._loaded
        if want != self._now:
            for lib in self._libs:
                lib.set_num_threads(want)
            self._now = want
        return want


def _whole(value: str, key: str, what: str) -> int:
    try:
        n = int(value or 0)
    except ValueError:
        raise ValueError(f"{what}: {key} must be a whole number, not {value!r}") from None
    if n < 0:
        raise ValueError(f"{what}: {key} must be 0 or more, not {n}")
    return n


def parameter(model_config: Mapping[str, Any], key: str) -> str:
    """The string value of a model config parameter (``parameters { key ... }``), "" if unset."""
    found = model_config.get("parameters", {}).get(key, {})
    return str(found.get("string_value", "")).strip()


def limit_blas_threads(value: str, *, what: str) -> int:
    """Cap the BLAS thread pools of this process at ``value`` threads ("" or "0": leave them
    as they are); the cap, or 0.

    OpenBLAS starts a thread per CPU, and its threads spin while they wait for work. In a
    Triton stub that shares a few cores with the server, the other models and the services,
    one thread costs the least CPU a text: the spinning threads of a second one burn a core
    whenever another process holds it (``bench/bench_voter.py`` shows the CPU per text)."""
    threads = _whole(value, "blas_threads", what)
    if threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")
    return threads


def output_dtype(pb_utils: Any, model_config: dict[str, Any]) -> Any:
    """The numpy dtype of the ``SCORE`` output named in the model's config."""
    out_cfg = pb_utils.get_output_config_by_name(model_config, OUTPUT_NAME)
    if out_cfg is None:
        raise pb_utils.TritonModelException(f"config has no {OUTPUT_NAME} output")
    return pb_utils.triton_string_to_numpy(out_cfg["data_type"])


def heads_model(
    pb_utils: Any,
    *,
    what: str,
    load: Callable[[Path], Any],
    features: Features | None = None,
    features_for: Callable[[Instance], Features] | None = None,
) -> type:
    """The ``TritonPythonModel`` class of a per-category head judge: a :class:`HeadsModel`
    made at ``initialize`` (``features`` or ``features_for``: see there)."""

    class TritonPythonModel:
        def initialize(self, args: dict[str, str]) -> None:
            self.model = HeadsModel(
                pb_utils, args, what=what, load=load, features=features, features_for=features_for
            )

        def execute(self, requests: list[Any]) -> list[Any]:
            return self.model.execute(requests)

        def finalize(self) -> None:
            pass

    return TritonPythonModel


def category_columns(
    pb_utils: Any, model_config: dict[str, Any], categories: Sequence[str], *, what: str
) -> dict[str, int]:
    """Output name -> column of the scores, for a model with one ``SCORE_<CATEGORY>`` output
    per category. Every output in the config must be FP32 and name one of ``categories`` (the
    model's heads), or the model refuses to load."""
    columns: dict[str, int] = {}
    for out in model_config["output"]:
        name = out["name"]
        category = name.removeprefix(CATEGORY_PREFIX).lower()
        if not name.startswith(CATEGORY_PREFIX) or category not in categories:
            raise pb_utils.TritonModelException(
                f"{what}: output {name} has no head (heads: {list(categories)})"
            )
        if pb_utils.triton_string_to_numpy(out["data_type"]) is not np.float32:
            raise pb_utils.TritonModelException(f"{what}: output {name} must be TYPE_FP32")
        columns[name] = list(categories).index(category)
    return columns


def execute_scoring(
    pb_utils: Any,
    requests: Sequence[Any],
    score: Scorer,
    dtype: Any,
    *,
    what: str,
    max_chars: int | None = None,
    outputs: Mapping[str, int] | None = None,
) -> list[Any]:
    """One response per request. A request with a text longer than ``max_chars`` is refused
    alone; ``what`` names the model in the batch-failure message.

    ``outputs`` (output name -> column) is for a model with several outputs: ``score`` then
    returns one row per text and one column per output, and each response carries the
    outputs its request asked for (all of them when it named none). Without it, ``score``
    returns one score per text, sent as ``SCORE``."""
    responses: list[Any] = [None] * len(requests)
    texts: list[str] = []
    spans: list[tuple[int, int, int]] = []  # (request index, start, end) into texts
    for i, request in enumerate(requests):
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
        if tensor is None:
            responses[i] = _error(pb_utils, f"input {INPUT_NAME} is missing", invalid=True)
            continue
        try:
            decoded = check_texts(decode_texts(tensor.as_numpy()), max_chars=max_chars)
        except InvalidArgument as exc:
            responses[i] = _error(pb_utils, exc.message, invalid=True)
            continue
        spans.append((i, len(texts), len(texts) + len(decoded)))
        texts.extend(decoded)

    try:
        scores = score(texts)
    except Exception:
        for i, _, _ in spans:
            responses[i] = _error(pb_utils, f"{what} model failed", invalid=False)
        return responses

    for i, start, end in spans:
        if outputs is None:
            columns = {OUTPUT_NAME: scores[start:end]}
        else:
            wanted = requests[i].requested_output_names() or outputs
            columns = {n: scores[start:end, c] for n, c in outputs.items() if n in wanted}
        responses[i] = pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(n, np.ascontiguousarray(v.reshape(-1, 1).astype(dtype, copy=False)))
                for n, v in columns.items()
            ]
        )
    return responses


def _error(pb_utils: Any, message: str, *, invalid: bool) -> Any:
    code = pb_utils.TritonError.INVALID_ARG if invalid else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
