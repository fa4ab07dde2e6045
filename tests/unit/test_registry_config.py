import re
from decimal import Decimal

import pytest

from quorum import config
from quorum.errors import FailedPrecondition, NotFound
from quorum.registry import ConfigError, OpenAIBackend, TritonBackend, load_registry


def defaults_registry():
    return load_registry(config.defaults())


def test_defaults_name_the_brief_models_with_their_prices():
    r = defaults_registry()
    prices = {
        n: [(p.input_per_mtok, p.output_per_mtok, p.currency) for p in m.pricing.prices]
        for n, m in r.models.items()
    }
    assert prices["gpt-4.1"] == [(Decimal("2.00"), Decimal("8.00"), "USD")]
    assert prices["claude-sonnet-4.5"] == [(Decimal("3.00"), Decimal("15.00"), "USD")]
    assert prices["gemini-2.5-flash"] == [(Decimal("0.50"), Decimal("2.50"), "USD")]
    assert prices["deepseek-v3.2"] == [(Decimal("0.14"), Decimal("0.42"), "USD")]
    # the local judges are free, and say so
    for judge in ("profanity-check", "nsfw-check", "text-heads", "ngram-heads"):
        assert prices[judge] == [(Decimal(0), Decimal(0), "USD")]
    # every default price is since the beginning, billed in its list currency
    assert all(
        m.pricing.prices[0].effective_from_us is None and m.pricing.billing is None
        for m in r.models.values()
    )
    assert isinstance(r.get("profanity-check").backend, TritonBackend)
    assert isinstance(r.get("nsfw-check").backend, TritonBackend)
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
    # (the local Triton judges need no key)
    assert [m.name for m in plain.judges()] == [
        "ngram-heads",
        "nsfw-check",
        "profanity-check",
        "text-heads",
    ]

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
        (
            {"m": {"triton_model": "x", "input_per_mtok": "-1", "output_per_mtok": 0}},
            "non-negative",
        ),
        (
            {"m": {"triton_model": "x", "input_per_mtok": "abc", "output_per_mtok": 0}},
            "not a decimal",
        ),
        ({"m": {"triton_model": "x", "currency": "dollars"}}, "ISO 4217"),
        (
            {"m": {"triton_model": "x", "moderation": {"categories": ["gore"]}}},
            "choose one or more",
        ),
        ({"m": {"triton_model": "x", "moderation": {"weight": 0, "categories": ["hate"]}}}, "> 0"),
        ({"m": {"triton_model": "x", "colour": "red"}}, "unknown keys"),
        (
            {"m": {"triton_model": "x", "moderation": {"categories": ["adult"], "cutoff": 0.4}}},
            r"moderation: unknown keys \['cutoff'\]",
        ),
        (
            {"a": {"triton_model": "x", "name": "z"}, "b": {"triton_model": "y", "name": "z"}},
            "used twice",
        ),
        ({"m": {"triton_model": "x", "moderation": {"categories": ["hate"]}}}, "cut-off"),
        (
            {"m": {"triton_model": "x", "moderation": {"categories": ["hate"], "threshold": 1.5}}},
            r"threshold: 1\.5 is not a number in \[0, 1\]",
        ),
        (
            {"m": {"triton_model": "x", "moderation": {"categories": ["hate"], "threshold": True}}},
            "not a number",
        ),
        (
            {
                "m": {
                    "triton_model": "x",
                    "moderation": {"categories": ["hate", "spam"], "threshold": {"hate": 0.4}},
                }
            },
            r"one cut-off per category \(missing \['spam'\]",
        ),
        (
            {
                "m": {
                    "triton_model": "x",
                    "moderation": {"categories": ["hate"], "threshold": {"hate": 0.4, "adult": 1}},
                }
            },
            r"not judged \['adult'\]",
        ),
        (
            {
                "m": {
                    "triton_model": "x",
                    "moderation": {"categories": ["hate"], "threshold": {"hate": "high"}},
                }
            },
            "threshold.hate: 'high' is not a number",
        ),
        (
            {"m": {"triton_model": "x", "triton_outputs": "many", "moderation": {}}},
            "triton_outputs: one of score, per_category",
        ),
        (
            {"m": {"triton_model": "x", "moderation": {"categories": ["hate"], "cutoff": 0.5}}},
            r"moderation: unknown keys \['cutoff'\]",
        ),
    ],
)
def test_bad_registry_entries_fail_at_start_up(models, message):
    with pytest.raises(ConfigError, match=message):
        load_registry({"models": models})


def test_local_judges_take_their_cut_off_from_the_registry():
    r = defaults_registry()
    nsfw, profanity = r.get("nsfw-check"), r.get("profanity-check")
    assert nsfw.moderation is not None and profanity.moderation is not None
    assert nsfw.moderation.categories == ("adult",)
    assert nsfw.moderation.threshold == 0.45
    assert profanity.moderation.threshold == 0.5
    # an LLM judge gives its own verdict: it has no cut-off
    gemini = r.get("gemini-2.5-flash")
    assert gemini.moderation is not None and gemini.moderation.threshold is None


def _triton_judge(threshold: object) -> dict:
    return {
        "m": {"triton_model": "x", "moderation": {"categories": ["adult"], "threshold": threshold}}
    }


@pytest.mark.parametrize("value", [0, 0.0, 0.3, 1, 1.0])
def test_threshold_in_range_is_taken(value):
    spec = load_registry({"models": _triton_judge(value)}).get("m")
    assert spec.moderation is not None and spec.moderation.threshold == float(value)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), float("inf"), "0.5", True, [0.5]])
def test_threshold_outside_0_1_or_not_a_number_fails_at_start_up(value):
    with pytest.raises(
        ConfigError, match=r"models\.m\.moderation\.threshold: .* not a number in \[0, 1\]"
    ):
        load_registry({"models": _triton_judge(value)})


def test_triton_judge_without_threshold_fails_at_start_up():
    with pytest.raises(
        ConfigError, match=r"models\.m\.moderation\.threshold: a Triton judge needs"
    ):
        load_registry(
            {"models": {"m": {"triton_model": "x", "moderation": {"categories": ["hate"]}}}}
        )


def test_llm_judge_with_threshold_fails_at_start_up():
    data = {
        "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {
            "j": {"provider": "p", "moderation": {"categories": ["hate"], "threshold": 0.5}}
        },
    }
    with pytest.raises(ConfigError, match=r"models\.j\.moderation\.threshold: only a Triton judge"):
        load_registry(data)


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


def test_triton_judge_threshold_is_one_number_or_one_per_category():
    reg = load_registry(
        {
            "providers": {"p": {"base_url": "http://x"}},
            "models": {
                "one": {
                    "triton_model": "a",
                    "moderation": {"categories": ["hate", "harassment"], "threshold": 0.5},
                },
                "per": {
                    "triton_model": "b",
                    "triton_outputs": "per_category",
                    "moderation": {
                        "categories": ["spam", "self_harm"],
                        "threshold": {"spam": 0.7, "self_harm": 0.25},
                    },
                },
                "llm": {"provider": "p", "moderation": {"categories": ["injection"]}},
            },
        }
    )
    one, per, llm = reg.get("one"), reg.get("per"), reg.get("llm")
    assert one.moderation and one.moderation.thresholds == {"hate": 0.5, "harassment": 0.5}
    assert isinstance(one.backend, TritonBackend) and one.backend.outputs == "score"
    assert per.moderation and per.moderation.cutoff("self_harm") == 0.25
    assert per.moderation.threshold is None  # a per-category table has no single cut-off
    assert isinstance(per.backend, TritonBackend) and per.backend.outputs == "per_category"
    assert llm.moderation and llm.moderation.thresholds == {}


def test_llm_judge_refuses_a_threshold():
    with pytest.raises(ConfigError, match="only a Triton judge takes a cut-off"):
        load_registry(
            {
                "providers": {"p": {"base_url": "http://x"}},
                "models": {
                    "m": {"provider": "p", "moderation": {"categories": ["hate"], "threshold": 0.5}}
                },
            }
        )


def test_voter_policy_comes_from_config_with_the_briefs_defaults():
    from services.voter.config import policy_from

    policy = policy_from(config.load(env={})["voter"])
    assert policy.vote_threshold == 0.6 and policy.review_threshold == 0.6
    assert dict(policy.thresholds) == {"violence": 0.3, "adult": 0.5, "hate": 0.4, "spam": 0.7}
    assert policy.threshold("harassment") == policy.category_threshold == 0.5
    assert policy.on_no_quorum == "error"
    env = {"QUORUM_VOTER__THRESHOLDS__HATE": "0.55", "QUORUM_VOTER__ON_NO_QUORUM": "review"}
    policy = policy_from(config.load(env=env)["voter"])
    assert policy.threshold("hate") == 0.55 and policy.on_no_quorum == "review"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"QUORUM_VOTER__THRESHOLDS__GORE": "0.5"}, "unknown categories ['gore']"),
        ({"QUORUM_VOTER__THRESHOLDS__SPAM": "1.5"}, "voter.thresholds.spam"),
        ({"QUORUM_VOTER__VOTE_THRESHOLD": "2"}, "voter.vote_threshold"),
        ({"QUORUM_VOTER__ON_NO_QUORUM": "ignore"}, "voter.on_no_quorum"),
    ],
)
def test_bad_voter_policy_fails_at_start_naming_the_field(override, message):
    from services.voter.config import policy_from

    with pytest.raises(ConfigError, match=re.escape(message)):
        policy_from(config.load(env=override)["voter"])


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"base_url": "https://x.example/v1", "api_key": "sk-oops"}, "api_key_env"),
        ({"base_url": "x.example/v1"}, "base_url"),
        ({"base_url": "https://"}, "base_url"),
        ({"base_url": "ftp://x.example"}, "base_url"),
    ],
)
def test_provider_tables_are_checked(table, match) -> None:
    from quorum import config
    from quorum.registry import ConfigError, load_registry

    data = config.defaults()
    data["providers"]["mine"] = table
    with pytest.raises(ConfigError, match=match) as e:
        load_registry(data)
    assert "sk-oops" not in str(e.value)
