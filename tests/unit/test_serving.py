"""The shared body of the Triton head models (quorum.localmodels.serving): its config
parameters and its load, without Triton."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from quorum.localmodels.embedding import Head, Heads
from quorum.localmodels.serving import HeadsModel, Instance, limit_blas_threads, parameter

ROOT = Path(__file__).resolve().parents[2]


def test_parameter_reads_a_string_value_and_is_empty_when_unset() -> None:
    config = {"parameters": {"blas_threads": {"string_value": " 1 "}}}
    assert parameter(config, "blas_threads") == "1"
    assert parameter(config, "other") == ""
    assert parameter({}, "blas_threads") == ""


@pytest.mark.parametrize("value", ["", "0"])
def test_no_cap_leaves_the_threads_alone(value: str) -> None:
    assert limit_blas_threads(value, what="m") == 0


@pytest.mark.parametrize("value", ["one", "-1", "1.5"])
def test_a_bad_cap_is_refused_naming_the_model(value: str) -> None:
    with pytest.raises(ValueError, match=r"^m: blas_threads must be"):
        limit_blas_threads(value, what="m")


def _in_a_child_with_two_blas_threads(checks: str) -> None:
    """Run ``checks`` in a child process (a BLAS cap is process-wide and stays) started with
    two BLAS threads, whatever the CPUs of the machine running the test; ``threads()`` there
    is the set of numpy's BLAS thread counts."""
    code = (
        "import numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from quorum.localmodels.serving import BlasThreads, limit_blas_threads\n"
        "def threads():\n"
        "    return {p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'}\n"
        + checks
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)


def test_a_cap_applies_to_numpys_blas_in_the_whole_process() -> None:
    _in_a_child_with_two_blas_threads(
        "assert threads() == {2}, threads()\n"
        "assert limit_blas_threads('1', what='m') == 1\n"
        "assert threads() == {1}, threads()\n"
    )


def test_a_batch_of_one_text_gets_its_own_thread_count() -> None:
    _in_a_child_with_two_blas_threads(
        "limit_blas_threads('1', what='m')\n"
        "b = BlasThreads(1, 2)\n"
        "assert b.for_batch(1) == 2 and threads() == {2}, threads()\n"
        "assert b.for_batch(1) == 2 and threads() == {2}, threads()\n"
        "assert b.for_batch(7) == 1 and threads() == {1}, threads()\n"
    )


class _PbUtils:
    """What HeadsModel's initialize uses of Triton's triton_python_backend_utils."""

    class TritonModelException(Exception):
        pass

    class Logger:
        lines: ClassVar[list[str]] = []

        @classmethod
        def log_info(cls, message: str) -> None:
            cls.lines.append(message)

    @staticmethod
    def triton_string_to_numpy(name: str) -> type:
        return {"TYPE_FP32": np.float32}[name]


def _args(tmp_path: Path, *, device_id: str = "1", one_text: str = "2") -> dict[str, str]:
    config = {
        "output": [{"name": "SCORE_SPAM", "data_type": "TYPE_FP32"}],
        # no blas_threads cap: it would hold for the rest of this test process
        "parameters": {"blas_threads_one_text": {"string_value": one_text}},
    }
    return {
        "model_config": json.dumps(config),
        "model_repository": str(tmp_path),
        "model_version": "1",
        "model_instance_kind": "GPU",
        "model_instance_device_id": device_id,
    }


def _heads(folder: Path) -> Heads:
    return Heads([Head("spam", ("spam",), np.zeros(2, np.float32), 0.0, 0.5)], dim=2)


def test_a_runtime_is_made_for_the_instance_and_warmed_for_both_batch_sizes(
    tmp_path: Path,
) -> None:
    made: list[Instance] = []
    seen: list[list[str]] = []

    def features_for(instance: Instance) -> Callable[[Sequence[str]], np.ndarray]:
        made.append(instance)

        def features(texts: Sequence[str]) -> np.ndarray:
            seen.append(list(texts))
            return np.zeros((len(texts), 2), np.float32)

        return features

    model = HeadsModel(_PbUtils, _args(tmp_path), what="m", load=_heads, features_for=features_for)
    assert made == [Instance(kind="GPU", device_id=1, threads=0, threads_one_text=2)]
    assert [len(t) for t in seen] == [1, 2]  # the one-text runtime and the batch one
    assert model.columns == {"SCORE_SPAM": 0}
    assert "GPU instance" in _PbUtils.Logger.lines[-1]


def test_features_or_features_for_not_both_nor_neither(tmp_path: Path) -> None:
    def features(texts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(texts), 2), np.float32)

    with pytest.raises(TypeError, match="not both"):
        HeadsModel(_PbUtils, _args(tmp_path), what="m", load=_heads)
    with pytest.raises(TypeError, match="not both"):
        HeadsModel(
            _PbUtils,
            _args(tmp_path),
            what="m",
            load=_heads,
            features=features,
            features_for=lambda instance: features,
        )


@pytest.mark.parametrize(("device_id", "one_text"), [("x", "2"), ("0", "two")])
def test_a_bad_device_id_or_thread_count_fails_the_load(
    tmp_path: Path, device_id: str, one_text: str
) -> None:
    with pytest.raises(_PbUtils.TritonModelException, match=r"^m: .* must be a whole number"):
        HeadsModel(
            _PbUtils,
            _args(tmp_path, device_id=device_id, one_text=one_text),
            what="m",
            load=_heads,
            features_for=lambda instance: lambda texts: np.zeros((len(texts), 2)),
        )
