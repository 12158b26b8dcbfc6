"""The compiled fast path against the reference: for every generated schema (and hand-written
Lightbus-style ones) and a pool of valid and invalid values, fastjsonschema's verdict, the
plugin's `is_valid` and `jsonschema.Draft7Validator(schema).is_valid` agree."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from bus_schema import CompiledSchema, api_schema, type_schema
from bus_schema.generate import DRAFT

from tests.apis import AuthApi, TypesApi
from tests.schema.test_generate import DefaultsApi, DocumentedApi, echo_api, wire
from tests.schema.typed import CASES, ShopApi

# Hand-written, the way a Lightbus 1.x peer publishes them (section 5.4 of the reference).
LIGHTBUS_STYLE: list[dict[str, Any]] = [
    {"$schema": DRAFT, "title": "RPC lb.pair() parameters", "type": "object",
     "additionalProperties": False,
     "properties": {"pair": {"type": "array", "maxItems": 2, "minItems": 2,
                             "items": [{"type": "integer"}, {"type": "string"}]},
                    "amount": {"type": "string", "pattern": r"^-?\d+(\.\d+)?$"},
                    "when": {"type": "string", "format": "date-time"},
                    "colour": {"type": "string", "enum": ["red", "blue"]},
                    "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}],
                              "default": None}},
     "required": ["pair", "amount"]},
    {"$schema": DRAFT, "title": "RPC lb.kw() parameters", "type": "object",
     "additionalProperties": True, "properties": {"a": {"type": "number"}}},
    {"$schema": DRAFT, "title": "Event lb.ev parameters", "type": "object",
     "additionalProperties": False, "properties": {"username": {}, "email": {}},
     "required": ["username", "email"]},
    {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "boolean"}}},
    {"type": "array", "items": {"type": "object", "title": "Point", "additionalProperties": False,
                                "properties": {"x": {"type": "number"}}, "required": ["x"]}},
    {"enum": [0, 1, "a", None]},
    {"enum": [False, True]},
    {"enum": [1.0, [1], {"a": 1}]},
    {"const": 0},
    {"const": [False]},
    {"type": ["integer", "string"], "minimum": 0, "maxLength": 2},
    {"type": "number", "multipleOf": 0.5, "exclusiveMaximum": 10},
    {"anyOf": [{"type": "string", "minLength": 2}, {"type": "array", "maxItems": 1}]},
    {"type": "array", "items": [{"type": "null"}], "additionalItems": {"type": "string"}},
    {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"},
     "patternProperties": {"^n": {"type": "integer"}}},
    {"type": "array", "uniqueItems": True},
    {"not": {"type": "null"}},
    {},
]

EXTRA_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 0.0, 1.0, -0.0, 0.5, 2.5, 10, 9.5, 2**63, 1e308, "", "a", "ab",
    "abc", "1", "1.5", "1E5", "-3", "12345678-1234-5678-1234-567812345678", "red", "x",
    "2024-02-29T13:14:15", [], [None], [None, "s"], [None, 1], [1, 1], [1, True], [True, 1],
    [False], [0], [1.0], [1], [1, "a"], [{"x": 1}], [{"x": "1"}], [[]], {}, {"a": 1},
    {"a": 1.0}, {"a": True}, {"a": [True]}, {"a": [1]}, {"n1": 1}, {"n1": "1"}, {"A": 1},
    {"x": 1.0, "y": 2.0}, {"username": "u", "email": "e"}, {"username": "u"},
    {"pair": [1, "a"], "amount": "1.5"}, {"pair": [1, "a"], "amount": "1E5"},
    {"pair": [1, "a", 2], "amount": "1"}, {"pair": ["a", 1], "amount": "1"},
    {"pair": [1, "a"], "amount": "1", "colour": "green"}, {"value": None}, {"value": 1},
]


def _schemas() -> list[dict[str, Any]]:
    schemas: list[dict[str, Any]] = list(LIGHTBUS_STYLE)
    for case in CASES:
        schemas.append(type_schema(case.hint))
        document = api_schema(echo_api(case.hint))
        schemas.append(document["rpcs"]["echo"]["parameters"])
    for api in (AuthApi, TypesApi, ShopApi, DefaultsApi, DocumentedApi):
        document = api_schema(api)
        for rpc in document["rpcs"].values():
            schemas += [rpc["parameters"], rpc["response"]]
        schemas += [event["parameters"] for event in document["events"].values()]
    unique = {json.dumps(s, sort_keys=True): s for s in schemas}
    return list(unique.values())


def _values() -> list[Any]:
    values: list[Any] = list(EXTRA_VALUES)
    for case in CASES:
        for good in case.good:
            values += [wire(good), {"value": wire(good)}]
        for bad in case.bad:
            values += [bad, {"value": bad}]
    unique = {json.dumps(v, sort_keys=True): v for v in values}
    return list(unique.values())


SCHEMAS = _schemas()
VALUES = _values()


def _fast_verdict(compiled: CompiledSchema, value: Any) -> bool:
    try:
        compiled._fast(value)
    except Exception:
        return False
    return True


def _involves(schema: Any, keyword: str) -> bool:
    return keyword in json.dumps(schema)


@pytest.mark.parametrize("index", range(0, len(SCHEMAS), 10))
def test_fast_path_and_reference_agree(index: int) -> None:
    """`is_valid` always gives the reference's verdict; the compiled function alone never
    accepts what the reference refuses (is_valid trusts its "valid" without asking), and is
    stricter only where fastjsonschema decodes `contentEncoding: base64` (the reference then
    decides, as it should)."""
    wrong, unsound, stricter = [], [], []
    verdicts = {True: 0, False: 0}
    for schema in SCHEMAS[index:index + 10]:
        jsonschema.Draft7Validator.check_schema(schema)
        compiled = CompiledSchema(schema)
        assert compiled._fast is not None, f"no fast path for {schema}"
        reference = jsonschema.Draft7Validator(schema)
        for value in VALUES:
            expected = reference.is_valid(value)
            verdicts[expected] += 1
            fast = _fast_verdict(compiled, value)
            if compiled.is_valid(value) != expected:
                wrong.append((schema.get("title", schema), value, expected))
            if fast and not expected:
                unsound.append((schema.get("title", schema), value))
            if expected and not fast and not _involves(schema, "contentEncoding"):
                stricter.append((schema.get("title", schema), value))
    assert not wrong, "\n".join(map(repr, wrong[:20]))
    assert not unsound, "\n".join(map(repr, unsound[:20]))
    assert not stricter, "\n".join(map(repr, stricter[:20]))
    assert verdicts[True] and verdicts[False], verdicts


def test_the_table_is_large() -> None:
    assert len(SCHEMAS) >= 100 and len(VALUES) >= 200
    assert len(SCHEMAS) * len(VALUES) >= 20_000


def test_fast_path_never_changes_the_value_it_checks() -> None:
    schema = api_schema(DefaultsApi)["rpcs"]["plain"]["parameters"]
    value = {"a": 1}
    assert CompiledSchema(schema).is_valid(value)
    assert value == {"a": 1}  # no defaults filled in


def test_a_schema_the_fast_path_cannot_compile_falls_back_to_the_reference() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}}
    compiled = CompiledSchema(schema)
    assert compiled._fast is None
    assert compiled.is_valid({"b": 1})
