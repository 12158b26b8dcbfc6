"""The `sqlite` plugin: registers the four SQLite transports and their options' schemas.

The schemas are checked when the config is loaded, so `path: 5` or `poll_intervall: 1` is
refused with the path of the mistake, before anything connects.
"""

from __future__ import annotations

from typing import Any

from bus_core import hookimpl
from bus_sqlite.transports import (
    SqliteEventTransport,
    SqliteResultTransport,
    SqliteRpcTransport,
    SqliteSchemaTransport,
)

_COMMON: dict[str, Any] = {
    "path": {"type": "string", "minLength": 1,
             "description": "the database file every process of the bus opens"},
    "poll_interval": {"type": "number", "exclusiveMinimum": 0,
                      "description": "seconds between two looks for new rows"},
}


def _options(**extra: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["path"],
            "properties": {**_COMMON, **extra}}


@hookimpl
def bus_register_transports(register: Any) -> None:
    """Called once at start-up: name each transport class and the options it takes."""
    register("rpc", "sqlite", SqliteRpcTransport, _options())
    register("result", "sqlite", SqliteResultTransport,
             _options(result_ttl={"type": "number", "exclusiveMinimum": 0}))
    register("event", "sqlite", SqliteEventTransport,
             _options(claim_idle={"type": "number", "exclusiveMinimum": 0}))
    register("schema", "sqlite", SqliteSchemaTransport, _options())
