from decimal import Decimal

import pytest

from quorum import config
from quorum.errors import FailedPrecondition, NotFound
from quorum.registry import ConfigError, OpenAIBackend, TritonBackend, load_registry


def defaults_registry():
    return load_registry(config.defaults())


def test_defaults_name_the_brief_models_with_their_prices():
    r = defaults_registry()
    prices = {n: (m.price.input_per_mtok, m.price.output_per_mtok) for n, m in r.models.items()}
    assert prices["gpt-4.1"] == (Decimal("2.00"), Decimal("8.00"))
    assert prices["claude-sonnet-4.5"] == (Decimal("3.00"), Decimal("15.00"))
    assert prices["gemini-2.5-flash"] == (Decimal("0.50"), Decimal("2.50"))
    assert prices["deepseek-v3.2"] == (Decimal("0.14"), Decimal("0.42"))
    assert isinstance(r.get("profanity-check").backend, TritonBackend)
    assert r.default_model == "gpt-4.1"


def test_unknown_model_is_not_found_and_names_known_ones():
    with pytest.raises(NotFound) as e:
        defaults_registry().get("gpt-9")
    assert "gpt-4.1" in e.value.message
    assert e.value.reason == "MODEL_NOT_FOUND"


def test_missing_key_marks_unusable_or_moves_to_simulator():
    r = defaults_registry()
    plain = r.resolve_keys({})
    with pytest.raises(FailedPrecondition) as e:
        plain.usable("gpt-4.1")
    assert "OPENAI_API_KEY is not set" in e.value.message
    # judges without a key never vote, and are never simulated
    assert [m.name for m in plain.judges()] == ["profanity-check"]

    sim = r.resolve_keys({}, simulator_url="http://127.0.0.1:9/v1/")
    spec = sim.usable("gpt-4.1")
    assert spec.simulated
    assert isinstance(spec.backend, OpenAIBackend)
    assert spec.backend.provider.base_url == "http://127.0.0.1:9/v1"

    keyed = r.resolve_keys({"OPENAI_API_KEY": "sk-x"}, simulator_url="http://127.0.0.1:9/v1")
    assert not keyed.usable("gpt-4.1").simulated


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({"m": {"provider": "nope"}}, "no provider named"),
        ({"m": {"backend": "onnx"}}, "must be 'openai' or 'triton'"),
        ({"m": {"triton_model": "x", "input_per_mtok": "-1"}}, "non-negative"),
        ({"m": {"triton_model": "x", "input_per_mtok": "abc"}}, "not a decimal"),
        ({"m": {"triton_model": "x", "currency": "dollars"}}, "ISO 4217"),
        (
            {"m": {"triton_model": "x", "moderation": {"categories": ["gore"]}}},
            "choose one or more",
        ),
        ({"m": {"triton_model": "x", "moderation": {"weight": 0, "categories": ["hate"]}}}, "> 0"),
        ({"m": {"triton_model": "x", "colour": "red"}}, "unknown keys"),
        (
            {"a": {"triton_model": "x", "name": "z"}, "b": {"triton_model": "y", "name": "z"}},
            "used twice",
        ),
    ],
)
def test_bad_registry_entries_fail_at_start_up(models, message):
    with pytest.raises(ConfigError, match=message):
        load_registry({"models": models})


def test_default_model_must_exist():
    with pytest.raises(ConfigError, match="default_model"):
        load_registry({"registry": {"default_model": "x"}})


def test_file_then_environment_override_defaults(tmp_path):
    f = tmp_path / "q.toml"
    f.write_text('[voter]\nmin_votes = 3\n[router]\nmoderation = "both"\n')
    data = config.load(
        f, env={"QUORUM_VOTER__MIN_VOTES": "2", "QUORUM_ROUTER__ADDRESS": "0.0.0.0:1"}
    )
    assert data["voter"]["min_votes"] == 2  # env wins
    assert data["router"]["moderation"] == "both"  # file wins over defaults
    assert data["router"]["address"] == "0.0.0.0:1"
    assert data["voter"]["address"] == "127.0.0.1:50052"  # untouched default


def test_bad_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[voter\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad, env={})
