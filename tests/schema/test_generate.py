"""Hints -> JSON Schema: every type of the mapping survives the trip value -> wire -> JSON ->
validated -> cast back; wrong values are refused by both validators; per-API documents have
Lightbus's shape and are valid draft-07; docstrings fill `description`."""

from __future__ import annotations

import dataclasses
import decimal
import json
import typing
from typing import Any

import jsonschema
import pytest
from bus_schema import CompiledSchema, api_schema, type_schema
from bus_schema.generate import DRAFT, describe

from bus_core import Api, Event, Parameter
from bus_core.values import from_wire, to_wire
from tests.apis import AuthApi, TypesApi
from tests.schema.typed import CASES, Case, Celsius, Level, Money, Order, Point, ShopApi


def wire(value: Any) -> Any:
    """`value` as a peer receives it: through to_wire and a JSON round trip."""
    return json.loads(json.dumps(to_wire(value)))


_compiled: dict[str, tuple[CompiledSchema, jsonschema.Draft7Validator]] = {}


def verdicts(schema: dict[str, Any], value: Any) -> tuple[bool, bool]:
    """(the plugin's compiled verdict, the draft-07 reference verdict)."""
    key = json.dumps(schema, sort_keys=True)
    if key not in _compiled:
        _compiled[key] = CompiledSchema(schema), jsonschema.Draft7Validator(schema)
    compiled, reference = _compiled[key]
    return compiled.is_valid(value), reference.is_valid(value)


def echo_api(hint: Any) -> type[Api]:
    """An API whose one RPC takes and returns `hint`, and whose one event carries it."""

    def echo(self: Any, value: Any) -> Any:
        return value

    echo.__annotations__ = {"value": hint, "return": hint}
    meta = type("Meta", (), {"name": "gen.echo"})
    return type("EchoApi", (Api,), {
        "Meta": meta, "echo": echo, "__module__": __name__,
        "sent": Event(parameters=[Parameter("value", hint)]),
    })


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_values_of_every_type_travel_and_validate(case: Case) -> None:
    schema = type_schema(case.hint)
    jsonschema.Draft7Validator.check_schema(schema)
    for value in case.good:
        sent = wire(value)
        assert verdicts(schema, sent) == (True, True), (value, sent, schema)
        assert from_wire(sent, case.hint) == value
    for bad in case.bad:
        assert verdicts(schema, bad) == (False, False), (bad, schema)


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_rpc_and_event_documents_of_every_type_accept_and_refuse_alike(case: Case) -> None:
    document = api_schema(echo_api(case.hint))
    rpc = document["rpcs"]["echo"]
    event = document["events"]["sent"]
    for part in (rpc["parameters"], rpc["response"], event["parameters"]):
        jsonschema.Draft7Validator.check_schema(part)
        assert part["$schema"] == DRAFT
    for value in case.good:
        sent = wire(value)
        assert verdicts(rpc["parameters"], {"value": sent}) == (True, True), sent
        assert verdicts(event["parameters"], {"value": sent}) == (True, True), sent
        assert verdicts(rpc["response"], sent) == (True, True), sent
    for bad in case.bad:
        assert verdicts(rpc["parameters"], {"value": bad}) == (False, False), bad
        assert verdicts(event["parameters"], {"value": bad}) == (False, False), bad
        assert verdicts(rpc["response"], bad) == (False, False), bad
    if case.good:
        assert verdicts(rpc["parameters"], {}) == (False, False)  # value is required


# -- the mapping, entry by entry (as in the Lightbus reference, section 5.4) ------------------


def test_scalar_mapping() -> None:
    import datetime as dt
    import uuid

    assert type_schema(str) == {"type": "string"}
    assert type_schema(int) == {"type": "integer"}
    assert type_schema(float) == {"type": "number"}
    assert type_schema(bool) == {"type": "boolean"}
    assert type_schema(None) == type_schema(type(None)) == {"type": "null"}
    assert type_schema(bytes)["type"] == "string"
    assert type_schema(complex) == {"type": "string"}
    assert type_schema(uuid.UUID)["type"] == "string"
    assert type_schema(decimal.Decimal)["type"] == "string"
    assert "pattern" in type_schema(decimal.Decimal)
    assert type_schema(dt.datetime) == {"type": "string", "format": "date-time"}
    assert type_schema(dt.date) == {"type": "string", "format": "date"}
    assert type_schema(dt.time) == {"type": "string", "format": "time"}
    assert type_schema(Any) == type_schema(object) == {}
    assert type_schema(dict) == {"type": "object"}


def test_container_mapping() -> None:
    assert type_schema(list[int]) == {"type": "array", "items": {"type": "integer"}}
    assert type_schema(set[str]) == {"type": "array", "items": {"type": "string"}}
    assert type_schema(tuple[int, str]) == {
        "type": "array", "items": [{"type": "integer"}, {"type": "string"}],
        "minItems": 2, "maxItems": 2, "additionalItems": False}
    assert type_schema(tuple[int, ...]) == {"type": "array", "items": {"type": "integer"}}
    assert type_schema(typing.Mapping[str, int]) == {
        "type": "object", "additionalProperties": {"type": "integer"}}
    assert type_schema(dict[str, list[str]]) == {
        "type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}


def test_bare_typing_tuple_takes_any_length() -> None:
    schema = type_schema(typing.Tuple)  # noqa: UP006
    assert verdicts(schema, [1, "a", None]) == (True, True)
    assert verdicts(schema, []) == (True, True)
    assert verdicts(schema, "x") == (False, False)


def test_union_optional_literal_enum_mapping() -> None:
    assert type_schema(int | None) == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert type_schema(typing.Union[int, str, int]) == {  # noqa: UP007
        "anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert type_schema(typing.Literal["a", "b"]) == {"type": "string", "enum": ["a", "b"]}
    assert type_schema(typing.Literal["a", 1]) == {"enum": ["a", 1]}
    assert type_schema(Level) == {"type": "integer", "enum": [1, 2]}


def test_records_have_title_properties_required_and_no_extra_properties() -> None:
    money = type_schema(Money)
    assert money == {
        "type": "object", "title": "Money", "additionalProperties": False,
        "properties": {"amount": type_schema(decimal.Decimal),
                       "currency": {"type": "string", "default": "EUR"}},
        "required": ["amount"]}
    point = type_schema(Point)
    assert point["title"] == "Point" and point["required"] == ["x"]
    assert point["properties"]["y"] == {"type": "number", "default": 0.0}
    order = type_schema(Order)
    assert order["required"] == ["id", "lines", "placed"]
    assert order["properties"]["lines"]["items"] == money
    assert order["properties"]["level"] == {"type": "integer", "enum": [1, 2], "default": 1}
    assert order["properties"]["where"] == {"anyOf": [point, {"type": "null"}],
                                            "default": None}
    assert "default" not in order["properties"]["tags"]  # a factory is not a value


def test_to_bus_types_take_the_schema_of_their_return_annotation() -> None:
    assert type_schema(Celsius) == {"type": "number"}

    class Tagged:
        def __to_bus__(self) -> dict[str, list[int]]:
            return {}

    assert type_schema(Tagged) == type_schema(dict[str, list[int]])


@dataclasses.dataclass
class Node:
    value: int
    children: list[Node]


def test_recursive_records_stop_instead_of_looping() -> None:
    schema = type_schema(Node)
    assert schema["properties"]["children"] == {"type": "array", "items": {}}
    assert verdicts(schema, wire(Node(1, [Node(2, [])]))) == (True, True)


# -- parameters: defaults, **kwargs -----------------------------------------------------------


class DefaultsApi(Api):
    class Meta:
        name = "gen.defaults"

    def plain(self, a: int, b: str = "x", c: int | None = None, d: int = None,  # type: ignore[assignment]  # noqa: RUF013
              e: Any = None, f: Level = Level.HIGH) -> None: ...

    def extra(self, a: int, **rest: Any) -> None: ...

    def nothing(self) -> int:
        return 1


def test_defaults_become_default_and_a_none_default_allows_null() -> None:
    params = api_schema(DefaultsApi)["rpcs"]["plain"]["parameters"]
    props = params["properties"]
    assert params["required"] == ["a"]
    assert props["b"] == {"type": "string", "default": "x"}
    assert props["c"] == {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}
    assert props["d"] == {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}
    assert props["f"] == {"type": "integer", "enum": [1, 2], "default": 2}
    for value in ({"a": 1}, {"a": 1, "c": None, "d": None, "e": None},
                  {"a": 1, "b": "y", "c": 3, "d": 4, "e": [1], "f": 1}):
        assert verdicts(params, value) == (True, True), value
    for value in ({"a": 1, "b": None}, {"a": 1, "f": 3}, {"a": None}, {"a": 1, "z": 1}):
        assert verdicts(params, value) == (False, False), value


def test_kwargs_allow_additional_properties_and_no_kwargs_forbid_them() -> None:
    document = api_schema(DefaultsApi)
    extra = document["rpcs"]["extra"]["parameters"]
    assert extra["additionalProperties"] is True
    assert verdicts(extra, {"a": 1, "anything": [1, 2]}) == (True, True)
    assert verdicts(extra, {"anything": 1}) == (False, False)
    nothing = document["rpcs"]["nothing"]["parameters"]
    assert nothing["additionalProperties"] is False and "required" not in nothing
    assert verdicts(nothing, {}) == (True, True)
    assert verdicts(nothing, {"a": 1}) == (False, False)


# -- the per-API document ------------------------------------------------------------------


@pytest.mark.parametrize("api", [AuthApi, TypesApi, ShopApi, DefaultsApi],
                         ids=lambda a: a.definition.name)
def test_documents_have_lightbus_shape_and_are_valid_draft_07(api: type[Api]) -> None:
    document = api_schema(api)
    assert api_schema(api()) == document  # from the class or an instance
    assert set(document) == {"rpcs", "events"}
    name = api.definition.name
    assert set(document["rpcs"]) == set(api.definition.rpcs)
    assert set(document["events"]) == set(api.definition.events)
    for rpc_name, rpc in document["rpcs"].items():
        assert set(rpc) == {"parameters", "response"}
        assert rpc["parameters"]["title"] == f"RPC {name}.{rpc_name}() parameters"
        assert rpc["response"]["title"] == f"RPC {name}.{rpc_name}() response"
        assert rpc["parameters"]["type"] == "object"
        for part in rpc.values():
            assert part["$schema"] == "http://json-schema.org/draft-07/schema#"
            jsonschema.Draft7Validator.check_schema(part)
    for event_name, event in document["events"].items():
        assert set(event) == {"parameters"}
        assert event["parameters"]["title"] == f"Event {name}.{event_name} parameters"
        assert event["parameters"]["$schema"] == DRAFT
        assert event["parameters"]["additionalProperties"] is False
        jsonschema.Draft7Validator.check_schema(event["parameters"])
    json.dumps(document)  # it travels as JSON


def test_auth_document_matches_the_lightbus_reference() -> None:
    document = api_schema(AuthApi)
    assert document["rpcs"]["check_password"] == {
        "parameters": {
            "$schema": DRAFT, "title": "RPC auth.check_password() parameters",
            "type": "object", "additionalProperties": False,
            "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
            "required": ["username", "password"],
        },
        "response": {"$schema": DRAFT, "title": "RPC auth.check_password() response",
                     "type": "boolean"},
    }
    # Event parameters declared as bare names have the schema {}.
    assert document["events"]["user_registered"]["parameters"]["properties"] == {
        "username": {}, "email": {}}
    assert document["events"]["user_deleted"]["parameters"]["properties"]["hard"] == {
        "type": "boolean", "default": False}


def test_a_record_returned_by_an_rpc_keeps_the_rpc_response_title() -> None:
    response = api_schema(TypesApi)["rpcs"]["address_of"]["response"]
    assert response["title"] == "RPC my_company.types.address_of() response"
    assert response["properties"] == {"street": {"type": "string"},
                                      "number": {"type": "integer"}}
    assert response["additionalProperties"] is False


def test_event_declared_by_a_dataclass_has_its_fields_as_parameters() -> None:
    params = api_schema(TypesApi)["events"]["order_placed"]["parameters"]
    assert params["title"] == "Event my_company.types.order_placed parameters"
    assert params["required"] == ["order_id", "total"]
    assert params["properties"]["note"] == {"type": "string", "default": ""}


# -- docstrings ------------------------------------------------------------------------------


class DocumentedApi(Api):
    class Meta:
        name = "gen.docs"

    def sphinx(self, username: str, password: str, attempts: int = 1) -> bool:
        """Check a password.

        Longer explanation that is not the summary.

        :param username: who logs in
        :param str password: their password,
            possibly long
        :param attempts: how many tries
        :returns: whether it matched
        """
        return True

    def google(self, query: str, limit: int = 10, **filters: Any) -> list[str]:
        """Search the catalogue
        for matching items.

        Args:
            query (str): what to look for
            limit: at most this many
                results
            **filters: field=value filters

        Returns:
            the matching names
        """
        return []

    def cramped(self, item: str) -> None:
        """Remove an item.
        Args:
            item: the item to remove
        """

    def params_only(self, item: str) -> None:
        """:param item: the item"""

    def undocumented(self, item: str) -> None:
        pass


def test_docstrings_fill_descriptions() -> None:
    rpcs = api_schema(DocumentedApi)["rpcs"]
    sphinx = rpcs["sphinx"]["parameters"]
    assert sphinx["description"] == "Check a password."
    assert sphinx["properties"]["username"]["description"] == "who logs in"
    assert sphinx["properties"]["password"]["description"] == "their password, possibly long"
    assert sphinx["properties"]["attempts"] == {"type": "integer", "default": 1,
                                                "description": "how many tries"}
    google = rpcs["google"]["parameters"]
    assert google["description"] == "Search the catalogue for matching items."
    assert google["properties"]["query"]["description"] == "what to look for"
    assert google["properties"]["limit"]["description"] == "at most this many results"
    cramped = rpcs["cramped"]["parameters"]
    assert cramped["description"] == "Remove an item."
    assert cramped["properties"]["item"]["description"] == "the item to remove"
    only = rpcs["params_only"]["parameters"]
    assert "description" not in only
    assert only["properties"]["item"]["description"] == "the item"
    bare = rpcs["undocumented"]["parameters"]
    assert "description" not in bare and "description" not in bare["properties"]["item"]
    for rpc in rpcs.values():
        jsonschema.Draft7Validator.check_schema(rpc["parameters"])


def test_describe_reads_both_styles() -> None:
    assert describe(ShopApi.price) == ("The price of `quantity` items.",
                                       {"sku": "the stock keeping unit", "quantity": "how many"})
    assert describe(ShopApi.total) == ("Echo an amount.", {
        "amount": "an exact amount", "money": "the same, with a currency"})
    assert describe(None) == (None, {})


def test_annotated_strings_become_descriptions() -> None:
    assert type_schema(typing.Annotated[int, "how many"]) == {
        "type": "integer", "description": "how many"}


# -- kernel casts found on the way (bus_core.values) --------------------------------------


def test_a_bare_typing_tuple_casts_back_with_its_items() -> None:
    assert from_wire([1, "a"], typing.Tuple) == (1, "a")  # noqa: UP006


def test_int_keyed_dicts_round_trip() -> None:
    value = {1: "a", 2: "b"}
    assert verdicts(type_schema(dict[int, str]), wire(value)) == (True, True)
    assert from_wire(wire(value), dict[int, str]) == value
