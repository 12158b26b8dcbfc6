"""RPC transport: calls on `{api}:rpc_queue` lists, guarded by `rpc_expiry_key:{id}`.

A caller's call is pushed together with its expiry key (PX: the call's timeout) by one Lua
script, atomically; calls made in the same loop turn share one script run. A worker pops up to
what it has room for from every queue it serves in one BLMPOP (BLPOP + LPOP on Redis < 7),
then claims them with one Lua script that DELs each expiry key: a call whose key is gone has
expired (its caller gave up) and is dropped unseen. RPCs are at most once, as in Lightbus.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from bus_core.logs import Throttle
from bus_core.messages import RpcMessage, rpc_to_blob
from bus_core.transports import MalformedRpc, RpcConsumer, RpcTransport, decode_call
from bus_redis.base import OPTIONS_SCHEMA, Batcher, RedisTransport, Scripts
from bus_redis.connection import BlockingClient, redis_call

OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **OPTIONS_SCHEMA,
        "batch_size": {"type": "integer", "minimum": 1},
        "blocking_timeout": {"type": "number", "exclusiveMinimum": 0},
    },
}


logger = logging.getLogger("bus.redis.rpc")


def queue_key(api_name: str) -> str:
    return f"{api_name}:rpc_queue"


def expiry_key(message_id: str) -> str:
    return f"rpc_expiry_key:{message_id}"


# Atomic enqueue of a batch of calls: each call's expiry key is set with its push. The TTL
# is in milliseconds, exactly the caller's timeout: once the caller gives up, no worker can
# claim the call (whole seconds, as Lightbus sends, would let a 0.5 s call run up to 0.5 s
# after its caller raised RpcTimeout). Lightbus workers only DEL the key, so PX is as good.
# KEYS: queue1, expiry1, queue2, expiry2, ...   ARGV: ttl1 (ms), blob1, ttl2 (ms), blob2, ...
ENQUEUE = """
for i = 1, #KEYS, 2 do
  redis.call('SET', KEYS[i + 1], '1', 'PX', ARGV[i])
  redis.call('RPUSH', KEYS[i], ARGV[i + 1])
end
return #KEYS / 2
"""

# Claim a batch of popped calls: 1 for each whose expiry key still existed (and is now
# deleted, so no other worker can claim it), 0 for expired ones.  KEYS: expiry keys.
CLAIM = """
local alive = {}
for i, key in ipairs(KEYS) do alive[i] = redis.call('DEL', key) end
return alive
"""


# Take a lock, or extend it for its owner.  KEYS: lock key.  ARGV: owner, ttl (ms).
LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# Release a lock only if its owner still holds it.  KEYS: lock key.  ARGV: owner.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lock_key(service_name: str, name: str) -> str:
    return f"bus:lock:{service_name}:{name}"


class RedisRpcTransport(RedisTransport, RpcTransport):
    scripts = Scripts(enqueue=ENQUEUE, claim=CLAIM, lock=LOCK, unlock=UNLOCK)

    def __init__(self, *, batch_size: int = 100, blocking_timeout: float = 5.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_size = batch_size
        self.blocking_timeout = blocking_timeout
        self._batcher: Batcher[tuple[RpcMessage, bytes, int], Any] = Batcher(self._enqueue)

    async def call_rpc(self, message: RpcMessage, *, timeout: float) -> None:
        data = self.serializer.dumps(rpc_to_blob(message))
        item = (message, data, max(1, int(timeout * 1000)))
        await redis_call(self.url, f"cannot send {message.canonical_name}()",
                         lambda: self._batcher.submit(item))

    async def _enqueue(self, calls: list[tuple[RpcMessage, bytes, int]]) -> list[None]:
        keys: list[str] = []
        args: list[Any] = []
        for message, data, milliseconds in calls:
            keys += [queue_key(message.api_name), expiry_key(message.id)]
            args += [milliseconds, data]
        await self.scripts.run(self.redis, "enqueue", keys, args)
        return [None] * len(calls)

    async def open_consumer(self, api_names: Sequence[str]) -> RpcConsumer:
        # Reach Redis now, as a listener's group creation does: a worker whose credentials
        # are refused fails at start (TransportError) instead of retrying its reads for
        # ever; one whose Redis is down waits for it (TransportUnavailable).
        await redis_call(self.url, f"cannot serve the RPCs of {', '.join(api_names)}",
                         self.redis.ping)
        return RedisRpcConsumer(self, list(api_names))

    async def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        """SET NX PX, or PEXPIRE when `owner` already holds it (one Lua script)."""
        taken = await redis_call(
            self.url, f"cannot take lock {name!r}",
            lambda: self.scripts.run(self.redis, "lock", [lock_key(self.service_name, name)],
                                     [owner, max(1, int(ttl * 1000))]))
        return bool(taken)

    async def unlock(self, name: str, owner: str) -> None:
        """Compare-and-delete: release only a lock `owner` still holds."""
        await redis_call(
            self.url, f"cannot release lock {name!r}",
            lambda: self.scripts.run(self.redis, "unlock", [lock_key(self.service_name, name)],
                                     [owner]))


class RedisRpcConsumer(RpcConsumer):
    def __init__(self, transport: RedisRpcTransport, api_names: list[str]) -> None:
        self.transport = transport
        self.keys = [queue_key(name) for name in api_names]
        self._blocking = BlockingClient(transport.shared)
        self._has_blmpop = True  # Redis 7 pops many in one command; older ones BLPOP + LPOP
        self._next = 0  # round-robin start, so no API starves another
        self._stale_malformed = Throttle(logger)

    async def receive(self, limit: int) -> Sequence[RpcMessage | MalformedRpc]:
        limit = max(1, min(limit, self.transport.batch_size))
        while True:
            try:
                raw = await self._pop(limit)
            except BaseException:
                await self._blocking.reset()  # a cancelled or failed read spoils the link
                raise
            if raw:
                return await self._live(raw)

    async def _pop(self, limit: int) -> list[bytes]:
        client = self._blocking.client
        order = self.keys[self._next:] + self.keys[:self._next]
        self._next = (self._next + 1) % len(self.keys)
        timeout = self.transport.blocking_timeout
        if self._has_blmpop:
            try:
                popped = await client.blmpop(timeout, len(order), *order, direction="LEFT",
                                             count=limit)
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self._has_blmpop = False
            else:
                return list(popped[1]) if popped else []
        popped = await client.blpop(order, timeout=timeout)
        if popped is None:
            return []
        raw = [popped[1]]
        for key in order:
            if len(raw) >= limit:
                break
            raw.extend(await client.lpop(key, limit - len(raw)) or ())
        return raw

    async def close(self) -> None:
        await self._blocking.close()

    async def _live(self, raw: list[bytes]) -> list[RpcMessage | MalformedRpc]:
        """Decode calls and drop those whose expiry key is gone (their caller gave up).

        Each call stands alone: one that cannot be decoded is a MalformedRpc and the rest of
        the batch runs. Each call id claims its expiry key once, so a second call with an
        id already claimed in this batch is dropped as expired (at most once per id)."""
        serializer = self.transport.serializer
        decoded = [decode_call(serializer, data) for data in raw]
        # A malformed call is answered only while its caller still waits, like any other.
        claimed = [item for item in decoded if item.id]
        if not claimed:
            return decoded
        replies = await self.transport.scripts.run(
            self.transport.redis, "claim", [expiry_key(item.id) for item in claimed], [])
        expired = {id(item) for item, alive in zip(claimed, replies, strict=True)
                   if alive != 1}
        if not expired:
            return decoded
        for item in claimed:
            if id(item) not in expired:
                continue
            if isinstance(item, MalformedRpc):
                self._stale_malformed.warning(
                    "dropped a malformed RPC call (%s): its expiry key is gone (the caller "
                    "gave up, or never set one): %s", item.id, item.problem)
            else:
                logger.debug("dropped %s() call %s: it expired before a worker took it",
                             item.canonical_name, item.id)
        return [item for item in decoded if id(item) not in expired]
