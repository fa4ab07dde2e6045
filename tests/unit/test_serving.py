"""The shared body of the Triton head models (quorum.localmodels.serving): its config
parameters, without Triton."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quorum.localmodels.serving import limit_blas_threads, parameter

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


def test_a_cap_applies_to_numpys_blas_in_the_whole_process() -> None:
    # in a child (the cap is process-wide and stays) started with two BLAS threads, whatever
    # the CPUs of the machine running the test
    code = (
        "import numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from quorum.localmodels.serving import limit_blas_threads\n"
        "def threads():\n"
        "    return {p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'}\n"
        "assert threads() == {2}, threads()\n"
        "assert limit_blas_threads('1', what='m') == 1\n"
        "assert threads() == {1}, threads()\n"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)


def test_a_batch_of_one_text_gets_its_own_thread_count() -> None:
    code = (
        "import numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from quorum.localmodels.serving import BlasThreads, limit_blas_threads\n"
        "def threads():\n"
        "    return {p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'}\n"
        "limit_blas_threads('1', what='m')\n"
        "b = BlasThreads(1, 2)\n"
        "assert b.for_batch(1) == 2 and threads() == {2}, threads()\n"
        "assert b.for_batch(1) == 2 and threads() == {2}, threads()\n"
        "assert b.for_batch(7) == 1 and threads() == {1}, threads()\n"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
