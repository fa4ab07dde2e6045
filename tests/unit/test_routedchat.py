"""The routed_chat ensemble's contract with its callers, as pure code
(:mod:`quorum.localmodels.routedchat`): the request parameters chat_generate reads, the error
tags that carry a Quorum error's class and reason through Triton, and select_model's reasons."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorum import config, errors
from quorum.localmodels.routedchat import (
    SELECT_AUTO,
    CallOptions,
    ModelSelector,
    call_options,
    error_text,
    parse_error_tag,
)


def test_no_parameters_leave_the_steps_own_settings() -> None:
    assert call_options(None) == call_options("") == call_options("{}") == CallOptions()


def test_parameters_are_read_from_the_requests_json() -> None:
    got = call_options(json.dumps({"timeout_ms": 1500, "max_tokens": 64, "temperature": 0.5}))
    assert got == CallOptions(timeout_s=1.5, max_tokens=64, temperature=0.5)
    # max_tokens 0 is the step's own; a temperature may come as a string; others are ignored
    assert call_options({"max_tokens": 0, "temperature": "1", "other": "x"}) == CallOptions(
        temperature=1.0
    )


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"timeout_ms": 1.5}, "timeout_ms"),
        ({"timeout_ms": True}, "timeout_ms"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 40_000}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "warm"}, "temperature"),
        ({"temperature": "nan"}, "temperature"),
        ("[1, 2]", "parameters"),
        ("{not json", "parameters"),
    ],
)
def test_a_bad_parameter_is_invalid_and_named(parameters: Any, field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as e:
        call_options(parameters)
    assert e.value.reason == "INVALID_FIELD" and e.value.metadata["field"] == field


CLASSES = [
    errors.InvalidArgument, errors.ContentBlocked, errors.NotFound, errors.AlreadyExists,
    errors.FailedPrecondition, errors.ResourceExhausted, errors.Unauthenticated,
    errors.PermissionDenied, errors.Unavailable, errors.DeadlineExceeded, errors.Internal,
]  # fmt: skip


@given(
    cls=st.sampled_from(CLASSES),
    reason=st.from_regex(r"[A-Z][A-Z0-9_]{1,40}", fullmatch=True),
    message=st.text(max_size=80),
    prefix=st.sampled_from(["", "in ensemble 'routed_chat', "]),
)
def test_an_error_tag_gives_back_the_class_and_reason(
    cls: type[errors.QuorumError], reason: str, message: str, prefix: str
) -> None:
    text = prefix + error_text(cls(message, reason=reason))
    assert parse_error_tag(text) == (cls, reason)


def test_a_class_of_ones_own_is_tagged_as_its_nearest_in_the_tree() -> None:
    class Mine(errors.Unavailable):
        pass

    assert parse_error_tag(error_text(Mine("m", reason="X_Y"))) == (errors.Unavailable, "X_Y")


@pytest.mark.parametrize(
    "text",
    ["plain failure", "failed [PROVIDER_ERROR]", "[Exception:PROVIDER_ERROR]", "[Unavailable:x]"],
)
def test_text_without_a_tag_of_ours_has_none(text: str) -> None:
    assert parse_error_tag(text) is None


def test_select_model_says_why_it_chose() -> None:
    data = config.load(env={})
    data["router"]["simulator_url"] = "http://127.0.0.1:9/v1"
    selector = ModelSelector.from_config(data, {})
    auto = selector.select("Write a python function", SELECT_AUTO)
    assert auto.model == "deepseek-v3.2" and "'python'" in auto.reason
    assert selector.select("anything", 2).reason == "MODEL_SELECT 2 is gemini-2.5-flash"
