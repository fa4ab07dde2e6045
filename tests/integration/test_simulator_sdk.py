"""The official OpenAI Python SDK against the provider simulator, over loopback.

Nothing is patched: the SDK's own client sends real HTTP to a real ``ProviderSimulator``, and
its own parsing (``chat.completions.parse``, the stream helpers, the status-to-exception
table) decides whether the simulator's answers pass for OpenAI's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, Literal

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel, Field

from quorum.simulator import LEAK_MARKER, Fault, ProviderSimulator, count_tokens

#: a fake key of OpenAI's shape: the simulator must never say it back
KEY = "sk-test-" + "q" * 40
KEY_LIKE = re.compile(r"sk-[A-Za-z0-9]")
MODEL = "gpt-4.1"
PROMPT = "Summarise the history of the Roman aqueducts in three sentences"


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator(api_key=KEY, models=[MODEL, "deepseek-chat"]) as s:
        yield s


@pytest.fixture
def client(sim: ProviderSimulator) -> Iterator[OpenAI]:
    with OpenAI(api_key=KEY, base_url=sim.url, max_retries=0, timeout=10) as c:
        yield c


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


# -- unary and streaming ---------------------------------------------------------------------


def test_unary_completion(client: OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=user(PROMPT))
    assert completion.model == MODEL
    assert completion.object == "chat.completion"
    (choice,) = completion.choices
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    content = choice.message.content
    assert content is not None and content.startswith(f"[simulated {MODEL}] ")
    assert "Roman aqueducts" in content
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == count_tokens(PROMPT)
    assert usage.completion_tokens == count_tokens(content)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0


def test_max_tokens_finishes_with_length(client: OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=user(PROMPT), max_tokens=3)
    assert completion.choices[0].finish_reason == "length"


def test_stream_with_usage(client: OpenAI) -> None:
    unary = client.chat.completions.create(model=MODEL, messages=user(PROMPT))
    stream = client.chat.completions.create(
        model=MODEL, messages=user(PROMPT), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unary.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == count_tokens(text)
    assert last.usage.prompt_tokens == count_tokens(PROMPT)
    assert all(c.usage is None for c in chunks[:-1])


async def test_async_client_streams(sim: ProviderSimulator) -> None:
    async with AsyncOpenAI(api_key=KEY, base_url=sim.url, max_retries=0, timeout=10) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=user("hi"), stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith(
        f"[simulated {MODEL}] "
    )
    assert chunks[-1].usage is not None


def test_models_list_and_retrieve(client: OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["deepseek-chat", MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


# -- structured outputs ----------------------------------------------------------------------


class Step(BaseModel):
    explanation: str
    output: str


class MathReasoning(BaseModel):
    steps: list[Step]
    final_answer: str


class Category(StrEnum):
    hardware = "hardware"
    software = "software"
    service = "service"


class Customer(BaseModel):
    name: str
    email: str | None
    vip: bool


class LineItem(BaseModel):
    sku: str
    quantity: int
    unit_price: float
    category: Category


class Order(BaseModel):
    customer: Customer
    items: list[LineItem]
    status: Literal["open", "paid", "shipped"]
    notes: str | None
    tags: list[str]


class Section(BaseModel):
    """Recursive: the SDK's strict schema refers back to it."""

    title: str
    level: int
    subsections: list[Section]


class Outline(BaseModel):
    topic: str
    sections: list[Section] = Field(description="the outline's top-level sections")


@pytest.mark.parametrize("model", [MathReasoning, Order, Outline])
def test_parse_pydantic_models(client: OpenAI, model: type[BaseModel]) -> None:
    prompt = "solve 8x + 7 = -23 and explain every step"
    completion = client.chat.completions.parse(
        model=MODEL, messages=user(prompt), response_format=model
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert message.refusal is None
    parsed = message.parsed
    assert isinstance(parsed, model)
    # the values come from the prompt, and again the same for the same prompt
    assert "simulated: solve 8x + 7 = -23" in message.content  # type: ignore[operator]
    again = client.chat.completions.parse(model=MODEL, messages=user(prompt), response_format=model)
    assert again.choices[0].message.parsed == parsed


def test_parse_fills_nested_lists_and_optionals(client: OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL, messages=user("an order"), response_format=Order
    )
    order = completion.choices[0].message.parsed
    assert order is not None
    assert order.items and isinstance(order.items[0].category, Category)
    assert order.customer.email is not None and order.notes is not None
    assert order.status in ("open", "paid", "shipped")


def test_stream_helper_parses_the_final_message(client: OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL,
        messages=user("an outline of Roman engineering"),
        response_format=Outline,
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    outline = final.choices[0].message.parsed
    assert isinstance(outline, Outline) and outline.sections
    assert final.usage is not None and final.usage.completion_tokens > 0


def test_parse_cut_by_max_tokens_raises_length_error(client: OpenAI) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model=MODEL, messages=user("x"), response_format=Order, max_tokens=4
        )


def test_moderation_verdict_schema_still_gets_the_keyword_judge(client: OpenAI) -> None:
    class Verdict(BaseModel):
        is_safe: bool
        confidence: float
        categories: dict[str, float]
        reason: str

    rf: Any = {
        "type": "json_schema",
        "json_schema": {"name": "moderation_verdict", "strict": True, "schema": {}},
    }
    completion = client.chat.completions.create(
        model=MODEL, messages=user("I will kill you"), response_format=rf
    )
    verdict = Verdict.model_validate_json(completion.choices[0].message.content or "")
    assert verdict.is_safe is False and verdict.categories["violence"] >= 0.5


def test_json_object_mode(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=user("answer in JSON"), response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


# -- errors ----------------------------------------------------------------------------------


def assert_clean(exc: openai.APIStatusError) -> None:
    """OpenAI's error shape, the simulator's marker, and nothing shaped like a key."""
    assert isinstance(exc.body, dict) and set(exc.body) == {"message", "type", "param", "code"}
    assert LEAK_MARKER in exc.message
    for text in (str(exc), exc.message, exc.response.text):
        assert not KEY_LIKE.search(text), text


def test_unknown_model_is_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=user("hi"))
    exc = info.value
    assert (exc.status_code, exc.code, exc.param, exc.type) == (
        404,
        "model_not_found",
        "model",
        "invalid_request_error",
    )
    assert_clean(exc)


def test_a_key_sent_as_the_model_is_not_echoed(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=KEY, messages=user("hi"))
    assert KEY not in info.value.response.text
    assert_clean(info.value)


@pytest.mark.parametrize("key", [KEY + "x", "sk-proj-" + "Z" * 48])
def test_wrong_key_is_an_authentication_error(sim: ProviderSimulator, key: str) -> None:
    with OpenAI(api_key=key, base_url=sim.url, max_retries=0, timeout=10) as client:
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model=MODEL, messages=user("hi"))
        exc = info.value
        assert (exc.status_code, exc.code, exc.type) == (
            401,
            "invalid_api_key",
            "invalid_request_error",
        )
        assert key not in exc.response.text
        assert_clean(exc)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
        ({"messages": [{"content": "no role"}]}, "messages.[0].role", "missing_required_parameter"),
        ({"messages": []}, "messages", "invalid_type"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "has space"}}},
            "response_format.json_schema.name",
            "invalid_value",
        ),
    ],
)
def test_bad_requests(client: OpenAI, kwargs: dict[str, Any], param: str, code: str) -> None:
    args: dict[str, Any] = {"model": MODEL, "messages": user("hi"), **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**args)
    exc = info.value
    assert (exc.status_code, exc.param, exc.code) == (400, param, code)
    assert_clean(exc)


def test_rate_limit_fault(sim: ProviderSimulator, client: OpenAI) -> None:
    sim.add_fault(Fault("rate_limit", retry_after=2, times=1))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=MODEL, messages=user("hi"))
    exc = info.value
    assert (exc.status_code, exc.code, exc.type) == (429, "rate_limit_exceeded", "requests")
    assert exc.response.headers["retry-after"] == "2"
    assert_clean(exc)
    # times=1: the next call is answered
    assert client.chat.completions.create(model=MODEL, messages=user("hi")).choices


def test_rate_limit_fault_on_a_stream(sim: ProviderSimulator, client: OpenAI) -> None:
    sim.add_fault(Fault("rate_limit", times=1))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=user("hi"), stream=True)


def test_server_error_fault(sim: ProviderSimulator, client: OpenAI) -> None:
    sim.add_fault(Fault("status", status=503, times=1))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=MODEL, messages=user("hi"))
    assert info.value.status_code == 503
    assert_clean(info.value)
