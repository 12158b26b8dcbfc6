"""A shared schema is written by any service: validating against it never fetches a `$ref`
outside it (no request to any URL, the host's own network included); values checked
against such a schema are refused, saying why, and schemas that refer only inside
themselves validate as before."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bus_schema.validation import CompiledSchema, SchemaValidationError

from tests.helpers import recording_http_server


@pytest.fixture
def listening() -> Iterator[tuple[str, list[str]]]:
    with recording_http_server() as server:
        yield server


@pytest.mark.parametrize("shape", ["top", "nested", "in_defs"])
def test_a_ref_outside_the_schema_is_never_fetched(listening: tuple[str, list[str]],
                                                   shape: str) -> None:
    url, requests = listening
    remote = {"$ref": f"{url}/schema.json"}
    schema = {"top": remote,
              "nested": {"type": "object", "properties": {"name": remote}},
              "in_defs": {"type": "object", "properties": {"name": {"$ref": "#/$defs/n"}},
                          "$defs": {"n": remote}}}[shape]
    compiled = CompiledSchema(schema)
    value = "x" if shape == "top" else {"name": "x"}
    assert not compiled.is_valid(value)
    with pytest.raises(SchemaValidationError, match="outside itself, which Bus never fetches"):
        compiled.check(value, "shop.order_placed", parameters=True)
    assert requests == []


def test_refs_inside_the_schema_still_validate() -> None:
    schema = {"type": "object", "properties": {"when": {"$ref": "#/$defs/stamp"}},
              "$defs": {"stamp": {"type": "string"}}, "required": ["when"]}
    compiled = CompiledSchema(schema)
    compiled.check({"when": "now"}, "shop.order_placed", parameters=True)
    with pytest.raises(SchemaValidationError):
        compiled.check({"when": 3}, "shop.order_placed", parameters=True)
