"""Forms generated from API schemas: each parameter type gets the input a user expects, and
the server-side check answers with the schema's messages."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from bus_schema.generate import api_schema
from bus_web.forms import fields_for, validation_errors

from bus_core import Api
from tests.apis import Address, Colour


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
