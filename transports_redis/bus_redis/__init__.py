"""bus-redis: RPC, result, event and schema transports on Redis.

They speak the Lightbus 1.x wire protocol (keys, fields, encodings), so Bus services and
Lightbus 1.x services on one Redis call each other's RPCs and hear each other's events, and
they fix its weak spots: atomic RPC enqueue, concurrency, at-least-once events with reclaim
and dead letters, and workers that survive malformed messages and Redis restarts.
"""

from typing import Any

__all__ = [
    "RedisEventTransport",
    "RedisResultTransport",
    "RedisRpcTransport",
    "RedisSchemaTransport",
]
_MODULES = {"RedisEventTransport": "event", "RedisResultTransport": "result",
            "RedisRpcTransport": "rpc", "RedisSchemaTransport": "schema"}


def __getattr__(name: str) -> Any:
    """The transports load (with redis-py) when first named: the plugin's entry point, which
    every `bus` command loads, stays light."""
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'bus_redis' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"bus_redis.{module}"), name)
