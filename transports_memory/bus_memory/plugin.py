"""The `memory` plugin: registers the four memory transports by name."""

from __future__ import annotations

from typing import Any

from bus_core import hookimpl
from bus_memory.transports import (
    MemoryEventTransport,
    MemoryResultTransport,
    MemoryRpcTransport,
    MemorySchemaTransport,
)

_BROKER = {"type": "string", "minLength": 1,
           "description": "clients naming the same broker in one process talk to each other"}
_BATCH = {"type": "integer", "minimum": 1}


def _options(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False,
            "properties": {"broker": _BROKER, **properties}}


@hookimpl
def bus_register_transports(register: Any) -> None:
    register("rpc", "memory", MemoryRpcTransport, _options(batch_size=_BATCH))
    register("result", "memory", MemoryResultTransport,
             _options(result_ttl={"type": "number", "exclusiveMinimum": 0},
                      max_unclaimed_results={"type": "integer", "minimum": 1},
                      max_unclaimed_bytes={"type": "integer", "minimum": 1024}))
    register("event", "memory", MemoryEventTransport,
             _options(batch_size=_BATCH,
                      max_stream_length={"type": ["integer", "null"], "minimum": 1}))
    register("schema", "memory", MemorySchemaTransport, _options())
