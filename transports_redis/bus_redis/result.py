"""Result transport: results travel back over a `redis+key://<key>` return path.

A worker LPUSHes the result blob to the key and sets its TTL (pipelined). A Bus caller gives
every call of a client (per event loop) the same reply list, read by one BLPOP loop that
hands each result to the waiting call by `rpc_message_id`: one blocked connection per
client instead of one per call in flight. Lightbus workers answer any return path, so this
works against them too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from typing import Any

from redis.exceptions import ResponseError

from bus_core.errors import BusError, MalformedMessage
from bus_core.logs import detached
from bus_core.messages import ResultMessage, RpcMessage, result_from_blob, result_to_blob
from bus_core.runtime import time_out
from bus_core.transports import ResultTransport
from bus_redis.base import OPTIONS_SCHEMA, Batcher, RedisTransport, Scripts
from bus_redis.connection import BlockingClient, redact, redis_call

logger = logging.getLogger("bus.redis.result")
RETURN_PATH_PREFIX = "redis+key://"

OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **OPTIONS_SCHEMA,
        "result_ttl": {"type": "number", "exclusiveMinimum": 0},
        "reply_list": {"enum": ["shared", "per_call"],
                       "description": "shared: one reply list per client (fast); per_call: "
                                      "Lightbus's {api}.{rpc}:result:{id} key per call"},
    },
}


def key_of(return_path: str) -> str:
    if not return_path.startswith(RETURN_PATH_PREFIX) or len(return_path) == 12:
        raise MalformedMessage(f"return path {return_path!r} is not a redis+key:// path")
    return return_path[len(RETURN_PATH_PREFIX):]


# Results of a batch of calls: LPUSH each to its return key and set the key's TTL.
# KEYS: result keys; ARGV[1]: TTL seconds; ARGV[i + 1]: the blob for KEYS[i].
REPLY = """
for i, key in ipairs(KEYS) do
  redis.call('LPUSH', key, ARGV[i + 1])
  redis.call('EXPIRE', key, ARGV[1])
end
return #KEYS
"""


class RedisResultTransport(RedisTransport, ResultTransport):
    scripts = Scripts(reply=REPLY)

    def __init__(self, *, result_ttl: float = 60, reply_list: str = "shared",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.result_ttl = int(max(1, result_ttl))
        self.reply_list = reply_list
        self.reply_key = f"bus:reply:{self.process_name}:{uuid.uuid4().hex}"
        self._waiting: dict[str, asyncio.Future[ResultMessage]] = {}
        self._early: collections.OrderedDict[str, tuple[float, ResultMessage]] = (
            collections.OrderedDict())
        self._reader: asyncio.Task[None] | None = None
        self._has_blmpop = True
        self._batcher: Batcher[tuple[str, bytes], None] = Batcher(self._send_batch)

    def get_return_path(self, message: RpcMessage) -> str:
        if self.reply_list == "shared":
            return RETURN_PATH_PREFIX + self.reply_key
        return f"{RETURN_PATH_PREFIX}{message.api_name}.{message.procedure_name}" \
               f":result:{message.id}"

    async def send_result(self, rpc_message: RpcMessage, result_message: ResultMessage,
                          return_path: str) -> None:
        item = (key_of(return_path), self.serializer.dumps(result_to_blob(result_message)))
        await redis_call(self.url, f"cannot send the result of {rpc_message.canonical_name}()",
                         lambda: self._batcher.submit(item))

    async def _send_batch(self, results: list[tuple[str, bytes]]) -> list[None]:
        await self.scripts.run(self.redis, "reply", [key for key, _ in results],
                               [self.result_ttl, *(data for _, data in results)])
        return [None] * len(results)

    async def receive_result(self, rpc_message: RpcMessage, return_path: str,
                             timeout: float) -> ResultMessage:
        key = key_of(return_path)
        if key != self.reply_key:
            return await self._receive_own_key(key, timeout)
        early = self._early.pop(rpc_message.id, None)
        if early is not None:
            return early[1]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultMessage] = loop.create_future()
        self._waiting[rpc_message.id] = future
        self._ensure_reader()
        # A timer rather than asyncio.wait_for: no extra task per call in flight.
        timer = loop.call_later(timeout, time_out, future)
        try:
            return await future
        finally:
            timer.cancel()
            self._waiting.pop(rpc_message.id, None)

    async def _receive_own_key(self, key: str, timeout: float) -> ResultMessage:
        """Wait on a per-call result key (reply_list: per_call), as Lightbus callers do."""
        deadline = time.monotonic() + timeout
        blocking = BlockingClient(self.shared)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                popped = await blocking.client.blpop([key], timeout=min(remaining, 5))
                if popped is not None:
                    return result_from_blob(self.serializer.loads(popped[1]))
        finally:
            await blocking.close()

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(
                detached(self._read_replies()))

    async def _read_replies(self) -> None:
        """Pop results off the shared reply list for as long as the transport is open."""
        blocking = BlockingClient(self.shared)
        failures = 0
        try:
            while True:
                try:
                    popped = await blocking.client.blmpop(
                        1, 1, self.reply_key, direction="LEFT", count=100) \
                        if self._has_blmpop else await self._blpop_many(blocking)
                    failures = 0
                except ResponseError as exc:
                    if "unknown command" in str(exc).lower() and self._has_blmpop:
                        self._has_blmpop = False
                        continue
                    raise
                except (asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:
                    failures += 1
                    await blocking.reset()
                    logger.warning("reading RPC results from %s failed (%s); retrying",
                                   redact(self.url), exc)
                    await asyncio.sleep(min(0.05 * 2 ** failures, 2.0))
                    continue
                for data in (popped[1] if popped else ()):
                    self._dispatch(data)
        finally:
            await blocking.close()

    async def _blpop_many(self, blocking: BlockingClient) -> Any:
        popped = await blocking.client.blpop([self.reply_key], timeout=1)
        if popped is None:
            return None
        more = await blocking.client.lpop(self.reply_key, 100) or []
        return popped[0], [popped[1], *more]

    def _dispatch(self, data: bytes) -> None:
        try:
            result = result_from_blob(self.serializer.loads(data))
        except BusError as exc:
            logger.warning("dropped a malformed RPC result: %s", exc)
            return
        future = self._waiting.get(result.rpc_message_id)
        if future is not None:
            if not future.done():
                future.set_result(result)
            return
        now = time.monotonic()  # arrived before its caller waits, or after it gave up
        self._early[result.rpc_message_id] = (now, result)
        while self._early and next(iter(self._early.values()))[0] < now - self.result_ttl:
            self._early.popitem(last=False)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        await super().close()
