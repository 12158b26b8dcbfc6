"""The `redis` plugin: registers the four Redis transports by name."""

from __future__ import annotations

from typing import Any

from bus_core import hookimpl
from bus_redis import event, result, rpc, schema


@hookimpl
def bus_register_transports(register: Any) -> None:
    register("rpc", "redis", rpc.RedisRpcTransport, rpc.OPTIONS)
    register("result", "redis", result.RedisResultTransport, result.OPTIONS)
    register("event", "redis", event.RedisEventTransport, event.OPTIONS)
    register("schema", "redis", schema.RedisSchemaTransport, schema.OPTIONS)
