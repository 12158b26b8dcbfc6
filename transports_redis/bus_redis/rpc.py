"""RPC transport: calls on `{api}:rpc_queue` lists, guarded by `rpc_expiry_key:{id}`.

A caller's call is pushed together with its expiry key (PX: the call's timeout) by one Lua
script, atomically; calls made in the same loop turn share one script run. A worker pops up to
what it has room for from every queue it serves in one BLMPOP (BLPOP + LPOP on Redis < 7),
then claims them with one Lua script that DELs each expiry key: a call whose key is gone has
expired (its caller gave up) and is dropped unseen. RPCs are at most once, as in Lightbus.

Worker liveness (Bus only, invisible to Lightbus peers): a consumer keeps a liveness key
`bus:worker:<process>:<hex>` alive (SET PX `worker_ttl`, refreshed from a thread of its own,
so a busy event loop never makes a live worker look dead), and the claim script records who
took each call answered on a shared reply list in `bus:claim:<call id>`. A Bus caller whose
call is claimed by a worker whose liveness key is gone raises RpcWorkerLost (or re-queues an
idempotent call) instead of waiting for its timeout: see `bus_redis.result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from bus_core.logs import Throttle
from bus_core.messages import RpcMessage, rpc_to_blob
from bus_core.transports import MalformedRpc, RpcConsumer, RpcTransport, decode_call
from bus_redis.base import (
    CHECK_ID,
    Batcher,
    Probe,
    RedisTransport,
    Scripts,
    raise_if_error,
    settle_each,
)
from bus_redis.connection import BlockingClient, acquire, hash_tagged, redis_call, release
from bus_redis.options import RPC_OPTIONS
from bus_redis.result import RETURN_PATH_PREFIX, SHARED_PREFIX, claim_key, cluster_claim_key

OPTIONS = RPC_OPTIONS


logger = logging.getLogger("bus.redis.rpc")


def queue_key(api_name: str) -> str:
    return f"{api_name}:rpc_queue"


def expiry_key(message_id: str) -> str:
    return f"rpc_expiry_key:{message_id}"


def cluster_expiry_key(queue: str, message_id: str) -> str:
    """Cluster mode: `rpc_expiry_key:{<api>:rpc_queue}:<id>`, hashed like its queue (whose
    name is unchanged), so the enqueue and claim scripts touch one slot."""
    return f"rpc_expiry_key:{hash_tagged(queue)}:{message_id}"


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


# Claim a batch, recording who took each call that a Bus caller waits for on a shared reply
# list: the worker's liveness key is set first (SET PX: alive before any record names it),
# then `bus:claim:<id>` = flag .. worker key, with the TTL the expiry key had left (the
# caller's remaining wait). Flag "i": this worker declares the RPC idempotent, "-": not.
# Records are best effort (pcall): a user whose ACL forbids them still claims its calls;
# the first refusal stops the recording and is returned after the per-call replies.
# KEYS: expiry keys (n), the claim key of each (n), the worker's liveness key.
# ARGV[1]: liveness TTL (ms); ARGV[2]: one flag character per call, "." to record nothing.
# Returns, per call, 1 (claimed) or 0 (expired), then 1 or the refusal's text.
CLAIM_RECORDING = """
local flags = ARGV[2]
local n = #flags
local worker = KEYS[2 * n + 1]
local alive = {}
local live = false
local refused = nil
for i = 1, n do
  local flag = string.sub(flags, i, i)
  if flag == '.' or refused then
    alive[i] = redis.call('DEL', KEYS[i])
  else
    local ttl = redis.call('PTTL', KEYS[i])
    alive[i] = redis.call('DEL', KEYS[i])
    if alive[i] == 1 then
      if not live then
        local set = redis.pcall('SET', worker, '1', 'PX', ARGV[1])
        if type(set) == 'table' and set.err then refused = set.err end
        live = true
      end
      if not refused then
        if ttl < 1 then ttl = 60000 end
        local set = redis.pcall('SET', KEYS[n + i], flag .. worker, 'PX', ttl)
        if type(set) == 'table' and set.err then refused = set.err end
      end
    end
  end
end
alive[n + 1] = refused or 1
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


_SHARED_RETURN_PATH = RETURN_PATH_PREFIX + SHARED_PREFIX


def worker_key(process_name: str, token: str | None = None) -> str:
    """A fresh liveness key for one consumer of a worker process (unique even when two
    processes share a process name)."""
    return f"bus:worker:{process_name}:{token or uuid.uuid4().hex[:16]}"


def cluster_worker_key(queue: str, process_name: str, token: str) -> str:
    """Cluster mode: one liveness key per queue a consumer serves,
    `bus:worker:{<api>:rpc_queue}:<process>:<hex>`, in its queue's slot (the claim script
    sets it with the claim records)."""
    return f"bus:worker:{hash_tagged(queue)}:{process_name}:{token}"


class Heartbeat:
    """Keeps a worker's liveness key alive: SET PX `ttl` every `ttl / 5` seconds, from a
    thread with an event loop (and connection) of its own, so a blocked or busy worker loop
    never lets the key lapse while the process lives. Only the process dying, or `stop()`,
    ends it."""

    def __init__(self, url: str, keys: Sequence[str], ttl: float,
                 socket_timeout: float | None) -> None:
        self.url = url
        self.keys = list(keys)
        self.ttl_ms = max(1, int(ttl * 1000))
        self.interval = ttl / 5
        self.socket_timeout = socket_timeout or ttl
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._failures = Throttle(logger)
        self._thread = threading.Thread(target=self._run, name="bus-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        asyncio.run(self._beat())

    async def _beat(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        shared = await acquire(self.url, 2, self.socket_timeout)
        try:
            while not self._stopping.is_set():
                try:
                    if len(self.keys) == 1:
                        await shared.client.set(self.keys[0], b"1", px=self.ttl_ms)
                    else:  # cluster mode, one key per queue: single-key SETs, pipelined
                        pipe = shared.client.pipeline(transaction=False)
                        for key in self.keys:
                            pipe.set(key, b"1", px=self.ttl_ms)
                        await pipe.execute()
                except Exception as exc:
                    self._failures.warning("refreshing worker liveness key %s failed (%s); "
                                           "callers may take this worker for dead",
                                           ", ".join(self.keys), exc)
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
        finally:
            await release(shared)

    async def stop(self) -> None:
        """Stop refreshing and wait for the thread (so no SET follows a later DEL)."""
        self._stopping.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                loop.call_soon_threadsafe(wake.set)
        if self._thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5.0)


class RedisRpcTransport(RedisTransport, RpcTransport):
    scripts = Scripts(enqueue=ENQUEUE, claim=CLAIM, claim_recording=CLAIM_RECORDING,
                      lock=LOCK, unlock=UNLOCK)

    def __init__(self, *, batch_size: int = 100, blocking_timeout: float = 5.0,
                 worker_ttl: float | None = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_size = batch_size
        self.blocking_timeout = blocking_timeout
        self.worker_ttl = worker_ttl
        self._batcher: Batcher[tuple[RpcMessage, bytes, int], Any] = Batcher(self._enqueue)

    async def call_rpc(self, message: RpcMessage, *, timeout: float) -> None:
        data = self.serializer.dumps(rpc_to_blob(message))
        item = (message, data, max(1, int(timeout * 1000)))

        async def send() -> None:
            raise_if_error(await self._batcher.submit(item))  # cluster: its group's error

        await redis_call(self.url, f"cannot send {message.canonical_name}()", send)

    async def _enqueue(self, calls: list[tuple[RpcMessage, bytes, int]]) -> list[Any]:
        if self.cluster:
            return await self._enqueue_by_queue(calls)
        keys: list[str] = []
        args: list[Any] = []
        for message, data, milliseconds in calls:
            keys += [queue_key(message.api_name), expiry_key(message.id)]
            args += [milliseconds, data]
        await self.scripts.run(self.redis, "enqueue", keys, args)
        return [None] * len(calls)

    async def _enqueue_by_queue(self, calls: list[tuple[RpcMessage, bytes, int]]
                                ) -> list[Any]:
        """Cluster mode: one enqueue script run per queue (each call still set with its
        expiry key atomically), the runs in parallel. Per call: None, or the error of its
        queue's run (the calls of other queues are sent all the same)."""
        groups: dict[str, tuple[list[int], list[str], list[Any]]] = {}
        for position, (message, data, milliseconds) in enumerate(calls):
            queue = queue_key(message.api_name)
            positions, keys, args = groups.setdefault(queue, ([], [], []))
            positions.append(position)
            keys += [queue, cluster_expiry_key(queue, message.id)]
            args += [milliseconds, data]
        outcomes = await settle_each([self.scripts.run(self.redis, "enqueue", keys, args)
                                      for _, keys, args in groups.values()])
        replies: list[Any] = [None] * len(calls)
        for (positions, _, _), outcome in zip(groups.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome  # a cancellation is not one group's failure
                for position in positions:
                    replies[position] = outcome
        return replies

    def check_probes(self, api_names: list[str], version: tuple[int, ...] | None
                     ) -> list[Probe]:
        """A caller's enqueue (script, SET PX, RPUSH); a worker's pop (BLMPOP, or BLPOP and
        LPOP before Redis 7) and claim (script, DEL), and its optional parts: recording who
        took a call (PTTL, SET PX of the claim and liveness keys, DEL at stop) and the
        locks of single scheduled tasks."""
        probes: list[Probe] = []
        token = CHECK_ID[:16]
        for api in api_names:
            queue = queue_key(api)
            expiry = cluster_expiry_key(queue, CHECK_ID) if self.cluster else expiry_key(
                CHECK_ID)
            calling = f"call {api}"
            for command in self.scripts.probes("enqueue", [queue, expiry], [1000, "x"]):
                probes.append(Probe("call", calling, command))
            probes += [Probe("call", calling, ("SET", expiry, "1", "PX", 1000)),
                       Probe("call", calling, ("RPUSH", queue, "x"))]
            serving = f"serve {api}"
            if version is None or version >= (7, 0):
                probes.append(Probe("serve", serving, ("BLMPOP", 1, 1, queue, "LEFT", "COUNT",
                                                       self.batch_size)))
            else:
                probes += [Probe("serve", serving, ("BLPOP", queue, 1)),
                           Probe("serve", serving, ("LPOP", queue, self.batch_size))]
            for command in self.scripts.probes("claim", [expiry], []):
                probes.append(Probe("serve", serving, command))
            probes.append(Probe("serve", serving, ("DEL", expiry)))
            if self.worker_ttl is None:
                continue
            claim = cluster_claim_key(queue, CHECK_ID) if self.cluster else claim_key(CHECK_ID)
            worker = cluster_worker_key(queue, self.process_name, token) if self.cluster \
                else worker_key(self.process_name, token)
            lost = ("the worker records no claims: its callers wait for their timeout when "
                    "it dies (grant bus:claim:* and bus:worker:*, or set worker_ttl: null)")
            ttl = max(1, int(self.worker_ttl * 1000))
            for command in self.scripts.probes("claim_recording", [expiry, claim, worker],
                                               [ttl, "-"]):
                probes.append(Probe("serve", serving, command, lost))
            probes += [Probe("serve", serving, ("PTTL", expiry), lost),
                       Probe("serve", serving, ("SET", worker, "1", "PX", ttl), lost),
                       Probe("serve", serving, ("SET", claim, "-" + worker, "PX", ttl), lost),
                       Probe("serve", serving, ("DEL", worker), lost)]
        lock = lock_key(self.service_name, "task")
        lost = "single=True scheduled tasks are skipped (their lock bus:lock:... is refused)"
        for name, args in (("lock", [self.process_name, 1000]), ("unlock", [self.process_name])):
            for command in self.scripts.probes(name, [lock], args):
                probes.append(Probe("serve", "take task locks", command, lost))
        for command in (("SET", lock, "x", "NX", "PX", 1000), ("GET", lock),
                        ("PEXPIRE", lock, 1000), ("DEL", lock)):
            probes.append(Probe("serve", "take task locks", command, lost))
        return probes

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
        # Who took each call, for callers on shared reply lists (worker_ttl set): the
        # liveness key is made by the first claim that records one, then kept by a heartbeat.
        ttl = transport.worker_ttl
        token = uuid.uuid4().hex[:16]
        process = transport.process_name
        self.worker_key = worker_key(process, token) if ttl is not None else None
        # Cluster mode: a liveness key per queue, in the queue's slot (see cluster_worker_key).
        self.worker_keys = {queue: cluster_worker_key(queue, process, token)
                            for queue in self.keys}
        self.worker_ttl_ms = max(1, int((ttl or 0) * 1000))
        self.heartbeat: Heartbeat | None = None
        # Cluster mode: a pop of its own in flight per queue, and what it popped beyond the
        # room the worker had (handed out first, at the next receive).
        self._pops: dict[str, asyncio.Task[list[bytes]]] = {}
        self._popped: dict[str, list[bytes]] = {queue: [] for queue in self.keys}
        self._queue_clients: dict[str, BlockingClient] = {}

    async def receive(self, limit: int) -> Sequence[RpcMessage | MalformedRpc]:
        limit = max(1, min(limit, self.transport.batch_size))
        if self.transport.cluster:
            return await self._receive_by_queue(limit)
        while True:
            try:
                raw = await self._pop(limit)
            except BaseException:
                await self._blocking.reset()  # a cancelled or failed read spoils the link
                raise
            if raw:
                return await self._live(raw)

    async def _receive_by_queue(self, limit: int) -> list[RpcMessage | MalformedRpc]:
        """Cluster mode: the queues may live on different nodes, and one BLMPOP cannot
        span slots. Each queue has one blocking pop of its own in flight (so a quiet
        worker waits in Redis, costing no CPU, and a call on any queue is seen at once);
        a receive hands out what the finished pops brought, up to `limit`, starting with
        a different queue each time (no queue starves another), and keeps the rest for
        the next receive. A pop is never cancelled while the worker runs (a cancelled
        pop could lose the calls it took), only at close."""
        while True:
            for queue in self.keys:
                if queue not in self._pops and not self._popped[queue]:
                    self._pops[queue] = asyncio.get_running_loop().create_task(
                        self._pop_queue(queue, limit), name=f"bus:rpc-pop:{queue}")
            if not any(self._popped.values()):
                await asyncio.wait(list(self._pops.values()),
                                   return_when=asyncio.FIRST_COMPLETED)
            failure = await self._collect_pops()
            taken = self._take_popped(limit)
            if taken:
                calls: list[RpcMessage | MalformedRpc] = []
                for queue, raw in taken:
                    calls += await self._live(raw, queue)
                if calls:
                    return calls
            if failure is not None:
                raise failure

    async def _collect_pops(self) -> BaseException | None:
        """Move finished pops' calls to their queue's buffer; the first failure, if any
        (its queue's connection is dropped and made again by the next pop)."""
        failure: BaseException | None = None
        for queue, task in list(self._pops.items()):
            if not task.done():
                continue
            del self._pops[queue]
            error = task.exception() if not task.cancelled() else asyncio.CancelledError()
            if error is None:
                self._popped[queue] += task.result()
                continue
            client = self._queue_clients.pop(queue, None)
            if client is not None:
                await client.close()
            failure = failure or error
        return failure

    def _take_popped(self, limit: int) -> list[tuple[str, list[bytes]]]:
        """Up to `limit` buffered calls, a fair share per queue, the first queue rotating."""
        order = self.keys[self._next:] + self.keys[:self._next]
        self._next = (self._next + 1) % len(self.keys)
        taken: list[tuple[str, list[bytes]]] = []
        room = limit
        while room > 0:
            holding = [queue for queue in order if self._popped[queue]]
            if not holding:
                break
            share = max(1, room // len(holding))
            for queue in holding:
                if room <= 0:
                    break
                buffer = self._popped[queue]
                part, self._popped[queue] = buffer[:min(share, room)], buffer[min(share, room):]
                room -= len(part)
                taken.append((queue, part))
        return taken

    async def _pop_queue(self, queue: str, limit: int) -> list[bytes]:
        """One blocking pop of up to `limit` calls from `queue` on a connection of its own
        (a cluster client, following MOVED and failovers); [] when it timed out."""
        client = self._queue_clients.get(queue)
        if client is None:
            client = self._queue_clients[queue] = BlockingClient(self.transport.shared)
        return await self._pop(limit, client, [queue])

    async def _pop(self, limit: int, blocking: BlockingClient | None = None,
                   keys: list[str] | None = None) -> list[bytes]:
        client = (blocking or self._blocking).client
        if keys is None:
            order = self.keys[self._next:] + self.keys[:self._next]
            self._next = (self._next + 1) % len(self.keys)
        else:
            order = keys
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
        """Stop popping, then stop the heartbeat and delete the liveness key: callers of
        calls this worker took and did not answer (abandoned at the drain timeout) learn at
        their next check that it is gone."""
        await self._blocking.close()
        pops, self._pops = self._pops, {}
        for task in pops.values():
            task.cancel()
        for task in pops.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        clients, self._queue_clients = self._queue_clients, {}
        for client in clients.values():
            await client.close()
        heartbeat, self.heartbeat = self.heartbeat, None
        if heartbeat is not None:
            await heartbeat.stop()
            try:
                if self.transport.cluster:  # one key per slot: single-key DELs
                    pipe = self.transport.redis.pipeline(transaction=False)
                    for key in heartbeat.keys:
                        pipe.delete(key)
                    await pipe.execute()
                else:
                    await self.transport.redis.delete(*heartbeat.keys)
            except Exception as exc:
                logger.warning("deleting worker liveness key %s failed (%s); it expires in "
                               "%gs", ", ".join(heartbeat.keys), exc,
                               self.transport.worker_ttl)

    def _flags(self, claimed: list[RpcMessage | MalformedRpc], queue: str | None = None
               ) -> str | None:
        """Per call, what to record of who took it: "i" (idempotent here) or "-" for a call
        answered on a shared reply list, "." for others (a Lightbus caller's per-call key,
        a malformed call; in cluster mode, a call of another API than its queue's, whose
        record its caller would not look for); None when nothing is to be recorded."""
        if self.worker_key is None:
            return None
        idempotent = self.idempotent_rpcs
        shared = _SHARED_RETURN_PATH
        flags = "".join([("i" if (item.api_name, item.procedure_name) in idempotent else "-")
                         if isinstance(item, RpcMessage) and item.return_path.startswith(shared)
                         and (queue is None or queue_key(item.api_name) == queue)
                         else "." for item in claimed])
        return None if flags.count(".") == len(flags) else flags

    async def _claim(self, claimed: list[RpcMessage | MalformedRpc], queue: str | None = None
                     ) -> list[Any]:
        """Claim `claimed` (1: live, taken by us; 0: expired), recording who took the calls
        of shared reply lists when worker_ttl is set. `queue`: cluster mode, where they
        were popped (every key of the script is in its slot)."""
        ids = [item.id or "" for item in claimed]  # each has an id (see _live)
        if queue is None:
            keys = [expiry_key(call_id) for call_id in ids]
        else:
            keys = [cluster_expiry_key(queue, call_id) for call_id in ids]
        flags = self._flags(claimed, queue)
        transport = self.transport
        if flags is None:
            return list(await transport.scripts.run(transport.redis, "claim", keys, []))
        if queue is None:
            keys += [claim_key(call_id) for call_id in ids]
            keys.append(self.worker_key or "")
        else:
            keys += [cluster_claim_key(queue, call_id) for call_id in ids]
            keys.append(self.worker_keys[queue])
        replies = list(await transport.scripts.run(
            transport.redis, "claim_recording", keys, [self.worker_ttl_ms, flags]))
        refused = replies.pop()
        if refused != 1:
            logger.warning(
                "cannot record which worker takes RPC calls (%s); callers will not learn "
                "that this worker died before their timeout. Grant this Redis user "
                "bus:claim:* and bus:worker:* (see the ACL rules of the Redis transport), "
                "or set worker_ttl: null", _text(refused))
            self.worker_key = None
            return replies
        for item, flag, alive in zip(claimed, flags, replies, strict=True):
            if flag != "." and alive == 1:
                item.claim_recorded = True  # type: ignore[union-attr]  (flags: RpcMessage)
        if self.heartbeat is None:
            # The claim script made the liveness key; from now on a thread keeps it alive.
            keys = list(self.worker_keys.values()) if transport.cluster \
                else [self.worker_key or ""]
            self.heartbeat = Heartbeat(transport.url, keys, transport.worker_ttl or 1.0,
                                       transport.socket_timeout)
            self.heartbeat.start()
        return replies

    async def _live(self, raw: list[bytes], queue: str | None = None
                    ) -> list[RpcMessage | MalformedRpc]:
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
        replies = await self._claim(claimed, queue)
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


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
