"""A JSON value that validates against a JSON schema: what a structured-output answer holds.

:func:`example_of` covers the schemas structured outputs are made of (OpenAI's strict
subset, and what Pydantic's ``model_json_schema()`` emits): objects with ``properties``,
``required`` and ``additionalProperties``; arrays with ``items`` or ``prefixItems`` and
``minItems``/``maxItems``; strings (``minLength``, ``maxLength``, the ``format`` values
Pydantic uses for dates, times, e-mail addresses, URLs and UUIDs), numbers and integers
(``minimum``, ``maximum``, the exclusive bounds, an integral ``multipleOf``), booleans,
``null``; ``enum``, ``const``, ``anyOf``, ``oneOf`` (first branch), ``allOf`` (merged),
``type`` lists, and ``$ref`` into ``$defs`` or ``definitions`` (or ``#``, the root),
recursive models included. ``pattern`` is not honoured.

The value is deterministic in ``(schema, text)``: strings quote the first words of
``text`` and numbers, booleans and enum members are picked from a hash of ``text`` and the
value's path. Pure: no I/O, no globals.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, TypeGuard

#: past this depth, optional parts are left out: empty arrays (when allowed), ``null``
#: branches, only required properties -- so that recursive schemas end
SHALLOW_DEPTH = 4
#: a schema that still nests this deep has no finite instance (a required self-reference)
MAX_DEPTH = 64
#: the most values (nodes) and the longest string or array an example may have
MAX_NODES = 100_000

_FORMATS: Mapping[str, str] = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "duration": "P1D",
    "email": "simulated@example.com",
    "idn-email": "simulated@example.com",
    "uri": "https://example.com/simulated",
    "iri": "https://example.com/simulated",
    "uri-reference": "https://example.com/simulated",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
}


class SchemaTooLargeError(ValueError):
    """The schema has no finite instance (it requires itself, directly or not), or only
    instances larger than :data:`MAX_NODES` values or characters."""


def example_of(schema: Mapping[str, Any], text: str = "") -> Any:
    """A value that validates against ``schema``, deterministic in ``(schema, text)``.

    Raises :class:`SchemaTooLargeError` for a schema with no finite instance (or only huge
    ones), ValueError for a ``$ref`` that names nothing.
    """
    return _Builder(schema, text).build(schema, "$", 0)


class _Builder:
    def __init__(self, root: Mapping[str, Any], text: str) -> None:
        self.root = root
        self.text = text
        words = text.split()
        summary = " ".join(words[:12])
        if len(summary) > 80:
            summary = summary[:80].rstrip()
        if summary != " ".join(words):
            summary += "..."
        self.string = f"simulated: {summary}" if summary else "simulated"
        self.nodes = 0

    def pick(self, path: str, n: int) -> int:
        """A number in ``0..n-1`` fixed by the text and the value's path."""
        digest = hashlib.sha256(f"{self.text}\0{path}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % n

    def resolve(self, ref: str) -> Mapping[str, Any]:
        if ref == "#":
            return self.root
        parts = ref.removeprefix("#/").split("/")
        node: Any = self.root
        for part in parts:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                raise ValueError(f"unresolvable $ref {ref!r}")
            node = node[part]
        if not isinstance(node, Mapping):
            raise ValueError(f"$ref {ref!r} does not name a schema")
        return node

    def build(self, schema: Any, path: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise SchemaTooLargeError("the schema has no finite instance")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise SchemaTooLargeError(f"the schema's instances have over {MAX_NODES} values")
        if schema is True or not isinstance(schema, Mapping):
            return self.string
        ref = schema.get("$ref")
        if isinstance(ref, str):  # siblings of a $ref (a description, a default) add nothing
            return self.build(self.resolve(ref), path, depth + 1)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            return self.build(self.merge(schema, all_of), path, depth + 1)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self.pick(path, len(enum))]
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                return self.build(self.branch(branches, depth), path, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            real = [k for k in kind if k != "null"]
            kind = "null" if not real or (depth > SHALLOW_DEPTH and "null" in kind) else real[0]
        if kind == "object" or (kind is None and "properties" in schema):
            return self.object(schema, path, depth)
        if kind == "array" or (kind is None and ("items" in schema or "prefixItems" in schema)):
            return self.array(schema, path, depth)
        if kind == "integer":
            return self.integer(schema, path)
        if kind == "number":
            return self.number(schema, path)
        if kind == "boolean":
            return self.pick(path, 2) == 1
        if kind == "null":
            return None
        return self.string_of(schema)

    def merge(self, schema: Mapping[str, Any], parts: list[Any]) -> dict[str, Any]:
        """``allOf``: one schema with every part's keywords (properties and required joined)."""
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in parts:
            part = (
                self.resolve(part["$ref"]) if isinstance(part, Mapping) and "$ref" in part else part
            )
            if not isinstance(part, Mapping):
                continue
            for key, value in part.items():
                if key == "properties" and isinstance(value, Mapping):
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required" and isinstance(value, list):
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return merged

    def branch(self, branches: list[Any], depth: int) -> Any:
        """Deep down, a ``null`` branch when there is one (it ends recursion); else the first
        branch that is not ``null`` (an optional field gets a value)."""

        def is_null(b: Any) -> bool:
            return isinstance(b, Mapping) and b.get("type") == "null"

        if depth > SHALLOW_DEPTH:
            nulls = [b for b in branches if is_null(b)]
            if nulls:
                return nulls[0]
        return next((b for b in branches if not is_null(b)), branches[0])

    def object(self, schema: Mapping[str, Any], path: str, depth: int) -> dict[str, Any]:
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        required = schema.get("required")
        required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
        names = list(props) if depth <= SHALLOW_DEPTH else [p for p in props if p in required]
        names += [r for r in required if r not in names]
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for name in names:
            # a required name with no property schema follows additionalProperties
            sub = props.get(name, extra if isinstance(extra, Mapping) else True)
            out[name] = self.build(sub, f"{path}.{name}", depth + 1)
        return out

    def array(self, schema: Mapping[str, Any], path: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        low = _count(schema.get("minItems")) or 0
        high = _count(schema.get("maxItems"))
        # near the top, one item (and every prefixItems one); deep down, only what is required
        shallow = depth <= SHALLOW_DEPTH
        want = max(low, len(prefix), 1) if shallow else low
        if high is not None:
            want = min(want, high)
        if want > MAX_NODES:
            raise SchemaTooLargeError(f"the schema asks for over {MAX_NODES} items")
        items = schema.get("items", True)
        out = []
        for i in range(want):
            sub = prefix[i] if i < len(prefix) else items
            out.append(self.build(sub, f"{path}[{i}]", depth + 1))
        return out

    def integer(self, schema: Mapping[str, Any], path: str) -> int:
        low, high = _bounds(schema)
        lo = None if low is None else (math.floor(low[0]) + 1 if low[1] else math.ceil(low[0]))
        hi = None if high is None else (math.ceil(high[0]) - 1 if high[1] else math.floor(high[0]))
        multiple = schema.get("multipleOf")
        step = 1
        if _is_number(multiple) and float(multiple).is_integer() and multiple >= 1:
            step = int(multiple)
        if lo is None and hi is None:
            value = self.pick(path, 100)
        elif hi is None:
            assert lo is not None
            value = lo + self.pick(path, 100)
        elif lo is None:
            value = hi - self.pick(path, 100)
        else:
            value = lo + self.pick(path, hi - lo + 1) if hi >= lo else lo
        if step > 1:  # the nearest multiple at or above, else at or below
            up = math.ceil(value / step) * step
            down = math.floor(value / step) * step
            value = up if hi is None or up <= hi else down
        return value

    def number(self, schema: Mapping[str, Any], path: str) -> float | int:
        step = schema.get("multipleOf")
        if _is_number(step) and float(step).is_integer():
            return self.integer(schema, path)
        low, high = _bounds(schema)
        frac = self.pick(path, 1000) / 1000
        if low is None and high is None:
            return round(frac * 100, 2)
        if high is None:
            assert low is not None
            return round(low[0] + 1 + frac, 6)
        if low is None:
            return round(high[0] - 1 - frac, 6)
        a, b = low[0], high[0]
        if a == b:
            return a
        # a point in the middle half: strictly inside, whether the bounds are exclusive or not
        value = a + (b - a) * (0.25 + 0.5 * frac)
        short = round(value, 6)
        return short if a < short < b else value

    def string_of(self, schema: Mapping[str, Any]) -> str:
        fmt = schema.get("format")
        if fmt == "uuid":
            h = hashlib.sha256(self.text.encode()).hexdigest()
            value = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"
        else:
            value = _FORMATS.get(fmt, self.string) if isinstance(fmt, str) else self.string
        low = _count(schema.get("minLength")) or 0
        high = _count(schema.get("maxLength"))
        if low > MAX_NODES:
            raise SchemaTooLargeError(f"the schema asks for over {MAX_NODES} characters")
        value = value.ljust(low, ".")
        return value[:high] if high is not None else value


def _is_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: object) -> int | None:
    """A length bound (``minLength``, ``maxItems``...), or None when absent or not one."""
    return int(v) if _is_number(v) and v >= 0 else None


def _bounds(
    schema: Mapping[str, Any],
) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None]:
    """The tightest lower and upper bounds, each ``(value, exclusive)``."""

    def tightest(inclusive: str, exclusive: str, lower: bool) -> tuple[float, bool] | None:
        found: list[tuple[float, bool]] = []
        inc, ex = schema.get(inclusive), schema.get(exclusive)
        if _is_number(inc):
            found.append((inc, False))
        if _is_number(ex):
            found.append((ex, True))
        elif ex is True and _is_number(inc):  # draft 4's boolean form
            found = [(inc, True)]
        if not found:
            return None
        # the tightest wins; at a tie, the exclusive one
        key = (lambda b: (b[0], b[1])) if lower else (lambda b: (-b[0], b[1]))
        return max(found, key=key)

    return (
        tightest("minimum", "exclusiveMinimum", True),
        tightest("maximum", "exclusiveMaximum", False),
    )
