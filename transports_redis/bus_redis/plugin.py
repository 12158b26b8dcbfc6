"""The `redis` plugin: registers the four Redis transports by name, with options schemas
whose `url` is checked when the config is loaded (format `bus-redis-url`), not at the first
command."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from bus_core import hookimpl
from bus_core.config import register_format
from bus_redis import event, result, rpc, schema
from bus_redis.connection import url_problem

URL_FORMAT = "bus-redis-url"
register_format(URL_FORMAT, url_problem)


def checked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A transport's options schema with its `url` checked by `url_problem`."""
    checked = copy.deepcopy(dict(options))
    url = checked.get("properties", {}).get("url")
    if isinstance(url, dict):
        url["format"] = URL_FORMAT
    return checked


@hookimpl
def bus_register_transports(register: Any) -> None:
    register("rpc", "redis", rpc.RedisRpcTransport, checked_options(rpc.OPTIONS))
    register("result", "redis", result.RedisResultTransport, checked_options(result.OPTIONS))
    register("event", "redis", event.RedisEventTransport, checked_options(event.OPTIONS))
    register("schema", "redis", schema.RedisSchemaTransport, checked_options(schema.OPTIONS))
