"""quorum.tritoncheck: one small repository per rule, good and broken, and the shipped one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quorum import tritoncheck
from quorum.tritoncheck import Finding, Severity, check_repository, errors
from quorum.tritonserver import default_model_repository

SCORER = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "SCORE" data_type: TYPE_FP32 dims: [ 1 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
instance_group [ {{ kind: KIND_AUTO count: 1 }} ]
"""

# step 0: TEXT -> ROUTED (string); step 1: TEXT + ROUTED -> ANSWER (string)
PICK = """
name: "pick"
backend: "python"
max_batch_size: 8
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }},
        {{ name: "SELECT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "MODEL" data_type: {model_type} dims: [ 1 ] }} ]
"""
ANSWER = """
name: "answer"
backend: "python"
max_batch_size: 8
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] },
        { name: "MODEL" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "ANSWER" data_type: TYPE_STRING dims: [ 1 ] },
         { name: "TOKENS" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""
ENSEMBLE = """
name: "flow"
platform: "ensemble"
max_batch_size: 8
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] },
        { name: "SELECT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "ANSWER" data_type: TYPE_STRING dims: [ 1 ] },
         { name: "TOKENS" data_type: TYPE_INT32 dims: [ 1 ] } ]
ensemble_scheduling {
  step [
    { model_name: "pick" model_version: -1
      input_map { key: "TEXT" value: "TEXT" }
      input_map { key: "SELECT" value: "SELECT" }
      output_map { key: "MODEL" value: "routed" } },
    { model_name: "answer" model_version: -1
      input_map { key: "TEXT" value: "TEXT" }
      input_map { key: "MODEL" value: "routed" }
      output_map { key: "ANSWER" value: "ANSWER" }
      output_map { key: "TOKENS" value: "TOKENS" } }
  ]
}
"""


def write(repo: Path, name: str, config: str | None, *, files: tuple[str, ...] = ("model.py",),
          versions: tuple[str, ...] = ("1",)) -> None:  # fmt: skip
    folder = repo / name
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    for v in versions:
        (folder / v).mkdir(exist_ok=True)
        for f in files:
            (folder / v / f).write_text("class TritonPythonModel:\n    pass\n")


def scorer(repo: Path, name: str = "scorer", **replace: str) -> None:
    config = SCORER.format(name=name)
    for old, new in replace.items():
        assert old in config, old
        config = config.replace(old, new)
    write(repo, name, config)


def flow_repo(repo: Path, ensemble: str = ENSEMBLE, model_type: str = "TYPE_STRING") -> Path:
    write(repo, "pick", PICK.format(model_type=model_type))
    write(repo, "answer", ANSWER)
    write(repo, "flow", ensemble, files=())
    return repo


def only(findings: list[Finding], severity: Severity = Severity.ERROR) -> Finding:
    """The one finding of ``severity`` (and the test fails when there is not exactly one)."""
    found = [f for f in findings if f.severity is severity]
    assert len(found) == 1, found
    return found[0]


def test_good_repositories_have_no_findings(tmp_path: Path) -> None:
    scorer(tmp_path)
    flow_repo(tmp_path)
    assert check_repository(tmp_path) == []


def test_shipped_repository_passes() -> None:
    findings = check_repository(default_model_repository())
    assert errors(findings) == [], tritoncheck.format_findings(findings, Path("triton"))


def test_missing_repository(tmp_path: Path) -> None:
    f = only(check_repository(tmp_path / "nope"))
    assert (f.model, f.field) == ("", "repository")


def test_empty_repository(tmp_path: Path) -> None:
    f = only(check_repository(tmp_path))
    assert "no model folders" in f.message


def test_missing_config(tmp_path: Path) -> None:
    write(tmp_path, "bare", None)
    f = only(check_repository(tmp_path))
    assert (f.model, f.field) == ("bare", "config.pbtxt")
    assert "--disable-auto-complete-config" in f.fix


def test_unparseable_config_names_line_and_column(tmp_path: Path) -> None:
    scorer(tmp_path, **{"max_batch_size: 8": "max_batch_sise: 8"})
    f = only(check_repository(tmp_path))
    assert f.field == "config.pbtxt"
    assert "max_batch_sise" in f.message
    assert "(line 4, column 1)" in f.message


def test_name_must_equal_folder(tmp_path: Path) -> None:
    scorer(tmp_path, **{'name: "scorer"': 'name: "other"'})
    f = only(check_repository(tmp_path))
    assert (f.model, f.field) == ("scorer", "name")
    assert 'name: "scorer"' in f.fix


def test_name_may_be_left_out(tmp_path: Path) -> None:
    scorer(tmp_path, **{'name: "scorer"': ""})
    assert check_repository(tmp_path) == []


def test_no_version_folder(tmp_path: Path) -> None:
    write(tmp_path, "scorer", SCORER.format(name="scorer"), versions=())
    (tmp_path / "scorer" / "latest").mkdir()  # not numeric: not a version
    f = only(check_repository(tmp_path))
    assert f.field == "version folders"
    assert "scorer/1/" in f.fix and "model.py" in f.fix


def test_version_folder_without_model_file(tmp_path: Path) -> None:
    write(tmp_path, "scorer", SCORER.format(name="scorer"), files=("other.py",))
    f = only(check_repository(tmp_path))
    assert f.field == "version folders"
    assert "version 1 has no model.py" in f.message


def test_default_model_filename_is_the_file_looked_for(tmp_path: Path) -> None:
    config = SCORER.format(name="scorer") + 'default_model_filename: "serve.py"\n'
    write(tmp_path, "scorer", config, files=("serve.py",))
    assert check_repository(tmp_path) == []


def test_version_policy_names_a_missing_version(tmp_path: Path) -> None:
    config = SCORER.format(name="scorer") + "version_policy { specific { versions: [1, 2] } }\n"
    write(tmp_path, "scorer", config)
    f = only(check_repository(tmp_path))
    assert f.field == "version_policy.specific.versions"
    assert "[2]" in f.message


def test_no_backend(tmp_path: Path) -> None:
    scorer(tmp_path, **{'backend: "python"': ""})
    f = only(check_repository(tmp_path))
    assert f.field == "backend"
    assert 'backend: "python"' in f.fix


@pytest.mark.parametrize(
    ("line", "field"),
    [('backend: "onnxruntime"', "backend"), ('platform: "pytorch_libtorch"', "platform")],
)
def test_backend_not_in_the_cpu_server(tmp_path: Path, line: str, field: str) -> None:
    write(tmp_path, "m", SCORER.format(name="m").replace('backend: "python"', line),
          files=("model.onnx", "model.pt"))  # fmt: skip
    f = only(check_repository(tmp_path))
    assert f.field == field
    assert "only python" in f.message and "GPU container" in f.message
    assert "Python-backend model" in f.fix
    # the same repository passes where the backend exists
    assert check_repository(tmp_path, backends=frozenset({"onnxruntime", "pytorch"})) == []


def test_negative_max_batch_size(tmp_path: Path) -> None:
    scorer(tmp_path, **{"max_batch_size: 8": "max_batch_size: -1"})
    f = only(check_repository(tmp_path))
    assert f.field == "max_batch_size"


def test_dynamic_batching_needs_batching(tmp_path: Path) -> None:
    scorer(tmp_path, **{"max_batch_size: 8": "max_batch_size: 0"})
    f = only(check_repository(tmp_path))
    assert f.field == "dynamic_batching"
    assert "max_batch_size > 0" in f.fix


def test_preferred_batch_size_over_max(tmp_path: Path) -> None:
    scorer(tmp_path, **{"dynamic_batching {": "dynamic_batching { preferred_batch_size: [4, 16]"})
    f = only(check_repository(tmp_path))
    assert f.field == "dynamic_batching.preferred_batch_size"
    assert "16" in f.message and "(8)" in f.message


def test_duplicate_input_names(tmp_path: Path) -> None:
    two = 'input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }, ' \
        '{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]'  # fmt: skip
    scorer(tmp_path, **{'input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]': two})
    f = only(check_repository(tmp_path))
    assert f.field == "input TEXT.name"
    assert "two inputs" in f.message


def test_missing_data_type(tmp_path: Path) -> None:
    scorer(tmp_path, **{"data_type: TYPE_FP32 ": ""})
    f = only(check_repository(tmp_path))
    assert f.field == "output SCORE.data_type"


def test_invalid_data_type_does_not_parse(tmp_path: Path) -> None:
    scorer(tmp_path, **{"TYPE_FP32": "TYPE_FLOAT"})
    f = only(check_repository(tmp_path))
    assert f.field == "config.pbtxt" and "TYPE_FLOAT" in f.message


@pytest.mark.parametrize("dims", ["[ 0 ]", "[ -2 ]", "[ ]"])
def test_bad_dims(tmp_path: Path, dims: str) -> None:
    scorer(tmp_path, **{"TYPE_FP32 dims: [ 1 ]": f"TYPE_FP32 dims: {dims}"})
    f = only(check_repository(tmp_path))
    assert f.field == "output SCORE.dims"


def test_instance_kind_gpu_and_cpu_warn_auto_recommended(tmp_path: Path) -> None:
    scorer(tmp_path, "gpu", **{"KIND_AUTO": "KIND_GPU"})
    scorer(tmp_path, "cpu", **{"KIND_AUTO": "KIND_CPU"})
    findings = check_repository(tmp_path)
    assert errors(findings) == []
    by_model = {f.model: f for f in findings}
    assert set(by_model) == {"gpu", "cpu"}
    assert all(f.field == "instance_group[0].kind" for f in findings)
    assert all("KIND_AUTO" in f.fix for f in findings)
    assert "no GPU" in by_model["gpu"].message


def test_negative_instance_count(tmp_path: Path) -> None:
    scorer(tmp_path, **{"count: 1": "count: -2"})
    f = only(check_repository(tmp_path))
    assert f.field == "instance_group[0].count"


def test_decoupled_model_with_response_cache(tmp_path: Path) -> None:
    decoupled = "model_transaction_policy { decoupled: true }\n"
    scorer(tmp_path, "stream", **{"dynamic_batching": decoupled + "dynamic_batching"})
    assert check_repository(tmp_path) == []  # decoupled with dynamic batching is fine
    cfg = tmp_path / "stream" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "response_cache { enable: true }\n")
    f = only(check_repository(tmp_path))
    assert (f.model, f.field) == ("stream", "response_cache.enable")


def test_ensemble_with_a_decoupled_step_must_be_streamed(tmp_path: Path) -> None:
    flow_repo(tmp_path)
    cfg = tmp_path / "answer" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "model_transaction_policy { decoupled: true }\n")
    f = only(check_repository(tmp_path), Severity.WARNING)
    assert f.model == "flow" and "streaming" in f.message
    assert errors(check_repository(tmp_path)) == []


# -- ensembles ---------------------------------------------------------------------------------


def test_ensemble_step_model_missing(tmp_path: Path) -> None:
    flow_repo(tmp_path, ENSEMBLE.replace('"answer"', '"anwser"'))
    findings = check_repository(tmp_path)
    step = [f for f in errors(findings) if f.field == "ensemble_scheduling.step[1].model_name"]
    assert len(step) == 1 and "'anwser'" in step[0].message


def test_ensemble_step_version_missing(tmp_path: Path) -> None:
    flow_repo(tmp_path, ENSEMBLE.replace('"answer" model_version: -1', '"answer" model_version: 2'))
    f = only(check_repository(tmp_path))
    assert f.field == "ensemble_scheduling.step[1].model_version"


def test_ensemble_input_map_key_not_an_input(tmp_path: Path) -> None:
    flow_repo(tmp_path, ENSEMBLE.replace('key: "SELECT"', 'key: "SELECTOR"'))
    found = errors(check_repository(tmp_path))
    fields = sorted(f.message for f in found if f.field == "ensemble_scheduling.step[0].input_map")
    assert len(fields) == 2  # the unknown key, and the real input it leaves unfed
    assert any("'SELECTOR' is not an input of 'pick'" in m for m in fields)
    assert any("required input 'SELECT'" in m for m in fields)


def test_ensemble_output_map_key_not_an_output(tmp_path: Path) -> None:
    flow_repo(tmp_path, ENSEMBLE.replace('key: "TOKENS"', 'key: "TOKEN_COUNT"'))
    f = only(check_repository(tmp_path))
    assert f.field == "ensemble_scheduling.step[1].output_map"
    assert "'TOKEN_COUNT' is not an output of 'answer'" in f.message


def test_ensemble_input_not_consumed(tmp_path: Path) -> None:
    extra = ENSEMBLE.replace(
        '{ name: "SELECT" data_type: TYPE_INT32 dims: [ 1 ] } ]',
        '{ name: "SELECT" data_type: TYPE_INT32 dims: [ 1 ] },'
        '{ name: "UNUSED" data_type: TYPE_INT32 dims: [ 1 ] } ]',
    )
    flow_repo(tmp_path, extra)
    f = only(check_repository(tmp_path))
    assert (f.model, f.field) == ("flow", "input UNUSED")


def test_ensemble_output_not_produced(tmp_path: Path) -> None:
    flow_repo(tmp_path, ENSEMBLE.replace('value: "TOKENS"', 'value: "tokens"'))
    findings = check_repository(tmp_path)
    f = only(findings)
    assert f.field == "output TOKENS"
    assert only(findings, Severity.WARNING).message == "step 1 writes 'tokens', which nothing reads"


def test_ensemble_tensor_from_nowhere(tmp_path: Path) -> None:
    flow_repo(tmp_path, ENSEMBLE.replace('input_map { key: "MODEL" value: "routed"',
                                         'input_map { key: "MODEL" value: "route"'))  # fmt: skip
    findings = check_repository(tmp_path)
    f = only(findings)
    assert f.field == "ensemble_scheduling.step[1].input_map"
    assert "'route'" in f.message


def test_ensemble_tensor_with_two_producers(tmp_path: Path) -> None:
    flow_repo(tmp_path, ENSEMBLE.replace('value: "ANSWER"', 'value: "routed"'))
    found = errors(check_repository(tmp_path))
    assert any("written by steps 0 and 1" in f.message for f in found)


def test_ensemble_cycle(tmp_path: Path) -> None:
    write(tmp_path, "echo", SCORER.format(name="echo").replace("TYPE_FP32", "TYPE_STRING")
          .replace('"SCORE"', '"OUT"'))  # fmt: skip
    cyclic = """
    name: "loop"
    platform: "ensemble"
    max_batch_size: 8
    input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
    ensemble_scheduling { step [
      { model_name: "echo" model_version: -1 input_map { key: "TEXT" value: "b" }
        output_map { key: "OUT" value: "a" } },
      { model_name: "echo" model_version: -1 input_map { key: "TEXT" value: "a" }
        output_map { key: "OUT" value: "b" } },
      { model_name: "echo" model_version: -1 input_map { key: "TEXT" value: "TEXT" }
        output_map { key: "OUT" value: "OUT" } }
    ] }
    """
    write(tmp_path, "loop", cyclic, files=())
    f = only(check_repository(tmp_path))
    assert f.field == "ensemble_scheduling.step"
    assert "cycle: 0 -> 1 -> 0" in f.message


def test_ensemble_data_types_must_match_along_each_edge(tmp_path: Path) -> None:
    flow_repo(tmp_path, model_type="TYPE_INT32")  # pick writes INT32, answer reads STRING
    f = only(check_repository(tmp_path))
    assert f.field == "ensemble_scheduling.step[1].input_map"
    assert "TYPE_INT32" in f.message and "TYPE_STRING" in f.message


def test_ensemble_output_type_must_match_its_producer(tmp_path: Path) -> None:
    flow_repo(tmp_path, ENSEMBLE.replace(
        '{ name: "TOKENS" data_type: TYPE_INT32', '{ name: "TOKENS" data_type: TYPE_INT64'))  # fmt: skip
    f = only(check_repository(tmp_path))
    assert f.field == "output TOKENS"


def test_ensemble_batch_size_within_steps(tmp_path: Path) -> None:
    flow_repo(tmp_path, ENSEMBLE.replace("max_batch_size: 8", "max_batch_size: 16"))
    found = errors(check_repository(tmp_path))
    assert len(found) == 2 and all(f.field == "max_batch_size" for f in found)


def test_ensemble_without_steps_or_with_a_backend(tmp_path: Path) -> None:
    write(tmp_path, "empty", 'name: "empty"\nplatform: "ensemble"\nbackend: "python"\n'
          'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
          'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n', files=())  # fmt: skip
    fields = sorted(f.field for f in errors(check_repository(tmp_path)))
    assert fields == ["backend", "ensemble_scheduling.step"]


def test_models_selects_what_loads_with_ensemble_dependencies(tmp_path: Path) -> None:
    flow_repo(tmp_path)
    scorer(tmp_path, "broken", **{"max_batch_size: 8": "max_batch_size: -1"})
    assert errors(check_repository(tmp_path))
    assert check_repository(tmp_path, models=["flow"]) == []
    (tmp_path / "answer" / "1" / "model.py").unlink()  # a step of the ensemble
    f = only(check_repository(tmp_path, models=["flow"]))
    assert f.model == "answer"
    g = only(check_repository(tmp_path, models=["nope"]))
    assert (g.model, g.field) == ("nope", "model")


# -- the command -------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quorum.cli", "triton", "check", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_cli_table_json_and_exit_status(tmp_path: Path) -> None:
    scorer(tmp_path, **{'name: "scorer"': 'name: "other"'})
    run = _cli(str(tmp_path))
    assert run.returncode == 1, run.stderr
    assert "error" in run.stdout and "scorer" in run.stdout and "fix: set name" in run.stdout
    assert "fails (1 errors, 0 warnings)" in run.stdout
    run = _cli(str(tmp_path), "--json")
    assert run.returncode == 1
    assert json.loads(run.stdout) == [
        {
            "severity": "error",
            "model": "scorer",
            "field": "name",
            "message": "name is 'other' but the folder is 'scorer': Triton refuses the model",
            "fix": 'set name: "scorer" or rename the folder to other/',
        }
    ]
    ok = _cli(str(default_model_repository()))
    assert ok.returncode == 0, ok.stdout
    assert "passes" in ok.stdout


def test_quorum_up_skips_optional_models_unless_asked_for() -> None:
    from quorum import config
    from quorum.tritonserver import optional_skipped as _optional_skipped

    triton = config.load(env={})["triton"]
    repo = default_model_repository()
    assert set(_optional_skipped(triton, repo)) == {
        "routed_chat", "select_model", "chat_generate", "prompt_task",
    }  # fmt: skip
    assert _optional_skipped({**triton, "load_optional": ["routed_chat"]}, repo) == ("prompt_task",)
    assert _optional_skipped({**triton, "load_optional": ["select_model"]}, repo) == (
        "routed_chat",
        "chat_generate",
        "prompt_task",
    )
