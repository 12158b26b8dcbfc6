"""bus-redis: RPC, result, event and schema transports on Redis.

They speak the Lightbus 1.x wire protocol (keys, fields, encodings), so Bus services and
Lightbus 1.x services on one Redis call each other's RPCs and hear each other's events, and
they fix its weak spots: atomic RPC enqueue, concurrency, at-least-once events with reclaim
and dead letters, and workers that survive malformed messages and Redis restarts.
"""

from bus_redis.event import RedisEventTransport
from bus_redis.result import RedisResultTransport
from bus_redis.rpc import RedisRpcTransport
from bus_redis.schema import RedisSchemaTransport

__all__ = [
    "RedisEventTransport",
    "RedisResultTransport",
    "RedisRpcTransport",
    "RedisSchemaTransport",
]
