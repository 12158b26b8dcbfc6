"""Result transport: results travel back over a `redis+key://<key>` return path.

A worker LPUSHes the result blob to the key and sets its TTL (one script, each reply on its
own: one that fails never fails another). A Bus caller gives every call of a client (per
event loop) the same reply list, read by one BLPOP loop that hands each result to the waiting
call by `rpc_message_id`: one blocked connection per client instead of one per call in
flight. Lightbus workers answer any return path, so this works against them too.

Only the two forms callers write are answered, so a call can never make a worker write to
(or expire) another key: Bus's shared reply list `bus:reply:<process>:<32 hex>` and the
per-call key `<api>.<rpc>:result:<call id>` of that very call (what Lightbus callers send).

Lost workers (Bus only): a Bus worker records who took each call answered on a shared reply
list in `bus:claim:<call id>` (see `bus_redis.rpc`) and deletes it with the result. Every
`worker_check_interval` the reader's companion task looks, for the calls that have waited a
whole interval, which worker claimed them (one MGET) and whether those workers' liveness
keys still exist (one pipeline of EXISTS); a call whose worker is gone fails at once with
RpcWorkerLost, which the client turns into a re-queue for idempotent RPCs. Calls that end
within an interval cost nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError

from bus_core.errors import MalformedMessage, RpcWorkerLost, TransportError
from bus_core.logs import Throttle, detached
from bus_core.messages import (
    ResultMessage,
    RpcMessage,
    describe,
    preview,
    result_from_blob,
    result_key,
    result_key_problem,
    result_to_blob,
)
from bus_core.runtime import time_out
from bus_core.transports import MalformedRpc, ResultTransport
from bus_redis.base import (
    CHECK_ID,
    Batcher,
    Probe,
    RedisTransport,
    Scripts,
    by_slot,
    raise_if_error,
    settle_each,
)
from bus_redis.connection import BlockingClient, redact, redis_call
from bus_redis.options import RESULT_OPTIONS

logger = logging.getLogger("bus.redis.result")
RETURN_PATH_PREFIX = "redis+key://"
SHARED_PREFIX = "bus:reply:"
CLAIM_PREFIX = "bus:claim:"
WORKER_PREFIX = "bus:worker:"
MAX_DEAD_WORKERS = 1000  # dead workers remembered (their stale claims are ignored)
_HEX = frozenset("0123456789abcdef")
_shared_keys_seen: set[str] = set()  # shared reply keys found valid (a client reuses one)

OPTIONS = RESULT_OPTIONS


def claim_key(message_id: str) -> str:
    """Where a Bus worker records that it took call `message_id` (Bus only)."""
    return f"{CLAIM_PREFIX}{message_id}"


def cluster_claim_key(queue: str, message_id: str) -> str:
    """Cluster mode: `bus:claim:{<api>:rpc_queue}:<id>`, in the slot of the queue the call
    came from, so the worker's claim script touches one slot."""
    return f"{CLAIM_PREFIX}{{{queue}}}:{message_id}"


def _shared_key_problem(key: str) -> str | None:
    """Why `key` is not a shared reply list `bus:reply:<process>:<32 hex>`, or None."""
    if key in _shared_keys_seen:
        return None
    process, _, token = key[len(SHARED_PREFIX):].rpartition(":")
    if not (len(token) == 32 and _HEX.issuperset(token) and 0 < len(process) <= 200
            and process.isprintable()):
        return "not of the form bus:reply:<process>:<32 hex digits>"
    if len(_shared_keys_seen) < 4096:
        _shared_keys_seen.add(key)
    return None


def reply_key_problem(key: str) -> str | None:
    """Why a worker must not write a result to `key`, or None: only the reply namespace,
    a shared reply list or a per-call result key, is ever written (and expired)."""
    if key.startswith(SHARED_PREFIX):
        return _shared_key_problem(key)
    return result_key_problem(key)


def key_of(return_path: str) -> str:
    """The key a result for `return_path` goes to; MalformedMessage outside the reply
    namespace (a worker never writes anywhere else, whatever a call asks)."""
    if not return_path.startswith(RETURN_PATH_PREFIX):
        raise MalformedMessage(f"return path {preview(return_path)} is not a redis+key:// path")
    key = return_path[len(RETURN_PATH_PREFIX):]
    problem = reply_key_problem(key)
    if problem is not None:
        raise MalformedMessage(f"return path {preview(return_path)} refused: {problem}")
    return key


# Results of a batch of calls: LPUSH each to its return key and set the key's TTL, each on
# its own (a key someone made a stream fails its reply alone, and is never expired); then
# delete the claim records of the calls answered (their callers stop watching the worker).
# KEYS: result keys (n), then claim keys; ARGV[1]: TTL seconds; ARGV[i + 1]: the blob for
# KEYS[i]. Returns, per result key, 1 or the error text.
REPLY = """
local n = #ARGV - 1
local status = {}
for i = 1, n do
  local key = KEYS[i]
  local pushed = redis.pcall('LPUSH', key, ARGV[i + 1])
  if type(pushed) == 'table' and pushed.err then
    status[i] = pushed.err
  else
    redis.pcall('EXPIRE', key, ARGV[1])
    status[i] = 1
  end
end
for i = n + 1, #KEYS do redis.pcall('DEL', KEYS[i]) end
return status
"""


class RedisResultTransport(RedisTransport, ResultTransport):
    scripts = Scripts(reply=REPLY)
    return_path_scheme = RETURN_PATH_PREFIX

    def __init__(self, *, result_ttl: float = 60, reply_list: str = "shared",
                 max_unclaimed_results: int = 10_000, max_unclaimed_bytes: int = 16 * 2 ** 20,
                 worker_check_interval: float | None = 0.25, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.result_ttl = int(max(1, result_ttl))
        self.reply_list = reply_list
        self.reply_key = f"{SHARED_PREFIX}{self.process_name}:{uuid.uuid4().hex}"
        self.max_unclaimed_results = max_unclaimed_results
        self.max_unclaimed_bytes = max_unclaimed_bytes
        self.dropped_results = 0  # unclaimed results dropped to stay within those bounds
        self._waiting: dict[str, asyncio.Future[ResultMessage]] = {}
        # Results with no call waiting (yet, or any more): id -> (arrival, result, bytes).
        self._early: collections.OrderedDict[str, tuple[float, ResultMessage, int]] = (
            collections.OrderedDict())
        self._early_bytes = 0
        self._reader: asyncio.Task[None] | None = None
        self._has_blmpop = True
        self._batcher: Batcher[tuple[str, bytes, str | None], Any] = Batcher(
            self._send_batch)
        self._bad_replies = Throttle(logger)
        self._drops = Throttle(logger)
        self.worker_check_interval = worker_check_interval
        self._checker: asyncio.Task[None] | None = None
        self._dead_workers: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._check_failures = Throttle(logger)
        self._claim_keys: dict[str, str] = {}  # cluster mode: call id -> its claim record

    @classmethod
    def check_return_path(cls, key: str, call: RpcMessage | MalformedRpc) -> str | None:
        """A call may ask for its result on a shared reply list, or on its own per-call
        key (named after its API, procedure and id), and nowhere else."""
        if key.startswith(SHARED_PREFIX):
            return _shared_key_problem(key)
        if isinstance(call, RpcMessage):
            if key == result_key(call.api_name, call.procedure_name, call.id):
                return None
            return "neither a shared reply list nor this call's own result key"
        return result_key_problem(key, call.id)  # a call with no id is still told why

    def check_probes(self, api_names: list[str], version: tuple[int, ...] | None
                     ) -> list[Probe]:
        """A caller's wait for results (BLMPOP on its shared reply list, or BLPOP before
        Redis 7 and with `per_call`) and its optional check on workers (MGET, EXISTS); a
        worker's answer (the reply script, LPUSH, EXPIRE) on the reply keys of this
        config's `reply_list` form (shared: named after this process)."""
        probes: list[Probe] = []
        blmpop = version is None or version >= (7, 0)
        if self.reply_list == "shared":
            receiving = "receive RPC results"
            key = self.reply_key
            if blmpop:
                probes.append(Probe("call", receiving, ("BLMPOP", 1, 1, key, "LEFT", "COUNT",
                                                        100)))
            else:
                probes += [Probe("call", receiving, ("BLPOP", key, 1)),
                           Probe("call", receiving, ("LPOP", key, 100))]
            if self.worker_check_interval is not None:
                claim = cluster_claim_key(f"{api_names[0]}:rpc_queue", CHECK_ID) \
                    if self.cluster and api_names else claim_key(CHECK_ID)
                lost = ("calls whose worker dies wait for their timeout (grant reading "
                        "bus:claim:* and bus:worker:*, or set worker_check_interval: null)")
                probes += [Probe("call", receiving, ("MGET", claim), lost),
                           Probe("call", receiving,
                                 ("EXISTS", f"{WORKER_PREFIX}{self.process_name}:{CHECK_ID}"),
                                 lost)]
            answer_keys = [(self.reply_key, "answer RPCs")]
        else:
            answer_keys = []
            for api in api_names:
                key = result_key(api, "rpc", CHECK_ID)
                probes.append(Probe("call", f"receive results of {api}'s RPCs",
                                    ("BLPOP", key, 1)))
                answer_keys.append((key, f"answer {api}'s RPCs"))
        for key, answering in answer_keys:
            for command in self.scripts.probes("reply", [key], [self.result_ttl, "x"]):
                probes.append(Probe("serve", answering, command))
            probes += [Probe("serve", answering, ("LPUSH", key, "x")),
                       Probe("serve", answering, ("EXPIRE", key, self.result_ttl))]
        return probes

    @property
    def per_api_check(self) -> bool:  # type: ignore[override]
        return self.reply_list != "shared"

    def get_return_path(self, message: RpcMessage) -> str:
        if self.reply_list == "shared":
            return RETURN_PATH_PREFIX + self.reply_key
        return RETURN_PATH_PREFIX + result_key(message.api_name, message.procedure_name,
                                               message.id)

    async def send_result(self, rpc_message: RpcMessage, result_message: ResultMessage,
                          return_path: str) -> None:
        key = key_of(return_path)
        # The result ends the record of who took the call (with it, atomically: a caller
        # never sees a claim by a stopped worker whose result is already on its list).
        claim = self._claim_key(rpc_message) if rpc_message.claim_recorded else None
        item = (key, self.serializer.dumps(result_to_blob(result_message)), claim)

        async def send() -> Any:
            return raise_if_error(await self._batcher.submit(item))  # cluster: its group's

        status = await redis_call(
            self.url, f"cannot send the result of {rpc_message.canonical_name}()", send)
        if status != 1:
            raise TransportError(f"the result of {rpc_message.canonical_name}() could not be "
                                 f"written to {preview(item[0])}: {_text(status)}")

    def _claim_key(self, rpc_message: RpcMessage) -> str:
        """Where the worker recorded that it took `rpc_message` (see bus_redis.rpc)."""
        if self.cluster:
            return cluster_claim_key(f"{rpc_message.api_name}:rpc_queue", rpc_message.id)
        return claim_key(rpc_message.id)

    async def _send_batch(self, results: list[tuple[str, bytes, str | None]]) -> list[Any]:
        """One script run for a batch; each result's own status (1, or Redis's error)."""
        if self.cluster:
            return await self._send_batch_by_slot(results)
        keys = [key for key, _, _ in results]
        keys += [claim for _, _, claim in results if claim is not None]
        return list(await self.scripts.run(
            self.redis, "reply", keys, [self.result_ttl, *(data for _, data, _ in results)]))

    async def _send_batch_by_slot(self, results: list[tuple[str, bytes, str | None]]
                                  ) -> list[Any]:
        """Cluster mode: one reply script run per slot of the result keys (in parallel),
        then the claim records of the calls answered are deleted (single-key DELs: they
        live in their queues' slots). Not atomic with the push: a worker dying between the
        two leaves a record that expires with its caller's wait, and its caller, which has
        its result, is not told anything else (its check skips calls already answered)."""
        ttl = self.result_ttl
        groups = by_slot([key for key, _, _ in results])
        outcomes = await settle_each([
            self.scripts.run(self.redis, "reply", [results[i][0] for i in positions],
                             [ttl, *(results[i][1] for i in positions)])
            for positions in groups.values()])
        statuses: list[Any] = [None] * len(results)
        for positions, outcome in zip(groups.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome
            for index, position in enumerate(positions):
                statuses[position] = outcome if isinstance(outcome, BaseException) \
                    else outcome[index]
        claims = [claim for (_, _, claim), status in zip(results, statuses, strict=True)
                  if claim is not None and status == 1]
        if claims:
            try:
                pipe = self.redis.pipeline(transaction=False)
                for claim in claims:
                    pipe.delete(claim)
                await pipe.execute()
            except Exception as exc:  # the results are sent; the records expire anyway
                logger.warning("deleting %d claim record(s) failed (%s); they expire with "
                               "their callers' wait", len(claims), describe(exc))
        return statuses

    async def receive_result(self, rpc_message: RpcMessage, return_path: str,
                             timeout: float) -> ResultMessage:
        key = key_of(return_path)
        if key != self.reply_key:
            return await self._receive_own_key(rpc_message, key, timeout)
        early = self._early.pop(rpc_message.id, None)
        if early is not None:
            self._early_bytes -= early[2]
            return early[1]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultMessage] = loop.create_future()
        self._waiting[rpc_message.id] = future
        if self.cluster:
            self._claim_keys[rpc_message.id] = self._claim_key(rpc_message)
        self._ensure_reader()
        if self._checker is None and self.worker_check_interval is not None:
            self._checker = loop.create_task(detached(self._check_workers()))
        # A timer rather than asyncio.wait_for: no extra task per call in flight.
        timer = loop.call_later(timeout, time_out, future)
        try:
            return await future
        finally:
            timer.cancel()
            self._waiting.pop(rpc_message.id, None)
            if self.cluster:
                self._claim_keys.pop(rpc_message.id, None)

    async def _receive_own_key(self, rpc_message: RpcMessage, key: str, timeout: float
                               ) -> ResultMessage:
        """Wait on a per-call result key (reply_list: per_call), as Lightbus callers do.
        Anything else found there (garbage, another call's result) is logged and skipped."""
        deadline = time.monotonic() + timeout
        blocking = BlockingClient(self.shared) if not self.cluster else None
        node: Any = None  # cluster mode: a plain connection to the key's node
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                if blocking is not None:
                    popped = await blocking.client.blpop([key], timeout=min(remaining, 5))
                else:
                    # Not a cluster client per call: each would fetch the topology and
                    # the command table first. One connection to the owner; after a
                    # MOVED (resharding, failover) or a dropped link, ask again.
                    if node is None:
                        node = await self.shared.node_client_for_key(key)
                    try:
                        popped = await node.blpop([key], timeout=min(remaining, 5))
                    except (ResponseError, RedisConnectionError) as exc:
                        if isinstance(exc, ResponseError) and not str(exc).startswith(
                                ("MOVED", "ASK")):
                            raise
                        await node.aclose()
                        node = None
                        await asyncio.sleep(0.05)
                        with contextlib.suppress(Exception):  # the cluster client follows
                            await self.redis.exists(key)  # MOVED, learning the new owner
                        continue
                if popped is None:
                    continue
                try:
                    result = result_from_blob(self.serializer.loads(popped[1]))
                except Exception as exc:
                    self._bad_replies.warning("dropped a malformed RPC result on %s: %s",
                                              preview(key), describe(exc))
                    continue
                if result.rpc_message_id == rpc_message.id:
                    return result
                self._bad_replies.warning("dropped a result for call %s found on the result "
                                          "key of call %s", preview(result.rpc_message_id),
                                          preview(rpc_message.id))
        finally:
            if blocking is not None:
                await blocking.close()
            if node is not None:
                with contextlib.suppress(Exception):
                    await node.aclose()

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
                    try:
                        self._dispatch(data)
                    except Exception as exc:  # one bad entry never stops the reader
                        self._bad_replies.warning("dropped an RPC result that could not be "
                                                  "handed out: %s", describe(exc))
        finally:
            await blocking.close()

    async def _check_workers(self) -> None:
        """While calls wait: every interval, check the calls that were already waiting at
        the previous check (so calls answered within an interval cost no command)."""
        interval = self.worker_check_interval or 0.25
        previous: set[str] = set()
        try:
            while self._waiting:
                await asyncio.sleep(interval)
                waiting = self._waiting
                ids = [i for i in previous if i in waiting and not waiting[i].done()]
                previous = set(waiting)
                if ids:
                    try:
                        await self._check(ids)
                    except Exception as exc:  # Redis away: decide nothing, try again later
                        if isinstance(exc, NoPermissionError):
                            logger.warning(
                                "cannot check on the workers running RPC calls (%s): calls "
                                "of a worker that dies wait for their timeout. Grant this "
                                "Redis user read access to bus:claim:* and bus:worker:* (see "
                                "the ACL rules of the Redis transport), or set "
                                "worker_check_interval: null", describe(exc))
                            self.worker_check_interval = None
                            return
                        self._check_failures.warning(
                            "checking on the workers running RPC calls on %s failed (%s)",
                            redact(self.url), describe(exc))
        finally:
            self._checker = None

    async def _check(self, ids: list[str]) -> None:
        """Fail each call in `ids` whose claiming worker's liveness key is gone, with
        RpcWorkerLost. A call with no claim record is still queued (or just answered: the
        record goes with the result), and is left alone."""
        claims: list[Any] = []
        for start in range(0, len(ids), 1000):
            part = ids[start:start + 1000]
            if self.cluster:  # records in many slots: GETs grouped by slot and node
                claims += await self.redis.mget_nonatomic(
                    [self._claim_keys.get(i) or claim_key(i) for i in part])
            else:
                claims += await self.redis.mget([claim_key(i) for i in part])
        by_worker: dict[str, list[tuple[str, bool]]] = {}
        for call_id, value in zip(ids, claims, strict=True):
            if not value:
                continue
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            flag, worker = text[:1], text[1:]
            if not worker.startswith(WORKER_PREFIX) or len(worker) > 300 \
                    or worker in self._dead_workers:
                continue  # not a worker key; or a stale claim of a re-queued call
            by_worker.setdefault(worker, []).append((call_id, flag == "i"))
        if not by_worker:
            return
        workers = list(by_worker)
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker in workers:
                pipe.exists(worker)
            alive = await pipe.execute()
        for worker, exists in zip(workers, alive, strict=True):
            if exists:
                continue
            self._dead_workers[worker] = None
            while len(self._dead_workers) > MAX_DEAD_WORKERS:
                self._dead_workers.popitem(last=False)
            for call_id, idempotent in by_worker[worker]:
                future = self._waiting.get(call_id)
                if future is not None and not future.done():
                    future.set_exception(RpcWorkerLost(
                        f"the worker that took call {call_id} ({worker}) is gone",
                        worker=worker, idempotent=idempotent))

    async def _blpop_many(self, blocking: BlockingClient) -> Any:
        popped = await blocking.client.blpop([self.reply_key], timeout=1)
        if popped is None:
            return None
        more = await blocking.client.lpop(self.reply_key, 100) or []
        return popped[0], [popped[1], *more]

    def _dispatch(self, data: bytes) -> None:
        """Hand one popped reply to its waiting call, or keep it for a call not waiting yet.
        Malformed replies are dropped, with one log line per ten seconds at most."""
        try:
            result = result_from_blob(self.serializer.loads(data))
        except Exception as exc:
            self._bad_replies.warning("dropped a malformed RPC result: %s", describe(exc))
            return
        future = self._waiting.get(result.rpc_message_id)
        if future is not None:
            if not future.done():
                future.set_result(result)
            return
        self._keep_early(result, len(data))

    def _keep_early(self, result: ResultMessage, size: int) -> None:
        """Keep a result that arrived before its call waits for it (or after it gave up),
        for result_ttl, within max_unclaimed_results and max_unclaimed_bytes: oldest first
        out, each drop counted in `dropped_results`."""
        now = time.monotonic()
        early = self._early
        previous = early.pop(result.rpc_message_id, None)
        if previous is not None:
            self._early_bytes -= previous[2]
        early[result.rpc_message_id] = (now, result, size)
        self._early_bytes += size
        while early and next(iter(early.values()))[0] < now - self.result_ttl:
            self._early_bytes -= early.popitem(last=False)[1][2]
        dropped = 0
        while early and (len(early) > self.max_unclaimed_results
                         or self._early_bytes > self.max_unclaimed_bytes):
            self._early_bytes -= early.popitem(last=False)[1][2]
            dropped += 1
        if dropped:
            self.dropped_results += dropped
            self._drops.warning(
                "dropped RPC results nobody waits for, to keep at most %d of them (%d bytes) "
                "on %s; %d dropped so far", self.max_unclaimed_results,
                self.max_unclaimed_bytes, redact(self.url), self.dropped_results)

    async def close(self) -> None:
        self._early.clear()
        self._early_bytes = 0
        for task in (self._reader, self._checker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await super().close()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
