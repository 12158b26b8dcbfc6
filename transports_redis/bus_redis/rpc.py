"""RPC transport: calls on `{api}:rpc_queue` lists, guarded by `rpc_expiry_key:{id}`.

A caller writes the expiry key and pushes the call in one MULTI/EXEC (calls made in the same
loop turn share it). A worker BLPOPs every queue it serves, takes more with LPOP up to what
it has room for, and deletes each call's expiry key: a call whose key is gone has expired
(its caller gave up) and is dropped unseen. RPCs are at most once, as in Lightbus.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bus_core.messages import RpcMessage, rpc_to_blob
from bus_core.transports import MalformedRpc, RpcConsumer, RpcTransport, decode_call
from bus_redis.base import OPTIONS_SCHEMA, Batcher, RedisTransport
from bus_redis.connection import dedicated, redis_call

OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **OPTIONS_SCHEMA,
        "batch_size": {"type": "integer", "minimum": 1},
        "blocking_timeout": {"type": "number", "exclusiveMinimum": 0},
    },
}


def queue_key(api_name: str) -> str:
    return f"{api_name}:rpc_queue"


def expiry_key(message_id: str) -> str:
    return f"rpc_expiry_key:{message_id}"


class RedisRpcTransport(RedisTransport, RpcTransport):
    def __init__(self, *, batch_size: int = 100, blocking_timeout: float = 5.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_size = batch_size
        self.blocking_timeout = blocking_timeout
        self._batcher: Batcher | None = None

    async def call_rpc(self, message: RpcMessage, *, timeout: float) -> None:
        data = self.serializer.dumps(rpc_to_blob(message))
        seconds = max(1, math.ceil(timeout))
        if self._batcher is None:
            self._batcher = Batcher(self, transaction=True)
        batcher = self._batcher

        def add(pipe: Any) -> int:
            pipe.set(expiry_key(message.id), b"1", ex=seconds)
            pipe.rpush(queue_key(message.api_name), data)
            return 2

        await redis_call(self.url, f"cannot send {message.canonical_name}()",
                         lambda: batcher.submit(add))

    async def open_consumer(self, api_names: Sequence[str]) -> RpcConsumer:
        return RedisRpcConsumer(self, list(api_names))


class RedisRpcConsumer(RpcConsumer):
    def __init__(self, transport: RedisRpcTransport, api_names: list[str]) -> None:
        self.transport = transport
        self.keys = [queue_key(name) for name in api_names]
        self._next = 0  # round-robin start for LPOP, so no API starves another

    async def receive(self, limit: int) -> Sequence[RpcMessage | MalformedRpc]:
        transport = self.transport
        limit = max(1, min(limit, transport.batch_size))
        while True:
            raw = await self._pop(limit)
            if not raw:
                continue
            return await self._live(raw)

    async def _pop(self, limit: int) -> list[bytes]:
        transport = self.transport
        async with dedicated(transport.shared) as client:
            popped = await client.blpop(self.keys, timeout=transport.blocking_timeout)
        if popped is None:
            return []
        raw = [popped[1]]
        order = self.keys[self._next:] + self.keys[:self._next]
        self._next = (self._next + 1) % len(self.keys)
        for key in order:
            if len(raw) >= limit:
                break
            raw.extend(await transport.redis.lpop(key, limit - len(raw)) or ())
        return raw

    async def _live(self, raw: list[bytes]) -> list[RpcMessage | MalformedRpc]:
        """Decode calls and drop those whose expiry key is gone (DEL returns 0)."""
        serializer = self.transport.serializer
        decoded = [decode_call(serializer, data) for data in raw]
        calls = [item for item in decoded if isinstance(item, RpcMessage)]
        if not calls:
            return decoded
        pipe = self.transport.redis.pipeline(transaction=False)
        for call in calls:
            pipe.delete(expiry_key(call.id))
        alive = iter(await pipe.execute())
        return [item for item in decoded
                if not isinstance(item, RpcMessage) or next(alive) == 1]

