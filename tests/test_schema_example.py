"""examples/schema/demo.py runs and prints what docs/reference/schema.md says it prints: a
valid call answered, an invalid one refused before it was sent, and the schema."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import ROOT, bus_command, run_python

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "schema"
REFUSED = ("[shop] refused before sending: SchemaValidationError: orders.place_order() "
           "parameter 'lines'[0]['quantity']: 'two' does not match the schema: 'two' is not "
           "of type 'integer'")
# bus.py reads $BUS_CONFIG first: run the example with its own bus.yaml
ENV = {k: v for k, v in os.environ.items() if k not in ("BUS_CONFIG", "BUS_MODULE")}


def test_demo_validates_calls_against_the_published_schema_and_prints_it():
    result = run_python(str(EXAMPLE / "demo.py"), env=ENV)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ("[shop] orders.place_order(customer='ada', lines=[2 x tea]) -> "
                        "{'order_id': 1001, 'total_cents': 900}")
    assert lines[1] == REFUSED
    assert lines[2] == "[orders] calls that reached place_order: 1"  # the bad call never left
    assert lines[3] == "[shop] the schema it checks against:"
    schema = json.loads("\n".join(lines[4:]))["orders"]
    assert sorted(schema) == ["events", "rpcs"]
    place_order = schema["rpcs"]["place_order"]
    parameters = place_order["parameters"]
    assert parameters["title"] == "RPC orders.place_order() parameters"
    assert parameters["description"] == "Place an order and return its receipt."
    assert parameters["required"] == ["customer", "lines"]
    assert parameters["properties"]["shipping"] == {
        "default": "standard", "description": "how fast to send it",
        "enum": ["standard", "express"], "type": "string"}
    assert place_order["response"]["required"] == ["order_id", "total_cents"]
    event = schema["events"]["order_placed"]["parameters"]
    assert event["properties"]["total_cents"] == {"description": "Order total in cents",
                                                  "type": "integer"}


def test_demo_out_writes_what_bus_schema_dump_writes(tmp_path):
    result = run_python(str(EXAMPLE / "demo.py"), "--out", str(tmp_path / "demo"), env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == REFUSED
    dumped = run_python(*bus_command()[1:], "schema", "dump", "--out",
                        str(tmp_path / "cli") + "/", cwd=EXAMPLE, env=ENV)
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stdout == f"wrote 1 schema file(s) to {tmp_path / 'cli'}\n"
    assert (tmp_path / "demo" / "orders.json").read_text() == \
        (tmp_path / "cli" / "orders.json").read_text()


def test_the_recorded_schema_is_what_bus_schema_dump_writes_now():
    """examples/schema/schemas/ is the recorded copy the how-to commits: keep it current."""
    dumped = run_python(*bus_command()[1:], "schema", "dump", cwd=EXAMPLE, env=ENV)
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stdout == (EXAMPLE / "schemas" / "orders.json").read_text()
