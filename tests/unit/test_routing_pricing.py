from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorum import config
from quorum.backends.types import TokenUsage
from quorum.errors import FailedPrecondition, InvalidArgument, NotFound
from quorum.pricing import Price, cost_of, micros_per_mtok
from quorum.registry import load_registry
from services.router.routing import choose

SIM = "http://127.0.0.1:9/v1"


def reg(env=None, sim=SIM):
    return load_registry(config.defaults()).resolve_keys(env or {}, simulator_url=sim)


def test_explicit_model_wins():
    route = choose(reg(), model="claude-sonnet-4.5", task="code")
    assert [m.name for m in route.candidates] == ["claude-sonnet-4.5"]
    assert route.reason == "requested by the client"


def test_task_picks_the_cheapest_suited_model_with_fallbacks_in_price_order():
    route = choose(reg(), task="code")
    assert [m.name for m in route.candidates] == ["deepseek-v3.2", "gpt-4.1", "claude-sonnet-4.5"]
    assert "cheapest" in route.reason


def test_default_model_when_nothing_is_named():
    assert choose(reg()).candidates[0].name == "gpt-4.1"


def test_errors():
    with pytest.raises(NotFound):
        choose(reg(), model="nope")
    with pytest.raises(InvalidArgument, match="known tasks"):
        choose(reg(), task="juggling")
    with pytest.raises(InvalidArgument, match="classifier"):
        choose(reg(), model="profanity-check")
    with pytest.raises(FailedPrecondition, match="OPENAI_API_KEY"):
        choose(reg(sim=None), model="gpt-4.1")
    with pytest.raises(FailedPrecondition, match="no usable model"):
        choose(reg(sim=None), task="code")


def test_brief_prices_in_micros():
    r = reg()

    def price(model):
        (p,) = r.get(model).pricing.prices
        return p

    assert cost_of(price("gpt-4.1"), TokenUsage(1000, 500)).micros == 6000
    assert (
        cost_of(price("claude-sonnet-4.5"), TokenUsage(1_000_000, 1_000_000)).micros == 18_000_000
    )
    assert cost_of(price("deepseek-v3.2"), TokenUsage(1, 1)).micros == 1  # 0.56 rounds up
    assert micros_per_mtok(Decimal("0.14")) == 140_000


@given(
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.decimals(min_value=0, max_value=1000, places=4),
    st.decimals(min_value=0, max_value=1000, places=4),
)
def test_cost_is_exact_and_additive(i, o, pin, pout):
    price = Price(pin, pout)
    total = cost_of(price, TokenUsage(i, o)).micros
    exact = i * pin + o * pout
    assert abs(Decimal(total) - exact) <= Decimal("0.5")
    parts = cost_of(price, TokenUsage(i, 0)).micros + cost_of(price, TokenUsage(0, o)).micros
    assert abs(parts - total) <= 1


def test_negative_usage_is_refused():
    with pytest.raises(ValueError):
        cost_of(Price(Decimal(1), Decimal(1)), TokenUsage(-1, 0))


def auto_routing():
    from services.router.config import RouterSettings

    return RouterSettings.from_config(config.defaults(), {"QUORUM_DATA_DIR": "/tmp/x"}).auto


@pytest.mark.parametrize(
    ("prompt", "model", "why"),
    [
        ("Write a Python function that parses dates", "deepseek-v3.2", "'python'"),
        ("def main(): what does this do?", "deepseek-v3.2", "'def'"),
        ("Give me a quick summary of the news", "gemini-2.5-flash", "'quick'"),
        ("Please analyze these two contracts", "claude-sonnet-4.5", "'analyze'"),
        ("Explain in depth how vaccines work", "claude-sonnet-4.5", "'explain in depth'"),
        ("Tell me a story about a lighthouse", "gpt-4.1", "no keyword rule matched"),
    ],
)
def test_automatic_routing_follows_the_briefs_rules(prompt: str, model: str, why: str) -> None:
    route = choose(reg(), auto=auto_routing(), text=prompt)
    assert route.candidates[0].name == model
    assert route.reason.startswith("automatic:") and why in route.reason


def test_a_named_model_or_task_wins_over_automatic_routing() -> None:
    auto = auto_routing()
    assert choose(reg(), model="gpt-4.1", auto=auto, text="python").candidates[0].name == "gpt-4.1"
    assert choose(reg(), task="quick", auto=auto, text="python").candidates[0].name == (
        "gemini-2.5-flash"
    )


def test_automatic_routing_falls_back_to_the_default_model() -> None:
    from services.router.routing import AutoRouting, Rule

    only_code = AutoRouting((Rule("code", ("python",)),))
    route = choose(reg(), auto=only_code, text="a poem please")
    assert route.candidates[0].name == "gpt-4.1" and "default model" in route.reason
    # no key and no simulator: the code models cannot be called, the default neither
    with pytest.raises(FailedPrecondition):
        choose(reg(sim=None), auto=only_code, text="python")


def test_rules_for_tasks_no_model_serves_are_left_out(caplog) -> None:
    from services.router.config import RouterSettings

    data = config.defaults()
    data["routing"]["rules"].append({"task": "poetry", "keywords": ["poem"]})
    auto = RouterSettings.from_config(data, {"QUORUM_DATA_DIR": "/tmp/x"}).auto
    assert auto is not None and "poetry" not in {r.task for r in auto.rules}
    assert "poetry" in caplog.text


def test_the_embedded_registry_has_the_briefs_model_ids() -> None:
    r = reg()
    assert [r.by_id(i).name for i in range(4)] == [
        "gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2",
    ]  # fmt: skip
    with pytest.raises(NotFound) as e:
        r.by_id(4)
    assert e.value.metadata["field"] == "model_id" and "3 = deepseek-v3.2" in e.value.message


@pytest.mark.parametrize("bad", [-1, "1", True])
def test_bad_model_ids_are_config_errors(bad) -> None:
    from quorum.registry import ConfigError

    data = config.defaults()
    data["models"]["gpt-4-1"]["model_id"] = bad
    with pytest.raises(ConfigError, match="model_id"):
        load_registry(data)
    data["models"]["gpt-4-1"]["model_id"] = 1  # claude-sonnet-4.5's
    with pytest.raises(ConfigError, match="already"):
        load_registry(data)
