"""The four memory transports. Messages are encoded with the configured serializer, exactly
as a network transport would, so what works here works on the wire."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timezone
from typing import Any

from bus_core.deadlines import within
from bus_core.errors import BusError, MalformedMessage, RpcWorkerLost
from bus_core.logs import Throttle
from bus_core.messages import (
    EventMessage,
    ResultMessage,
    RpcMessage,
    describe,
    event_from_blob,
    event_to_blob,
    preview,
    result_from_blob,
    result_key,
    result_key_problem,
    result_to_blob,
    rpc_to_blob,
)
from bus_core.transports import (
    ConsumerInfo,
    EventConsumer,
    EventDelivery,
    EventTransport,
    GroupInfo,
    MalformedRpc,
    ResultTransport,
    RpcConsumer,
    RpcTransport,
    SchemaTransport,
    decode_call,
)
from bus_memory.broker import ConsumerGroup, MemoryBroker, Stream, get_broker
from bus_memory.dead_letters import MemoryDeadLetters, replayed_elsewhere

RETURN_PATH_PREFIX = "memory://"
logger = logging.getLogger("bus.memory")


class _MemoryTransport:
    broker: MemoryBroker

    def _use_broker(self, options: dict[str, Any]) -> None:
        self.broker = get_broker(str(options.get("broker", "default")))


class MemoryRpcTransport(_MemoryTransport, RpcTransport):
    """Per-API queues; a call not taken before its timeout is dropped unseen."""

    def __init__(self, *, broker: str = "default", batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._use_broker({"broker": broker})
        self.batch_size = batch_size

    async def call_rpc(self, message: RpcMessage, *, timeout: float) -> None:
        data = self.serializer.dumps(rpc_to_blob(message))
        self.broker.push_call(message.api_name, data, time.monotonic() + timeout)

    async def open_consumer(self, api_names: Sequence[str]) -> RpcConsumer:
        return MemoryRpcConsumer(self, list(api_names))

    def lock_key(self, name: str) -> str:
        return f"bus:lock:{self.service_name}:{name}"

    async def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        return self.broker.try_lock(self.lock_key(name), owner, ttl)

    async def unlock(self, name: str, owner: str) -> None:
        self.broker.unlock(self.lock_key(name), owner)


class MemoryRpcConsumer(RpcConsumer):
    """Takes calls off the queues of its APIs. Calls it took are claimed in the broker until
    answered; if it closes first (its worker stopped and abandoned them), their callers get
    RpcWorkerLost at once (an idempotent one is re-queued by its caller)."""

    def __init__(self, transport: MemoryRpcTransport, api_names: list[str]) -> None:
        self.transport = transport
        self.api_names = api_names
        self.name = transport.broker.new_consumer_id(transport.process_name)

    async def receive(self, limit: int) -> Sequence[RpcMessage | MalformedRpc]:
        broker = self.transport.broker
        limit = max(1, min(limit, self.transport.batch_size))
        while True:
            with broker.lock:
                raw, _dropped = broker.pop_calls(self.api_names, limit)
                waiter = None if raw else broker.rpc_waiters.add()
            if raw:
                calls = [decode_call(self.transport.serializer, data) for data in raw]
                idempotent = self.idempotent_rpcs
                broker.claim_calls(self.name, [
                    (call.return_path[len(RETURN_PATH_PREFIX):],
                     (call.api_name, call.procedure_name) in idempotent)
                    for call in calls if isinstance(call, RpcMessage)
                    and call.return_path.startswith(RETURN_PATH_PREFIX)])
                return calls
            assert waiter is not None
            try:
                await waiter
            finally:
                with broker.lock:
                    broker.rpc_waiters.discard(waiter)

    async def close(self) -> None:
        """Calls taken and not answered are lost: tell their callers now."""
        self.transport.broker.release_claims(self.name)


class MemoryResultTransport(_MemoryTransport, ResultTransport):
    """Results wait under their return path for `result_ttl` seconds; results nobody takes
    are kept within `max_unclaimed_results` and `max_unclaimed_bytes` (per broker), the
    oldest dropped first and counted in `dropped_results`."""

    return_path_scheme = RETURN_PATH_PREFIX

    def __init__(self, *, broker: str = "default", result_ttl: float = 60.0,
                 max_unclaimed_results: int = 10_000, max_unclaimed_bytes: int = 16 * 2 ** 20,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._use_broker({"broker": broker})
        self.result_ttl = result_ttl
        self.max_unclaimed_results = max_unclaimed_results
        self.max_unclaimed_bytes = max_unclaimed_bytes
        self.dropped_results = 0
        self._drops = Throttle(logger)

    @classmethod
    def check_return_path(cls, key: str, call: RpcMessage | MalformedRpc) -> str | None:
        """Only the call's own per-call key, `<api>.<rpc>:result:<id>`."""
        if isinstance(call, RpcMessage):
            if key == result_key(call.api_name, call.procedure_name, call.id):
                return None
            return "not this call's own result key"
        return result_key_problem(key, call.id)  # a call with no id is still told why

    def get_return_path(self, message: RpcMessage) -> str:
        return RETURN_PATH_PREFIX + result_key(message.api_name, message.procedure_name,
                                               message.id)

    @staticmethod
    def _key(return_path: str) -> str:
        if not return_path.startswith(RETURN_PATH_PREFIX):
            raise MalformedMessage(f"return path {preview(return_path)} is not a memory:// "
                                   "path")
        key = return_path[len(RETURN_PATH_PREFIX):]
        problem = result_key_problem(key)
        if problem is not None:
            raise MalformedMessage(f"return path {preview(return_path)} refused: {problem}")
        return key

    async def send_result(self, rpc_message: RpcMessage, result_message: ResultMessage,
                          return_path: str) -> None:
        data = self.serializer.dumps(result_to_blob(result_message))
        dropped = self.broker.put_result(self._key(return_path), data, self.result_ttl,
                                         self.max_unclaimed_results, self.max_unclaimed_bytes)
        if dropped:
            self.dropped_results += dropped
            self._drops.warning("dropped %d RPC result(s) nobody took, to keep at most %d of "
                                "them (%d bytes) on memory broker %r", dropped,
                                self.max_unclaimed_results, self.max_unclaimed_bytes,
                                self.broker.name)

    async def receive_result(self, rpc_message: RpcMessage, return_path: str,
                             timeout: float) -> ResultMessage:
        # The caller's own return path (get_return_path made it): nothing to check.
        key = return_path.removeprefix(RETURN_PATH_PREFIX)
        broker = self.broker
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        first = True
        while True:
            with broker.lock:
                data = broker.take_result(key)
                lost = broker.take_lost(key) if data is None else None
                waiter = broker.result_waiter(key) if data is None and lost is None else None
            if data is not None:
                return result_from_blob(self.serializer.loads(data))
            if lost is not None:
                raise RpcWorkerLost(f"the worker that took call {rpc_message.id} ({lost[0]}) "
                                    "stopped before answering", worker=lost[0],
                                    idempotent=lost[1])
            assert waiter is not None
            # The first wait is the call's whole timeout (one shared timer for all calls
            # with that timeout); a later one (woken without a result) the time left.
            left = timeout if first else max(0.0, deadline - loop.time())
            first = False
            try:
                await within(waiter, left)
            except TimeoutError:
                raise TimeoutError(f"no result for {rpc_message.id}") from None
            finally:
                broker.forget_result_waiter(key, waiter)


class MemoryEventTransport(MemoryDeadLetters, _MemoryTransport, EventTransport):
    """One stream per event; a consumer group per listener name, as on Redis Streams."""

    send_may_block = False  # appending to an in-process stream never waits

    def __init__(self, *, broker: str = "default", batch_size: int = 32,
                 max_stream_length: int | None = 100_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._use_broker({"broker": broker})
        self.batch_size = batch_size
        self.max_stream_length = max_stream_length

    @staticmethod
    def stream_name(api_name: str, event_name: str) -> str:
        return f"{api_name}.{event_name}"

    def group_name(self, listener_name: str) -> str:
        return f"{self.service_name}-{listener_name}"

    def _stream(self, api_name: str, event_name: str) -> Stream:
        return self.broker.stream(self.stream_name(api_name, event_name), self.max_stream_length)

    async def send_event(self, message: EventMessage) -> None:
        data = self.serializer.dumps(event_to_blob(message))
        entry = self._stream(message.api_name, message.event_name).append(data)
        message.native_id = entry.native_id
        message.time = entry.time

    async def open_consumer(self, listen_for: Sequence[tuple[str, str]], listener_name: str,
                            since: str | datetime | None = None) -> EventConsumer:
        consumer_id = self.broker.new_consumer_id(self.process_name)
        subscriptions = []
        for api_name, event_name in listen_for:
            stream = self._stream(api_name, event_name)
            group = self.broker.join_group(stream, self.group_name(listener_name), consumer_id,
                                           since)
            subscriptions.append((stream, group))
        return MemoryEventConsumer(self, subscriptions, consumer_id)

    def decode(self, stream: Stream, offset: int, data: bytes, delivery_count: int
               ) -> EventDelivery:
        """A delivery; a malformed one (to dead-letter) whatever goes wrong decoding it."""
        entry = stream.get(offset)
        try:
            message = event_from_blob(self.serializer.loads(data))
        except Exception as exc:
            return EventDelivery(message=None, delivery_count=delivery_count,
                                 native_id=str(offset), stream=stream.name,
                                 problem=describe(exc), raw=data)
        message.native_id = str(offset)
        message.time = entry.time if entry else None
        return EventDelivery(message=message, delivery_count=delivery_count,
                             native_id=str(offset), stream=stream.name, raw=data)

    async def history(self, api_name: str, event_name: str, start: datetime | None = None,
                      stop: datetime | None = None, undecodable: list[str] | None = None
                      ) -> AsyncIterator[EventMessage]:
        stream = self._stream(api_name, event_name)
        with self.broker.lock:
            entries = list(stream.entries)
        for entry in reversed(entries):
            if (start and entry.time < _aware(start)) or (stop and entry.time > _aware(stop)):
                continue
            delivery = self.decode(stream, entry.offset, entry.data, 0)
            if delivery.message is not None:
                yield delivery.message
            elif undecodable is not None:
                undecodable.append(delivery.native_id)

    async def lag(self, api_name: str, event_name: str, listener_name: str) -> int:
        stream = self._stream(api_name, event_name)
        with self.broker.lock:
            group = stream.groups.get(self.group_name(listener_name))
            if group is None:
                return 0
            return len(group.pending) + stream.unread(group)

    async def groups(self, api_name: str, event_name: str) -> list[GroupInfo]:
        stream = self._stream(api_name, event_name)
        with self.broker.lock:
            found = []
            for group in stream.groups.values():
                held = collections.Counter(p.consumer for p in group.pending.values()
                                           if p.consumer is not None)
                found.append(GroupInfo(
                    stream=stream.name, name=group.name, pending=len(group.pending),
                    lag=stream.unread(group),
                    consumers=[ConsumerInfo(name, held.get(name, 0), None)
                               for name in sorted(group.consumers | set(held))]))
            return found

    def dead_letters(self, api_name: str | None = None, event_name: str | None = None
                     ) -> list[Any]:
        """Dead-lettered entries, optionally of one event (newest last)."""
        with self.broker.lock:
            letters = list(self.broker.dead_letters)
        if api_name is not None and event_name is not None:
            name = self.stream_name(api_name, event_name)
            letters = [letter for letter in letters if letter.stream == name]
        return letters


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class MemoryEventConsumer(EventConsumer):
    def __init__(self, transport: MemoryEventTransport,
                 subscriptions: list[tuple[Stream, ConsumerGroup]], consumer_id: str) -> None:
        self.transport = transport
        self.subscriptions = subscriptions
        self.consumer_id = consumer_id
        self._by_stream = {stream.name: (stream, group) for stream, group in subscriptions}
        self.closed = False

    async def receive(self, limit: int) -> Sequence[EventDelivery]:
        broker = self.transport.broker
        limit = max(1, min(limit, self.transport.batch_size))
        while True:
            if self.closed:
                raise BusError("this consumer is closed")
            found: list[tuple[Stream, int, bytes | None, int]] = []
            next_due: float | None = None
            waiters = []
            with broker.lock:
                for stream, group in self.subscriptions:
                    taken, due = broker.claim(stream, group, self.consumer_id,
                                              limit - len(found))
                    for entry, offset, count in taken:
                        found.append((stream, offset, entry.data if entry else None, count))
                    if due is not None:
                        next_due = due if next_due is None else min(next_due, due)
                if not found:
                    waiters = [stream.waiters.add() for stream, _ in self.subscriptions]
            deliveries = []
            for stream, offset, data, count in found:
                if data is None or replayed_elsewhere(  # trimmed away, or not this group's
                        self.transport, data, self._by_stream[stream.name][1].name):
                    broker.acknowledge(self._by_stream[stream.name][1], [offset])
                    continue
                deliveries.append(self.transport.decode(stream, offset, data, count))
            if deliveries:
                return deliveries
            if found:
                continue
            try:
                await asyncio.wait(waiters, timeout=next_due,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                with broker.lock:
                    for (stream, _), waiter in zip(self.subscriptions, waiters, strict=True):
                        stream.waiters.discard(waiter)
            await asyncio.sleep(0)  # woken by one append: let the rest of a burst land too

    def _locate(self, delivery: EventDelivery) -> tuple[Stream, ConsumerGroup, int]:
        stream, group = self._by_stream[delivery.stream]
        return stream, group, int(delivery.native_id)

    async def acknowledge(self, deliveries: Sequence[EventDelivery]) -> None:
        for delivery in deliveries:
            _, group, offset = self._locate(delivery)
            self.transport.broker.acknowledge(group, [offset])

    async def redeliver(self, delivery: EventDelivery, delay: float) -> None:
        stream, group, offset = self._locate(delivery)
        self.transport.broker.release(stream, group, offset, delay)

    async def dead_letter(self, delivery: EventDelivery, reason: str) -> None:
        stream, group, offset = self._locate(delivery)
        data = delivery.raw if isinstance(delivery.raw, bytes) else b""
        self.transport.broker.dead_letter(stream, group, offset, data, reason)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream, group in self.subscriptions:
            self.transport.broker.leave_group(stream, group, self.consumer_id)


class MemorySchemaTransport(_MemoryTransport, SchemaTransport):
    """Schemas by API name, expiring after their TTL unless stored again."""

    def __init__(self, *, broker: str = "default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._use_broker({"broker": broker})

    async def store(self, api_name: str, schema: dict[str, Any], ttl: float | None) -> None:
        self.broker.store_schema(api_name, self.serializer.dumps(schema), ttl)

    async def load(self) -> dict[str, dict[str, Any]]:
        loaded = {}
        for name, data in self.broker.load_schemas().items():
            try:
                schema = self.serializer.loads(data)
            except Exception:
                continue  # a bad schema must not hide the good ones
            if isinstance(schema, dict):
                loaded[name] = schema
        return loaded
