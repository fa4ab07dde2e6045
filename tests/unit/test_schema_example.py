"""example_of: for any schema of the structured-output subset, a value that validates."""

from __future__ import annotations

import json
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from quorum.schema_example import SchemaTooLargeError, example_of

Schema = dict[str, Any]

# -- schemas, generated -------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.text(max_size=8),
)


@st.composite
def _strings(draw: st.DrawFn) -> Schema:
    s: Schema = {"type": "string"}
    low = draw(st.none() | st.integers(0, 40))
    high = draw(st.none() | st.integers(low or 0, 60))
    if low is not None:
        s["minLength"] = low
    if high is not None:
        s["maxLength"] = high
    if draw(st.booleans()):
        s["format"] = draw(st.sampled_from(["date-time", "date", "email", "uri", "uuid"]))
        s.pop("minLength", None)
        s.pop("maxLength", None)
    return s


@st.composite
def _numbers(draw: st.DrawFn, kind: str) -> Schema:
    s: Schema = {"type": kind}
    low = draw(st.none() | st.integers(-10_000, 10_000))
    high = draw(st.none() | st.integers(low if low is not None else -10_000, 10_000))
    if low is not None:
        s["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
    if high is not None:
        s["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = high
    if low is not None and high is not None:
        gap = 2 if kind == "integer" else 0  # two exclusive integer bounds need a gap of 2
        if high - low < gap or (
            high == low and ("exclusiveMinimum" in s or "exclusiveMaximum" in s)
        ):
            s.pop("exclusiveMaximum", None)
            s["maximum"] = low + 2
            s.pop("exclusiveMinimum", None)
            s["minimum"] = low
    if kind == "integer" and low is not None and high is None and draw(st.booleans()):
        s["multipleOf"] = draw(st.integers(1, 9))
    return s


_leaves = st.one_of(
    _strings(),
    _numbers("integer"),
    _numbers("number"),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(_scalars, min_size=1, max_size=5, unique_by=lambda v: json.dumps(v)).map(
        lambda e: {"enum": e}
    ),
    _scalars.map(lambda c: {"const": c}),
    st.just({"$ref": "#/$defs/Leaf"}),
)


def _has_one_type(schema: Schema) -> bool:
    """A schema of one type other than null: disjoint from ``{"type": "null"}``."""
    return isinstance(schema.get("type"), str) and schema["type"] != "null"


def _composites(children: st.SearchStrategy[Schema]) -> st.SearchStrategy[Schema]:
    names = st.text("abcdefgh_", min_size=1, max_size=6)

    @st.composite
    def objects(draw: st.DrawFn) -> Schema:
        props = draw(st.dictionaries(names, children, max_size=5))
        required = sorted(draw(st.sets(st.sampled_from(sorted(props)))) if props else set())
        s: Schema = {"type": "object", "properties": props, "required": required}
        if draw(st.booleans()):
            s["additionalProperties"] = False
        return s

    @st.composite
    def arrays(draw: st.DrawFn) -> Schema:
        low = draw(st.integers(0, 3))
        s: Schema = {"type": "array", "items": draw(children), "minItems": low}
        if draw(st.booleans()):
            s["maxItems"] = draw(st.integers(low, 5))
        return s

    return st.one_of(
        objects(),
        arrays(),
        st.lists(children, min_size=1, max_size=3).map(lambda b: {"anyOf": b}),
        children.map(lambda c: {"anyOf": [c, {"type": "null"}]}),  # Optional[...] in Pydantic
        children.filter(_has_one_type).map(lambda c: {"oneOf": [{"type": "null"}, c]}),
        children.filter(_has_one_type).map(lambda c: {**c, "type": [c["type"], "null"]}),
    )


_schemas = st.recursive(_leaves, _composites, max_leaves=12)


@st.composite
def documents(draw: st.DrawFn) -> Schema:
    """A root schema, with ``$defs`` as Pydantic emits them (Leaf, and a recursive Tree)."""
    root = draw(_schemas)
    defs = {
        "Leaf": draw(_leaves.filter(lambda s: "$ref" not in s)),
        "Tree": {
            "type": "object",
            "properties": {
                "label": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/Tree"}},
                "parent": {"anyOf": [{"$ref": "#/$defs/Tree"}, {"type": "null"}]},
            },
            "required": ["label", "children", "parent"],
            "additionalProperties": False,
        },
    }
    if draw(st.booleans()):
        root = {"type": "object", "properties": {"tree": {"$ref": "#/$defs/Tree"}, "x": root},
                "required": ["tree", "x"]}  # fmt: skip
    return {**root, "$defs": defs}


# generating recursive schemas is slow on a loaded machine, and now and then a draw is large
# or filtered out (the one-type filters above): no failure of the code under test
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
@given(documents(), st.text(max_size=60))
def test_the_example_validates_against_any_generated_schema(schema: Schema, text: str) -> None:
    value = example_of(schema, text)
    jsonschema.validate(
        value, schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    assert example_of(schema, text) == value  # deterministic
    json.dumps(value)  # a JSON document


# -- schemas from Pydantic models, as the SDK's parse() sends them ---------------------------


class Mood(StrEnum):
    calm = "calm"
    loud = "loud"


class Step(BaseModel):
    explanation: str
    output: str


class Tree(BaseModel):
    label: str
    children: list[Tree]
    parent: Tree | None = None


class Answer(BaseModel):
    steps: list[Step] = Field(min_length=2, max_length=4)
    final: str = Field(min_length=30, max_length=40)
    mood: Mood
    kind: Literal["proof", "sketch"]
    score: float = Field(gt=0, lt=1)
    count: int = Field(ge=10, le=12)
    ok: bool
    note: str | None
    when: datetime
    day: date
    ident: UUID
    tree: Tree
    pair: tuple[int, str]
    extra: dict[str, int]


def test_pydantic_models_round_trip() -> None:
    schema = Answer.model_json_schema()
    value = example_of(schema, "solve 8x + 7 = -23")
    jsonschema.validate(value, schema)
    parsed = Answer.model_validate(value)
    assert 2 <= len(parsed.steps) <= 4
    assert parsed.steps[0].explanation == "simulated: solve 8x + 7 = -23"
    assert len(parsed.final) >= 30 and 10 <= parsed.count <= 12 and 0 < parsed.score < 1
    assert parsed.note is not None  # an optional field near the top gets a value


def test_values_follow_the_prompt() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}}
    values = {json.dumps(example_of(schema, f"prompt number {i}")) for i in range(20)}
    assert len(values) == 20


def test_enum_members_vary_with_the_prompt() -> None:
    schema = {"enum": ["a", "b", "c"]}
    assert {example_of(schema, str(i)) for i in range(50)} == {"a", "b", "c"}


def test_a_schema_with_no_finite_instance_is_refused() -> None:
    loop = {"$defs": {"L": {"type": "object", "properties": {"next": {"$ref": "#/$defs/L"}},
                            "required": ["next"]}}, "$ref": "#/$defs/L"}  # fmt: skip
    with pytest.raises(SchemaTooLargeError):
        example_of(loop, "x")


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "integer"}, "minItems": 10**9},
        {"type": "string", "minLength": 10**12},
        {  # fan-out 2 over required properties, 30 levels deep: 2**30 values
            "$defs": {f"L{i}": {"type": "object", "required": ["a", "b"], "properties": {
                "a": {"$ref": f"#/$defs/L{i + 1}"}, "b": {"$ref": f"#/$defs/L{i + 1}"}}}
                for i in range(30)} | {"L30": {"type": "null"}},
            "$ref": "#/$defs/L0",
        },
    ],
)  # fmt: skip
def test_a_huge_instance_is_refused_not_built(schema: Schema) -> None:
    with pytest.raises(SchemaTooLargeError):
        example_of(schema, "x")


def test_an_unresolvable_ref_is_refused() -> None:
    with pytest.raises(ValueError, match="unresolvable"):
        example_of({"$ref": "#/$defs/Missing"}, "x")
