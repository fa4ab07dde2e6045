"""all-MiniLM-L6-v2 on ONNX Runtime, from an ONNX graph built in memory: the ``text_heads``
encoder.

**The graph.** :func:`build_model` writes the forward pass of the numpy reference
(:class:`quorum.localmodels.embedding.Encoder`) as standard ONNX operators (opset 17:
``Gather``, ``MatMul``, ``LayerNormalization``, ``Softmax``, ``Erf`` for BERT's exact GELU,
...) over the weights of the package's ``model.safetensors``, with the same layout: the
activations are packed, one row per real token, so the projections, GELU and layer norms do
no work on padding; attention alone runs on padded ``[n, heads, L, 32]`` copies, the padding
masked out; the mean over each text's real tokens and the L2 normalisation end the graph.
Its inputs come from :func:`feeds`; its output is ``embedding`` (float32, ``[n, 384]``).
Nothing is exported and nothing is written to disk: no torch, no committed ``.onnx`` file.
The weights stay numpy arrays beside the graph (external data handed to ONNX Runtime from
memory), so the protobuf is ~60 KB and the encoder loads in well under a second. ONNX
Runtime's own optimisations (``ORT_ENABLE_ALL``) fuse the projections with their biases, the
GELU pattern and the attention scale at session creation.

**Why.** The same embeddings as numpy to float32 rounding (~3e-7; the heads trained on numpy
embeddings give the same probabilities), for less CPU: on one thread of the 2-core
development machine ~1.4x less a text for a batch of 32 short texts and ~3x less for one text
(``bench/bench_embeddings.py``). ONNX Runtime's matrix products run near the core's peak
there, and they are ~80% of its time, so that is about all a float32 CPU encoder can gain.

**Threads and devices.** A session's intra-op threads are fixed when it is made, so an
:class:`OnnxEncoder` holds one session for batches of several texts (``threads``) and, when
``threads_one_text`` differs, a second one for a batch of one text. Each session holds its
copy of the weights (~90 MB; the Triton stub is ~290 MB resident with two, numpy's ~160 MB).
Waiting threads sleep instead of spinning (``session.intra_op.allow_spinning`` off): on a few
shared cores a spinning thread burns the CPU that the other models need. Activations are
plain allocations, not an arena, which would keep the peak of the largest batch (~900 MB
after 64 texts of 256 tokens). :func:`device_for` chooses CUDA for a Triton GPU instance when
ONNX Runtime offers ``CUDAExecutionProvider`` (the ``onnxruntime-gpu`` wheel installed in
place of ``onnxruntime``, in a GPU container), else the CPU; on CUDA one session serves every
batch.

Pure: nothing happens at import time; ``onnx`` and ``onnxruntime`` are imported by the calls
that need them. Errors: bad input is :class:`~quorum.errors.InvalidArgument` (as for the numpy
encoder).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from quorum.localmodels.embedding import F32, encode_in_chunks, load_tokenizer, model_dir
from quorum.localmodels.texts import check_texts

if TYPE_CHECKING:
    from quorum.localmodels.serving import Instance

__all__ = [
    "INPUTS",
    "OPSET",
    "OUTPUT",
    "OnnxEncoder",
    "build_model",
    "device_for",
    "feeds",
    "for_instance",
    "onnx_encoder",
    "providers_for",
]

#: ONNX opset of the graph (17: the first with LayerNormalization)
OPSET = 17
#: the graph's inputs, all int64 (see :func:`feeds`)
INPUTS = ("input_ids", "positions", "slots", "rows_of", "attention_mask")
OUTPUT = "embedding"
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
#: an execution provider as ``InferenceSession(providers=...)`` takes it
Provider = str | tuple[str, dict[str, str]]


#: the location named by the weights the graph holds as external data (never read: they come
#: from memory, :func:`build_model`)
IN_MEMORY = "in-memory"
#: weights of at least this many bytes stay out of the graph (small constants, such as shapes
#: and axes, which shape inference reads, stay in it)
_EXTERNAL_BYTES = 1024


class _Graph:
    """ONNX nodes and initializers, each node's output named after it. Unless ``inline``, a
    float32 initializer of :data:`_EXTERNAL_BYTES` or more is external data: only its name,
    type and shape are in the graph, its array in :attr:`external`."""

    def __init__(self, *, inline: bool) -> None:
        self.inline = inline
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.external: dict[str, F32] = {}

    def const(self, name: str, value: npt.ArrayLike, dtype: Any = np.float32) -> str:
        from onnx import TensorProto, numpy_helper

        array = np.ascontiguousarray(value, dtype=dtype)
        if self.inline or array.dtype != np.float32 or array.nbytes < _EXTERNAL_BYTES:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, v in (("location", IN_MEMORY), ("offset", "0"), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=v)
        self.initializers.append(tensor)
        self.external[name] = array
        return name

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        from onnx import helper

        out = f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out


def build_model(
    weights: Mapping[str, npt.NDArray[Any]], config: Mapping[str, Any], *, inline: bool = False
) -> tuple[Any, dict[str, F32]]:
    """The ``onnx.ModelProto`` of the sentence encoder over ``weights`` (the BERT state dict,
    as ``safetensors.numpy.load_file`` reads ``model.safetensors``) and ``config`` (its
    ``config.json``), and its external weights by name.

    By default the weights are external data at the location :data:`IN_MEMORY`: the graph
    names them and the arrays come back beside it, for
    ``SessionOptions.add_external_initializers``, which gives them to ONNX Runtime before it
    optimises the graph. So they are never copied into the protobuf nor serialised (a copy
    and ~1 s saved at load). ONNX Runtime checks the graph as it loads it; ``onnx.checker``,
    which would look for the external file, checks the ``inline`` model: every weight inside,
    no external weights, the self-contained model (for example to save and inspect)."""
    from onnx import TensorProto, checker, helper

    def w(name: str) -> F32:
        return np.ascontiguousarray(weights[name], dtype=np.float32)

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    eps = float(config.get("layer_norm_eps", 1e-12))
    g = _Graph(inline=inline)
    ids, positions, slots, rows_of, mask = INPUTS

    def i64(name: str, value: list[int]) -> str:
        return g.const(name, value, np.int64)

    def linear(x: str, name: str, weight: F32, bias: F32) -> str:  # x @ weight.T + bias
        out = g.op("MatMul", x, g.const(name + ".weight", np.ascontiguousarray(weight.T)))
        return g.op("Add", out, g.const(name + ".bias", bias))

    def dense(x: str, prefix: str) -> str:
        return linear(x, prefix, w(prefix + ".weight"), w(prefix + ".bias"))

    def layer_norm(x: str, prefix: str) -> str:
        gamma, beta = (g.const(f"{prefix}.{p}", w(f"{prefix}.{p}")) for p in ("weight", "bias"))
        return g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=eps)

    # embeddings, packed [rows, hidden]: word + position + token type 0 (one sentence a text)
    word = g.const("word_embeddings", w("embeddings.word_embeddings.weight"))
    type0 = w("embeddings.token_type_embeddings.weight")[0]
    pos = g.const("position_embeddings", w("embeddings.position_embeddings.weight") + type0)
    x = g.op("Add", g.op("Gather", word, ids), g.op("Gather", pos, positions))
    x = layer_norm(x, "embeddings.LayerNorm")

    maskf = g.op("Cast", mask, to=TensorProto.FLOAT)  # [n, L]: 1 on real tokens
    one = g.const("one", 1.0)
    padding = g.op("Sub", one, g.op("Unsqueeze", maskf, i64("axes_1_2", [1, 2])))
    bias = g.op("Mul", padding, g.const("padding_bias", -1e9))  # [n, 1, 1, L]
    n_l = g.op("Shape", mask)
    qkv_shape = g.op("Concat", n_l, i64("qkv_dims", [3, heads, hidden // heads]), axis=0)
    packed_shape = i64("packed_shape", [-1, hidden])
    scale = g.const("scale", 1.0 / math.sqrt(hidden // heads))
    sqrt2, half = g.const("sqrt2", math.sqrt(2.0)), g.const("half", 0.5)
    first = i64("axis_0", [0])
    qkv_names = ("query", "key", "value")

    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        a = p + "attention."
        qkv_w = np.concatenate([w(f"{a}self.{n}.weight") for n in qkv_names])
        qkv_b = np.concatenate([w(f"{a}self.{n}.bias") for n in qkv_names])
        qkv = linear(x, a + "self.qkv", qkv_w, qkv_b)  # [rows, 3 hidden]: one matmul
        qkv = g.op("Reshape", g.op("Gather", qkv, slots), qkv_shape)  # [n, L, 3, heads, d]
        qkv = g.op("Transpose", qkv, perm=[2, 0, 3, 1, 4])  # [3, n, heads, L, d]
        q, k, v = (g.op("Squeeze", g.op("Gather", qkv, i64(f"{a}{n}", [j])), first)
                   for j, n in enumerate(qkv_names))  # fmt: skip
        scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), scale)
        probs = g.op("Softmax", g.op("Add", scores, bias), axis=-1)  # padding gets none
        ctx = g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3])  # [n, L, heads, d]
        ctx = g.op("Gather", g.op("Reshape", ctx, packed_shape), rows_of)  # packed again
        x = layer_norm(g.op("Add", dense(ctx, a + "output.dense"), x), a + "output.LayerNorm")
        up = dense(x, p + "intermediate.dense")
        erf = g.op("Add", g.op("Erf", g.op("Div", up, sqrt2)), one)
        gelu = g.op("Mul", g.op("Mul", up, erf), half)  # x/2 (1 + erf(x / sqrt 2))
        x = layer_norm(g.op("Add", dense(gelu, p + "output.dense"), x), p + "output.LayerNorm")

    # the mean of each text's real tokens, then unit length
    hidden_shape = g.op("Concat", n_l, i64("hidden_dim", [hidden]), axis=0)
    padded = g.op("Reshape", g.op("Gather", x, slots), hidden_shape)  # [n, L, hidden]
    real = g.op("Unsqueeze", maskf, i64("axis_2", [2]))  # [n, L, 1]
    tokens = i64("axis_1", [1])
    summed = g.op("ReduceSum", g.op("Mul", padded, real), tokens, keepdims=0)
    pooled = g.op("Div", summed, g.op("ReduceSum", maskf, tokens, keepdims=1))
    norm = g.op("ReduceL2", pooled, axes=[1], keepdims=1)
    g.nodes.append(
        helper.make_node("Div", [pooled, g.op("Max", norm, g.const("tiny", 1e-12))], [OUTPUT])
    )

    dims = {ids: ["rows"], positions: ["rows"], slots: ["slots"], rows_of: ["rows"]}
    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info(name, TensorProto.INT64, dims.get(name, ["n", "L"]))
            for name in INPUTS
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["n", hidden])],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # what opset 17 came with: any ONNX Runtime from 1.13 reads it
    if inline:
        checker.check_model(model)
    return model, g.external


def feeds(batch: Sequence[Sequence[int]]) -> dict[str, npt.NDArray[np.int64]]:
    """The graph's inputs for a batch of token ids (one non-empty list per text), ``n``
    texts of ``L`` tokens at most, ``rows`` tokens in all:

    - ``input_ids``, ``positions``: each token's id and position in its text, ``[rows]``;
    - ``slots``: for each ``[n, L]`` padded slot (row-major), the packed row it copies
      (row 0 for padding, which attention masks out), ``[n * L]``;
    - ``rows_of``: for each packed row, its padded slot, ``[rows]``;
    - ``attention_mask``: 1 on real tokens, 0 on padding, ``[n, L]``.
    """
    lengths = np.array([len(t) for t in batch], np.int64)
    n, length, rows = len(batch), int(lengths.max()), int(lengths.sum())
    mask = np.arange(length) < lengths[:, None]
    rows_of = np.flatnonzero(mask).astype(np.int64)
    slots = np.zeros(n * length, np.int64)
    slots[rows_of] = np.arange(rows)
    return {
        "input_ids": np.fromiter((i for t in batch for i in t), np.int64, rows),
        "positions": rows_of % length,
        "slots": slots,
        "rows_of": rows_of,
        "attention_mask": mask.astype(np.int64),
    }


def device_for(
    instance_kind: str | None, device_id: int = 0, available: Sequence[str] | None = None
) -> str:
    """Where the encoder runs for a Triton instance (``args["model_instance_kind"]`` and
    ``args["model_instance_device_id"]``): ``"cuda:<device_id>"`` for a GPU instance when
    ONNX Runtime offers ``CUDAExecutionProvider`` (``available``, by default
    ``onnxruntime.get_available_providers()``: the ``onnxruntime-gpu`` wheel in a GPU
    container), ``"cpu"`` otherwise (a CPU instance, or the CPU wheel, which a GPU instance of
    ``KIND_AUTO`` then runs on the host)."""
    if instance_kind != "GPU":
        return "cpu"
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    return f"cuda:{int(device_id)}" if CUDA in available else "cpu"


def providers_for(device: str) -> list[Provider]:
    """The execution providers of a session on ``device`` (as :func:`device_for` names it):
    CUDA on that GPU, with the CPU for any operator CUDA lacks; or the CPU alone."""
    if device == "cpu":
        return [CPU]
    kind, _, index = device.partition(":")
    if kind != "cuda" or not index.isdigit():
        raise ValueError(f"unknown device {device!r}: 'cpu' or 'cuda:<id>'")
    return [(CUDA, {"device_id": index}), CPU]


class OnnxEncoder:
    """all-MiniLM-L6-v2 on ONNX Runtime (see the module docstring); :meth:`encode` gives what
    :meth:`quorum.localmodels.embedding.Encoder.encode` gives. ``threads``: the sessions'
    intra-op threads (0: ONNX Runtime's choice, one per physical core); ``threads_one_text``:
    those for a batch of one text (0: ``threads``). Thread-safe: ONNX Runtime sessions take
    concurrent runs."""

    def __init__(
        self, folder: Path, *, threads: int = 1, threads_one_text: int = 0, device: str = "cpu"
    ) -> None:
        import onnxruntime as ort
        from safetensors.numpy import load_file

        if threads < 0 or threads_one_text < 0:
            raise ValueError("thread counts must be 0 or more")
        providers = providers_for(device)
        config = json.loads((folder / "config.json").read_text())
        self._tokenizer = load_tokenizer(folder)
        model, weights = build_model(load_file(str(folder / "model.safetensors")), config)
        blob = model.SerializeToString()  # ~60 KB: the weights stay in numpy
        names = list(weights)
        del model

        def session(threads: int) -> Any:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            # activations in plain allocations: an arena would keep its peak (see above), and
            # it is no faster here
            options.enable_cpu_mem_arena = False
            options.log_severity_level = 3  # errors only
            # copied into the session's graph; the arrays can go once the sessions exist
            values = [ort.OrtValue.ortvalue_from_numpy(weights[n]) for n in names]
            options.add_external_initializers(names, values)
            return ort.InferenceSession(blob, options, providers=providers)

        self.device, self.threads = device, threads
        self.threads_one_text = threads if device != "cpu" else threads_one_text or threads
        self._session = session(threads)
        alone = self.threads_one_text != threads
        self._session_one_text = session(self.threads_one_text) if alone else self._session

    def __repr__(self) -> str:
        alone = self.threads_one_text
        one = f", {alone} for one text" if alone != self.threads else ""
        return f"OnnxEncoder({self.device}, threads {self.threads or 'default'}{one})"

    def encode(self, texts: Sequence[str]) -> F32:
        """``[len(texts), 384]`` unit-length float32 embeddings, in input order."""
        items = check_texts(texts)
        session = self._session_one_text if len(items) == 1 else self._session

        def forward(batch: list[list[int]]) -> F32:
            out: F32 = session.run([OUTPUT], feeds(batch))[0]
            return out

        return encode_in_chunks(self._tokenizer, forward, items)

    __call__ = encode


def for_instance(instance: Instance) -> OnnxEncoder:
    """The packaged encoder for a Triton instance: its device (:func:`device_for`) and the
    config's thread counts (:class:`quorum.localmodels.serving.HeadsModel`)."""
    return OnnxEncoder(
        model_dir(),
        threads=instance.threads,
        threads_one_text=instance.threads_one_text,
        device=device_for(instance.kind, instance.device_id),
    )


@functools.cache
def onnx_encoder() -> OnnxEncoder:
    """The packaged encoder on the CPU, one thread, loaded on first call and reused."""
    return OnnxEncoder(model_dir())
