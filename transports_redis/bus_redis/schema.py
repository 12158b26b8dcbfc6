"""Schema transport: `schema:{api}` keys with a TTL, indexed by the `schemas` set."""

from __future__ import annotations

from typing import Any

from bus_core.errors import BusError
from bus_core.transports import SchemaTransport
from bus_redis.base import OPTIONS_SCHEMA, RedisTransport
from bus_redis.connection import redis_call

OPTIONS = {"type": "object", "additionalProperties": False, "properties": dict(OPTIONS_SCHEMA)}
SCHEMA_SET = "schemas"


def schema_key(api_name: str) -> str:
    return f"schema:{api_name}"


class RedisSchemaTransport(RedisTransport, SchemaTransport):
    async def store(self, api_name: str, schema: dict[str, Any], ttl: float | None) -> None:
        data = self.serializer.dumps(schema)

        async def write() -> None:
            pipe = self.redis.pipeline(transaction=False)  # SET, EXPIRE, SADD: as Lightbus
            pipe.set(schema_key(api_name), data)
            if ttl:
                pipe.expire(schema_key(api_name), max(1, int(ttl)))
            pipe.sadd(SCHEMA_SET, api_name)
            await pipe.execute()

        await redis_call(self.url, f"cannot store the schema of {api_name!r}", write)

    async def load(self) -> dict[str, dict[str, Any]]:
        async def read() -> dict[str, dict[str, Any]]:
            names = sorted(n.decode() if isinstance(n, bytes) else n
                           for n in await self.redis.smembers(SCHEMA_SET))
            if not names:
                return {}
            values = await self.redis.mget([schema_key(n) for n in names])
            loaded = {}
            for name, value in zip(names, values, strict=True):
                if value is None:
                    continue  # expired: the set is never pruned
                try:
                    loaded[name] = self.serializer.loads(value)
                except BusError:
                    continue
            return loaded

        return await redis_call(self.url, "cannot load schemas", read)
