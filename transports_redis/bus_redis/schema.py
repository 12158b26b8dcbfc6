"""Schema transport: `schema:{api}` keys with a TTL, indexed by the `schemas` set.

The same keys on a Redis Cluster (each command touches one key; loading reads them with
GETs grouped by slot, `mget_nonatomic`, instead of one MGET)."""

from __future__ import annotations

from typing import Any

from bus_core.messages import valid_api_name
from bus_core.transports import SchemaTransport
from bus_redis.base import Probe, RedisTransport
from bus_redis.connection import redis_call
from bus_redis.options import SCHEMA_OPTIONS

OPTIONS = SCHEMA_OPTIONS
SCHEMA_SET = "schemas"


def schema_key(api_name: str) -> str:
    return f"schema:{api_name}"


def _text(value: bytes | str) -> str | None:
    try:
        return value.decode() if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        return None


class RedisSchemaTransport(RedisTransport, SchemaTransport):
    per_api_check = False  # storing needs API names; loading (all schemas) does not
    def check_probes(self, api_names: list[str], version: tuple[int, ...] | None
                     ) -> list[Probe]:
        """Storing the schema of each API named (SET, EXPIRE, SADD) and loading all
        (SMEMBERS, MGET; GET on a cluster). Only the bus-schema plugin uses these, so a
        refusal is a note of role `schema`."""
        probes = [Probe("schema", "load schemas", ("SMEMBERS", SCHEMA_SET))]
        for api in api_names:
            key = schema_key(api)
            probes.append(Probe("schema", "load schemas",
                                ("GET" if self.cluster else "MGET", key)))
            storing = f"store the schema of {api}"
            probes += [Probe("schema", storing, ("SET", key, "x")),
                       Probe("schema", storing, ("EXPIRE", key, 60)),
                       Probe("schema", storing, ("SADD", SCHEMA_SET, api))]
        return probes

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
            # Names that are not API names (not UTF-8, control characters, 10k long) are
            # skipped: the set is shared with every peer, and never pruned.
            names = sorted(name for name in map(_text, await self.redis.smembers(SCHEMA_SET))
                           if name is not None and valid_api_name(name))
            if not names:
                return {}
            keys = [schema_key(n) for n in names]
            # A cluster spreads the keys over slots: GETs grouped by slot and node instead.
            values = await (self.redis.mget_nonatomic(keys) if self.cluster
                            else self.redis.mget(keys))
            loaded = {}
            for name, value in zip(names, values, strict=True):
                if value is None:
                    continue  # expired: the set is never pruned
                try:
                    schema = self.serializer.loads(value)
                except Exception:  # any serializer's failure: a bad schema hides no other
                    continue
                if isinstance(schema, dict):
                    loaded[name] = schema
            return loaded

        return await redis_call(self.url, "cannot load schemas", read)
