"""Forms generated from API schemas: each parameter type gets the input a user expects, and
the server-side check answers with the schema's messages."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from bus_schema.generate import api_schema
from bus_web.forms import fields_for, validation_errors

from bus_core import Api
from tests.apis import Address, Colour
from tests.helpers import recording_http_server


@dataclass
class Parcel:
    to: Address
    weight: float


class FormsApi(Api):
    class Meta:
        name = "forms"

    def send(self, parcel: Parcel, colour: Colour, when: dt.datetime, day: dt.date,
             tags: list[str], count: int = 1, express: bool = False,
             note: str | None = None) -> None:
        """Send a parcel."""


def schema() -> dict:
    return api_schema(FormsApi)["rpcs"]["send"]["parameters"]


def test_each_type_gets_its_input() -> None:
    fields = {f.path: f for f in fields_for(schema())}
    assert [f.path for f in fields.values()][:5] == ["parcel", "colour", "when", "day", "tags"]
    assert all(fields[p].required for p in ("parcel", "colour", "when", "day", "tags"))
    parcel = fields["parcel"]
    assert parcel.kind == "object"
    children = {c.path: c for c in parcel.children}
    assert children["parcel.weight"].kind == "number"
    assert children["parcel.to"].kind == "object"
    assert {c.path: c.kind for c in children["parcel.to"].children} == {
        "parcel.to.street": "text", "parcel.to.number": "integer"}
    assert fields["colour"].kind == "enum" and fields["colour"].options == ['"red"', '"blue"']
    assert fields["when"].kind == "datetime" and fields["day"].kind == "date"
    assert fields["tags"].kind == "json" and "array of string" in fields["tags"].hint
    assert fields["count"].kind == "integer" and not fields["count"].required
    assert fields["count"].default == "1" and fields["count"].attributes["step"] == 1
    assert fields["express"].kind == "boolean"
    assert fields["note"].kind == "text"  # str | None: a text field left empty for null


def test_the_schema_judges_a_submit() -> None:
    good = {"parcel": {"to": {"street": "Main", "number": 3}, "weight": 1.5},
            "colour": "red", "when": "2026-12-07T10:00:00Z", "day": "2026-12-07",
            "tags": ["a"]}
    assert validation_errors(schema(), good) == []
    bad = {**good, "colour": "green", "tags": ["a", 2],
           "parcel": {"to": {"street": "Main"}, "weight": 1.5}}
    errors = {e["path"]: e["message"] for e in validation_errors(schema(), bad)}
    assert errors["colour"] == "'green' is not one of ['red', 'blue']"
    assert errors["tags.1"] == "2 is not of type 'string'"
    assert errors["parcel.to"] == "'number' is a required property"
    missing = validation_errors(schema(), {})
    assert {e["path"] for e in missing} == {"(arguments)"}


def test_a_remote_ref_is_never_fetched() -> None:
    """A schema from the shared schema (any service may write it) naming a `$ref` URL must
    not make the console fetch it (a request from the console's host to anywhere): the
    check says the reference cannot be resolved, and nothing is requested."""
    with recording_http_server(b'{"enum": ["internal-secret"]}') as (base, requested):
        schema = {"type": "object", "properties": {"item": {"$ref": f"{base}/schema.json"}}}
        errors = validation_errors(schema, {"item": "x"})
    assert requested == []
    (error,) = errors
    assert "cannot be resolved" in error["message"] and "internal-secret" not in str(errors)


def test_a_malformed_schema_is_said_not_a_crash() -> None:
    """The shared schema is data from elsewhere: a malformed member schema still draws a
    page (fields where it can) and the check answers that the schema is invalid."""
    for schema in ({"required": 5, "properties": {"a": {}}}, {"properties": [1]},
                   {"properties": {"a": {"anyOf": [{"type": "null"}, {"type": "null"}]}}},
                   {"required": [[1]], "properties": {}}):
        assert isinstance(fields_for(schema), list)
    for schema in ({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}},
                   {"type": 5}):
        (error,) = validation_errors(schema, {"a": "x"})
        assert error["message"].startswith("the schema itself is invalid"), error
