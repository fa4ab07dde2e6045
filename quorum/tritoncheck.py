"""Check a Triton model repository before Triton sees it.

Each ``<repo>/<model>/config.pbtxt`` is parsed as protobuf text format into Triton's own
``ModelConfig`` message (``tritonclient.grpc.model_config_pb2``, the schema the server reads),
and the repository is checked for the mistakes that otherwise surface as one line deep in the
server's log, or as a model that loads and then fails every request:

- layout: a ``config.pbtxt`` per model folder, ``name`` equal to the folder's name, at least
  one numeric version folder holding the backend's file (``model.py`` for the Python
  backend), every version a ``version_policy`` names present;
- backend: ``backend`` or ``platform`` set and available in the server Quorum ships (the CPU
  ``tritonserver`` inside ``nvidia-pytriton`` has only the Python backend; NVIDIA's GPU
  container has more);
- tensors: names unique, data types set, dims of -1 or >= 1;
- batching: ``max_batch_size`` >= 0, dynamic batching only with ``max_batch_size`` > 0,
  preferred batch sizes within it;
- instances: ``instance_group`` kinds (``KIND_AUTO`` is the portable one: a CPU instance on
  the CPU build, a GPU instance on the GPU container), counts >= 1;
- decoupled models: no response cache, and callers of an ensemble that holds one must stream;
- ensembles: every step's model (and version) in the repository, ``input_map`` and
  ``output_map`` keys that are real inputs and outputs of that model, every required input
  of a step fed, every ensemble input consumed and output produced, every tensor a step reads
  produced by an ensemble input or another step (one producer each), no cycles, the same
  data type at both ends of each edge, and the ensemble's ``max_batch_size`` within each
  step's.

Every finding names the model, the field and the fix. Pure: reads files, starts nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from google.protobuf import text_format

__all__ = [
    "SHIPPED_BACKENDS",
    "Finding",
    "Severity",
    "check_repository",
    "errors",
    "findings_json",
    "format_findings",
    "load_configs",
    "models_with_dependencies",
]

#: backends the ``tritonserver`` in the ``nvidia-pytriton`` wheel (CPU build) can load
SHIPPED_BACKENDS = frozenset({"python"})

#: the file each backend loads from a version folder when ``default_model_filename`` is unset
_DEFAULT_FILE = {
    "python": "model.py",
    "onnxruntime": "model.onnx",
    "pytorch": "model.pt",
    "tensorflow": "model.savedmodel",
    "tensorrt": "model.plan",
    "openvino": "model.xml",
}
#: legacy ``platform`` values and the backend each one means
_PLATFORM_BACKEND = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
    "tensorrt_plan": "tensorrt",
}
_GPU_CONTAINER = (
    "NVIDIA's GPU container (nvcr.io/nvidia/tritonserver) has onnxruntime, pytorch, "
    "tensorflow, tensorrt and openvino"
)
_CONFIG = "config.pbtxt"

#: records one finding of the model being checked: severity, field, message, fix
_Add = Callable[["Severity", str, str, str], None]


class Severity(StrEnum):
    ERROR = "error"  # Triton refuses the model, or it cannot answer correctly
    WARNING = "warning"  # it loads, but not portably or not as probably meant


@dataclass(frozen=True)
class Finding:
    severity: Severity
    model: str  # the model's folder name; "" for the repository itself
    field: str  # the config field (or file) at fault
    message: str
    fix: str


def _pb() -> Any:
    """Triton's ``model_config_pb2`` (imported on first use: it pulls in ``tritonclient``)."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _model_dirs(repo: Path) -> list[Path]:
    """Model folders, as :class:`quorum.tritonserver.TritonServer` lists them."""
    return sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def load_configs(repo: Path) -> tuple[dict[str, Any], list[Finding]]:
    """Every model folder's parsed ``ModelConfig`` by folder name, and the findings of the
    folders whose config is missing or does not parse (those are left out of the map)."""
    pb = _pb()
    configs: dict[str, Any] = {}
    findings: list[Finding] = []
    for folder in _model_dirs(repo):
        path = folder / _CONFIG
        if not path.is_file():
            findings.append(
                Finding(
                    Severity.ERROR,
                    folder.name,
                    _CONFIG,
                    f"{folder.name}/ has no {_CONFIG}",
                    "write a full config (the server runs with --disable-auto-complete-config)"
                    " or move the folder out of the repository",
                )
            )
            continue
        cfg = pb.ModelConfig()
        try:
            text_format.Parse(path.read_text(encoding="utf-8"), cfg)
        except (text_format.ParseError, UnicodeDecodeError) as exc:
            where = ""
            detail = str(exc)
            if isinstance(exc, text_format.ParseError) and exc.GetLine() is not None:
                where = f" (line {exc.GetLine()}, column {exc.GetColumn()})"
                detail = detail.split(" : ", 1)[-1]
            findings.append(
                Finding(
                    Severity.ERROR,
                    folder.name,
                    _CONFIG,
                    f"{_CONFIG} is not a ModelConfig in protobuf text format{where}: {detail}",
                    "fix the syntax or field name at that line and column (field names are "
                    "Triton's model_config.proto)",
                )
            )
            continue
        configs[folder.name] = cfg
    return configs, findings


def models_with_dependencies(configs: Mapping[str, Any], models: Iterable[str]) -> list[str]:
    """``models`` and, for each ensemble among them, the models its steps call (recursively),
    in first-seen order: what loading ``models`` makes Triton load."""
    seen: list[str] = []
    todo = list(models)
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.append(name)
        cfg = configs.get(name)
        if cfg is not None and cfg.platform == "ensemble":
            todo += [s.model_name for s in cfg.ensemble_scheduling.step]
    return seen


def check_repository(
    repo: Path,
    *,
    models: Iterable[str] | None = None,
    backends: frozenset[str] = SHIPPED_BACKENDS,
) -> list[Finding]:
    """Every finding for the repository at ``repo``; with ``models``, for those models and the
    models their ensembles call only (what ``--load-model`` would load)."""
    repo = Path(repo)
    if not repo.is_dir():
        return [
            Finding(
                Severity.ERROR,
                "",
                "repository",
                f"{repo} is not a directory",
                "point at the folder that holds one folder per model",
            )
        ]
    configs, findings = load_configs(repo)
    broken = {f.model for f in findings}
    if models is None:
        selected = [p.name for p in _model_dirs(repo)]
        if not selected:
            findings.append(
                Finding(
                    Severity.ERROR,
                    "",
                    "repository",
                    f"{repo} holds no model folders",
                    "add <model>/config.pbtxt and <model>/1/",
                )
            )
    else:
        selected = models_with_dependencies(configs, models)
        findings = [f for f in findings if f.model in selected]
        for name in selected:
            if name not in configs and name not in broken:
                findings.append(
                    Finding(
                        Severity.ERROR,
                        name,
                        "model",
                        f"no folder {name}/ in {repo}",
                        "fix the model name, or add its folder to the repository",
                    )
                )
    for name in selected:
        cfg = configs.get(name)
        if cfg is not None:
            findings += _check_model(repo / name, name, cfg, configs, backends)
    return findings


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.ERROR]


# -- one model -------------------------------------------------------------------------------


def _check_model(
    folder: Path, name: str, cfg: Any, configs: Mapping[str, Any], backends: frozenset[str]
) -> list[Finding]:
    out: list[Finding] = []

    def add(severity: Severity, field: str, message: str, fix: str) -> None:
        out.append(Finding(severity, name, field, message, fix))

    if cfg.name and cfg.name != name:
        add(
            Severity.ERROR,
            "name",
            f"name is {cfg.name!r} but the folder is {name!r}: Triton refuses the model",
            f'set name: "{name}" or rename the folder to {cfg.name}/',
        )
    ensemble = cfg.platform == "ensemble"
    backend = _backend(cfg, add, backends)
    _check_versions(folder, cfg, backend, ensemble, add)
    _check_tensors(cfg, add)
    _check_batching(cfg, add)
    if not ensemble:
        _check_instances(cfg, add)
    _check_decoupled(cfg, ensemble, configs, add)
    if ensemble:
        _check_ensemble(folder.parent, cfg, configs, add)
    return out


def _backend(cfg: Any, add: _Add, backends: frozenset[str]) -> str:
    """The backend the model needs ("" for an ensemble or when none is set)."""
    if cfg.platform == "ensemble":
        if cfg.backend:
            add(
                Severity.ERROR,
                "backend",
                f"an ensemble has no backend, but backend is {cfg.backend!r}",
                'remove the backend line (platform: "ensemble" says it all)',
            )
        return ""
    backend = cfg.backend or _PLATFORM_BACKEND.get(cfg.platform, "")
    if not backend:
        add(
            Severity.ERROR,
            "backend",
            "neither backend nor platform is set"
            + (f" (platform {cfg.platform!r} is not one Triton knows)" if cfg.platform else ""),
            'set backend: "python" (the only backend of the CPU server Quorum ships)',
        )
        return ""
    if backend not in backends:
        add(
            Severity.ERROR,
            "backend" if cfg.backend else "platform",
            f"backend {backend!r} is not in the server Quorum ships: the CPU tritonserver "
            f"inside nvidia-pytriton has only {', '.join(sorted(backends))}; {_GPU_CONTAINER}",
            "run the model inside a Python-backend model (e.g. ONNX Runtime or PyTorch from "
            "model.py), or serve this repository from the GPU container",
        )
    return backend


def _check_versions(folder: Path, cfg: Any, backend: str, ensemble: bool, add: _Add) -> None:
    try:
        versions = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    except OSError:
        versions = []
    if not versions:
        add(
            Severity.ERROR,
            "version folders",
            f"{folder.name}/ has no numeric version folder: Triton loads no version",
            f"add {folder.name}/1/"
            + ("" if ensemble else f" holding {_model_file(cfg, backend) or 'the model file'}"),
        )
        return
    file = _model_file(cfg, backend)
    if not ensemble and file:
        for v in versions:
            if not (folder / str(v) / file).exists():
                add(
                    Severity.ERROR,
                    "version folders",
                    f"version {v} has no {file}: the {backend} backend cannot load it",
                    f"add {folder.name}/{v}/{file}, or remove the empty version folder",
                )
    policy = cfg.version_policy
    if policy.WhichOneof("policy_choice") == "specific":
        missing = sorted(set(policy.specific.versions) - set(versions))
        if missing:
            add(
                Severity.ERROR,
                "version_policy.specific.versions",
                f"versions {missing} are named but have no folder (present: {versions})",
                "add those version folders or remove them from the policy",
            )


def _model_file(cfg: Any, backend: str) -> str:
    return str(cfg.default_model_filename) or _DEFAULT_FILE.get(backend, "")


def _dtype_name(value: int) -> str:
    return str(_pb().DataType.Name(value)) if value in _pb().DataType.values() else str(value)


def _check_tensors(cfg: Any, add: _Add) -> None:
    pb = _pb()
    for kind, tensors in (("input", cfg.input), ("output", cfg.output)):
        seen: set[str] = set()
        for i, t in enumerate(tensors):
            where = f"{kind}[{i}]"
            if not t.name:
                add(Severity.ERROR, f"{where}.name", f"{kind} {i} has no name", "name it")
                continue
            where = f"{kind} {t.name}"
            if t.name in seen:
                add(
                    Severity.ERROR,
                    f"{where}.name",
                    f"two {kind}s are named {t.name!r}",
                    f"give each {kind} its own name",
                )
            seen.add(t.name)
            if t.data_type == pb.TYPE_INVALID:
                add(
                    Severity.ERROR,
                    f"{where}.data_type",
                    f"{kind} {t.name!r} has no data_type",
                    "set data_type, e.g. TYPE_STRING for text or TYPE_FP32 for scores",
                )
            bad = [d for d in t.dims if d == 0 or d < -1]
            if bad:
                add(
                    Severity.ERROR,
                    f"{where}.dims",
                    f"{kind} {t.name!r} has dims {list(t.dims)}: each is -1 (any size) or >= 1",
                    "use -1 for a variable size",
                )
            if not t.dims and not t.HasField("reshape"):
                add(
                    Severity.ERROR,
                    f"{where}.dims",
                    f"{kind} {t.name!r} has no dims",
                    "set dims (without the batch dimension when max_batch_size > 0), e.g. "
                    "dims: [ 1 ]",
                )


def _check_batching(cfg: Any, add: _Add) -> None:
    mbs = cfg.max_batch_size
    if mbs < 0:
        add(
            Severity.ERROR,
            "max_batch_size",
            f"max_batch_size is {mbs}",
            "use 0 (the model does not batch: dims are the full shape) or a positive limit",
        )
        return
    if not cfg.HasField("dynamic_batching"):
        return
    if mbs == 0:
        add(
            Severity.ERROR,
            "dynamic_batching",
            "dynamic_batching is set but max_batch_size is 0 (the model does not batch)",
            "set max_batch_size > 0 (dims then leave out the batch dimension) or remove "
            "dynamic_batching",
        )
        return
    for size in cfg.dynamic_batching.preferred_batch_size:
        if size < 1 or size > mbs:
            add(
                Severity.ERROR,
                "dynamic_batching.preferred_batch_size",
                f"preferred batch size {size} is outside 1..max_batch_size ({mbs})",
                f"use sizes from 1 to {mbs}, or raise max_batch_size",
            )


def _check_instances(cfg: Any, add: _Add) -> None:
    kind = _pb().ModelInstanceGroup.Kind
    for i, group in enumerate(cfg.instance_group):
        where = f"instance_group[{i}]"
        if group.count < 0:
            add(
                Severity.ERROR,
                f"{where}.count",
                f"count is {group.count}",
                "use count >= 1 (unset means 1)",
            )
        if group.kind == kind.Value("KIND_GPU"):
            add(
                Severity.WARNING,
                f"{where}.kind",
                "KIND_GPU: the CPU server Quorum ships has no GPU, so the model does not load "
                "there",
                "use KIND_AUTO (a GPU instance where there is a GPU, a CPU instance elsewhere)",
            )
        elif group.kind == kind.Value("KIND_CPU"):
            add(
                Severity.WARNING,
                f"{where}.kind",
                "KIND_CPU keeps the model on the CPU even on the GPU container",
                "use KIND_AUTO for portability, unless the CPU is meant everywhere",
            )


def _check_decoupled(cfg: Any, ensemble: bool, configs: Mapping[str, Any], add: _Add) -> None:
    decoupled = cfg.model_transaction_policy.decoupled
    if decoupled and cfg.response_cache.enable:
        add(
            Severity.ERROR,
            "response_cache.enable",
            "the response cache does not serve decoupled models; Triton refuses the config",
            "remove response_cache, or make the model non-decoupled",
        )
    if ensemble:
        if decoupled:
            add(
                Severity.ERROR,
                "model_transaction_policy.decoupled",
                "an ensemble takes its decoupled mode from its steps; it cannot set it",
                "remove model_transaction_policy from the ensemble",
            )
        streaming = sorted(
            {
                s.model_name
                for s in cfg.ensemble_scheduling.step
                if (c := configs.get(s.model_name)) is not None
                and c.model_transaction_policy.decoupled
            }
        )
        if streaming:
            add(
                Severity.WARNING,
                "ensemble_scheduling.step",
                f"steps {streaming} are decoupled: callers must use gRPC streaming "
                "(ModelStreamInfer); a unary call fails",
                "call it with a stream, or use a non-decoupled model in the step",
            )
        if streaming and cfg.response_cache.enable:
            add(
                Severity.ERROR,
                "response_cache.enable",
                "an ensemble with a decoupled step cannot use the response cache",
                "remove response_cache from the ensemble",
            )


# -- ensembles -------------------------------------------------------------------------------


def _check_ensemble(repo: Path, cfg: Any, configs: Mapping[str, Any], add: _Add) -> None:
    steps = list(cfg.ensemble_scheduling.step)
    if not steps:
        add(
            Severity.ERROR,
            "ensemble_scheduling.step",
            "an ensemble with no steps",
            "add ensemble_scheduling { step [ { model_name ... input_map ... output_map } ] }",
        )
        return
    ens_in = {t.name: t.data_type for t in cfg.input}
    ens_out = {t.name: t.data_type for t in cfg.output}
    producer: dict[str, int] = {}  # ensemble tensor -> the step that writes it
    for i, step in enumerate(steps):
        for tensor in step.output_map.values():
            if tensor in ens_in:
                add(
                    Severity.ERROR,
                    f"ensemble_scheduling.step[{i}].output_map",
                    f"step {i} ({step.model_name}) writes {tensor!r}, an ensemble input",
                    "write to a new tensor name",
                )
            elif tensor in producer:
                add(
                    Severity.ERROR,
                    f"ensemble_scheduling.step[{i}].output_map",
                    f"tensor {tensor!r} is written by steps {producer[tensor]} and {i}",
                    "give each step's output its own tensor name",
                )
            else:
                producer[tensor] = i
    consumed: set[str] = set()
    edges: dict[int, set[int]] = {i: set() for i in range(len(steps))}
    for i, step in enumerate(steps):
        where = f"ensemble_scheduling.step[{i}]"
        target = configs.get(step.model_name)
        if not step.model_name:
            add(Severity.ERROR, f"{where}.model_name", f"step {i} names no model", "set it")
        elif target is None:
            add(
                Severity.ERROR,
                f"{where}.model_name",
                f"step {i} calls {step.model_name!r}, which is not a model in this repository "
                "(or its config did not parse)",
                f"add {step.model_name}/ to the repository or fix the name",
            )
        elif target.platform == "ensemble" and step.model_name == cfg.name:
            add(Severity.ERROR, f"{where}.model_name", "an ensemble calls itself", "remove it")
        if step.model_version > 0 and step.model_name:
            vdir = repo / step.model_name
            if target is not None and not (vdir / str(step.model_version)).is_dir():
                add(
                    Severity.ERROR,
                    f"{where}.model_version",
                    f"step {i} asks for version {step.model_version} of {step.model_name!r}, "
                    "which has no such folder",
                    "use -1 (the latest) or an existing version",
                )
        inputs = {t.name: t for t in target.input} if target is not None else None
        outputs = {t.name: t for t in target.output} if target is not None else None
        for model_in, tensor in step.input_map.items():
            consumed.add(tensor)
            want = None
            if inputs is not None:
                if model_in not in inputs:
                    add(
                        Severity.ERROR,
                        f"{where}.input_map",
                        f"{model_in!r} is not an input of {step.model_name!r} "
                        f"(its inputs: {sorted(inputs)})",
                        "use the model's input name as the key, the ensemble tensor as the value",
                    )
                else:
                    want = inputs[model_in].data_type
            if tensor in ens_in:
                have = ens_in[tensor]
                source = f"ensemble input {tensor!r}"
            elif tensor in producer:
                j = producer[tensor]
                edges[j].add(i)
                source = f"step {j}'s {tensor!r}"
                have = _output_type(steps[j], tensor, configs)
            else:
                add(
                    Severity.ERROR,
                    f"{where}.input_map",
                    f"step {i} reads {tensor!r}, which no ensemble input or step output provides",
                    "map it from an ensemble input or another step's output_map",
                )
                continue
            if want is not None and have is not None and want != have:
                add(
                    Severity.ERROR,
                    f"{where}.input_map",
                    f"{source} is {_dtype_name(have)} but {step.model_name!r} input "
                    f"{model_in!r} is {_dtype_name(want)}",
                    "make the data types match at both ends",
                )
        if inputs is not None:
            fed = set(step.input_map)
            for name, t in inputs.items():
                if name not in fed and not t.optional:
                    add(
                        Severity.ERROR,
                        f"{where}.input_map",
                        f"step {i} does not feed {step.model_name!r}'s required input {name!r}",
                        f"add {name}: <tensor> to input_map",
                    )
        if outputs is not None:
            for model_out in step.output_map:
                if model_out not in outputs:
                    add(
                        Severity.ERROR,
                        f"{where}.output_map",
                        f"{model_out!r} is not an output of {step.model_name!r} "
                        f"(its outputs: {sorted(outputs)})",
                        "use the model's output name as the key, the ensemble tensor as the value",
                    )
        if target is not None and target.max_batch_size < cfg.max_batch_size:
            add(
                Severity.ERROR,
                "max_batch_size",
                f"the ensemble's max_batch_size {cfg.max_batch_size} exceeds step {i}'s model "
                f"{step.model_name!r} ({target.max_batch_size})",
                f"set max_batch_size <= {target.max_batch_size}",
            )
    for name in ens_in:
        if name not in consumed:
            add(
                Severity.ERROR,
                f"input {name}",
                f"ensemble input {name!r} is read by no step",
                "map it in a step's input_map, or remove the input",
            )
    for name, dtype in ens_out.items():
        if name not in producer:
            add(
                Severity.ERROR,
                f"output {name}",
                f"ensemble output {name!r} is written by no step",
                "map a step's output to it in that step's output_map",
            )
            continue
        have = _output_type(steps[producer[name]], name, configs)
        if have is not None and have != dtype:
            add(
                Severity.ERROR,
                f"output {name}",
                f"ensemble output {name!r} is {_dtype_name(dtype)} but step "
                f"{producer[name]} writes {_dtype_name(have)}",
                "make the data types match",
            )
    for tensor, j in producer.items():
        if tensor not in consumed and tensor not in ens_out:
            add(
                Severity.WARNING,
                f"ensemble_scheduling.step[{j}].output_map",
                f"step {j} writes {tensor!r}, which nothing reads",
                "remove it from output_map, or read it in a later step or ensemble output",
            )
    cycle = _cycle(edges)
    if cycle:
        add(
            Severity.ERROR,
            "ensemble_scheduling.step",
            "steps form a cycle: " + " -> ".join(str(s) for s in cycle),
            "each step must read only ensemble inputs and outputs of steps before it",
        )


def _output_type(step: Any, tensor: str, configs: Mapping[str, Any]) -> int | None:
    target = configs.get(step.model_name)
    if target is None:
        return None
    for model_out, mapped in step.output_map.items():
        if mapped == tensor:
            for t in target.output:
                if t.name == model_out:
                    return int(t.data_type)
    return None


def _cycle(edges: Mapping[int, set[int]]) -> list[int]:
    """A cycle in the step graph (its steps, first repeated at the end), or []."""
    state: dict[int, int] = {}  # 1 visiting, 2 done
    path: list[int] = []

    def visit(node: int) -> list[int]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


# -- output ----------------------------------------------------------------------------------


def format_findings(findings: Iterable[Finding], repo: Path) -> str:
    """A table, one finding a row (its fix on the next line), and a one-line summary."""
    rows = sorted(findings, key=lambda f: (f.severity is not Severity.ERROR, f.model, f.field))
    lines = []
    if rows:
        w_sev = max(len("severity"), *(len(f.severity) for f in rows))
        w_model = max(len("model"), *(len(f.model) for f in rows))
        w_field = max(len("field"), *(len(f.field) for f in rows))
        lines.append(f"{'severity':<{w_sev}}  {'model':<{w_model}}  {'field':<{w_field}}  message")
        pad = " " * (w_sev + w_model + w_field + 6)
        for f in rows:
            lines.append(
                f"{f.severity:<{w_sev}}  {f.model:<{w_model}}  {f.field:<{w_field}}  {f.message}"
            )
            lines.append(f"{pad}fix: {f.fix}")
    n_err = len(errors(rows))
    n_warn = len(rows) - n_err
    verdict = "fails" if n_err else "passes"
    lines.append(f"{repo}: {verdict} ({n_err} errors, {n_warn} warnings)")
    return "\n".join(lines)


def findings_json(findings: Iterable[Finding]) -> str:
    return json.dumps([asdict(f) for f in findings], indent=2)
