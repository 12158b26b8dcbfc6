"""Event transport on Redis Streams, in the Lightbus 1.x field layout.

An event is one XADD: bare metadata fields `id`, `api_name`, `event_name`, `version`, then one
`:<parameter>` field per parameter holding its JSON. Streams are per API (`{api}.*:stream`,
the default) or per event (`{api}.{event}:stream`); each listener is the consumer group
`{service}-{listener}`, each process a consumer. Beyond Lightbus: acknowledgements are
batched, entries left pending by a dead consumer are reclaimed with XAUTOCLAIM, a failed
event is redelivered after a delay, and after the configured number of deliveries it is
moved to the dead-letter stream `<stream>:dead` with the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timezone
from typing import Any

from redis.exceptions import RedisError, ResponseError

from bus_core.errors import ConfigError, MessageTooLarge, TransportError
from bus_core.logs import Throttle
from bus_core.messages import (
    MAX_HEADER_LENGTH,
    MAX_HEADERS,
    MAX_NAME_LENGTH,
    EventMessage,
    describe,
    names_problem,
    preview,
    valid_api_name,
    valid_headers,
    valid_member_name,
)
from bus_core.transports import (
    ConsumerInfo,
    EventConsumer,
    EventDelivery,
    EventTransport,
    GroupInfo,
)
from bus_redis.base import Batcher, Probe, RedisTransport, Scripts
from bus_redis.connection import BlockingClient, redact, redis_call
from bus_redis.dead_letters import RedisDeadLetters, replay_for_other_group
from bus_redis.options import EVENT_OPTIONS

logger = logging.getLogger("bus.redis.event")
METADATA_FIELDS = ("id", "api_name", "event_name", "version")
# The entry field holding message headers (a JSON object, e.g. W3C trace context): the empty
# name, the one field a Lightbus 1.x consumer skips (any other bare field makes it raise,
# every ":" field becomes a handler argument). Written only when a plugin set headers.
HEADERS_FIELD = ""
CHECK_EVENT = "any_event"  # with stream_use per_event, the event whose stream is probed
SETTLE_POLL = 0.05  # seconds a read blocks at most while handed-out events are unsettled

OPTIONS = EVENT_OPTIONS


# Delete the group's consumers (but ARGV[2], the caller) that hold no pending entry and were
# idle at least ARGV[3] ms: in one script, so none can take an entry between look and delete.
FORGET_IDLE_CONSUMERS = """
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""


class ReplicationNotConfirmed(TransportError):
    """A fire with `min_replicas`: the master has the entry, but fewer replicas than asked
    confirmed it in time, so a failover now could lose it. Firing again may duplicate it."""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _strict_text(value: bytes | str) -> str:
    """A metadata value as text; UnicodeDecodeError (a malformed entry) if it is not UTF-8."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _headers(raw: bytes | str) -> dict[str, str] | None:
    """The headers field's JSON object, or None when it is not one Bus can use (headers are
    advisory: bad ones are dropped, the event is still delivered)."""
    if len(raw) > MAX_HEADERS * (MAX_NAME_LENGTH + MAX_HEADER_LENGTH):
        return None
    try:
        return valid_headers(json.loads(_strict_text(raw)))
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, or nested past the parser
        return None


def stream_id_from_datetime(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return f"{int(moment.timestamp() * 1000)}-0"


def datetime_from_stream_id(stream_id: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(stream_id.split("-")[0]) / 1000, tz=timezone.utc)
    except ValueError:
        return None


class RedisEventTransport(RedisDeadLetters, RedisTransport, EventTransport):
    def __init__(self, *, stream_use: str = "per_api", max_stream_length: int | None = 100_000,
                 batch_size: int = 100, blocking_timeout: float = 5.0, claim_idle: float = 60.0,
                 reclaim_interval: float | None = None, dead_letter_suffix: str = ":dead",
                 forget_consumers_after: float | None = 3600.0, min_replicas: int = 0,
                 min_replicas_timeout: float = 1.0, min_replicas_for_acks: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if min_replicas and self.socket_timeout is not None \
                and self.socket_timeout <= min_replicas_timeout:
            raise ConfigError(f"event transport at {redact(self.url)}: socket_timeout "
                              f"({self.socket_timeout}s) must be longer than "
                              f"min_replicas_timeout ({min_replicas_timeout}s): WAIT holds "
                              "the reply that long")
        self.min_replicas = min_replicas
        self.min_replicas_timeout = min_replicas_timeout
        self.min_replicas_for_acks = min_replicas_for_acks
        self._unconfirmed_acks = Throttle(logger)
        self.stream_use = stream_use
        self.max_stream_length = max_stream_length
        self.batch_size = batch_size
        self.blocking_timeout = blocking_timeout
        self.claim_idle = claim_idle
        self.reclaim_interval = reclaim_interval or claim_idle / 2
        self.dead_letter_suffix = dead_letter_suffix
        # Decoding reads fields through the serializer itself: the size bound is checked
        # once for the whole entry (each field is then within it too).
        self._loads = getattr(self.serializer, "inner", self.serializer).loads
        self._max_size: int | None = getattr(self.serializer, "max_size", None)
        self.forget_consumers_after = forget_consumers_after
        self._batcher: Batcher[tuple[str, dict[str, Any]], Any] = Batcher(self._send_batch)

    def stream_name(self, api_name: str, event_name: str) -> str:
        if self.stream_use == "per_event":
            return f"{api_name}.{event_name}:stream"
        return f"{api_name}.*:stream"

    def group_name(self, listener_name: str) -> str:
        return f"{self.service_name}-{listener_name}"

    def check_probes(self, api_names: list[str], version: tuple[int, ...] | None
                     ) -> list[Probe]:
        """Per API: a fire (XADD, and WAIT with `min_replicas`); a listener's group and
        reads (XGROUP CREATE, XREADGROUP, XPENDING, XCLAIM, XAUTOCLAIM, XACK), its dead
        letters (MULTI, XADD, EXEC) and, optional, the forgetting of idle consumers (a
        script, XINFO CONSUMERS, XGROUP DELCONSUMER). With `per_event` streams, the stream
        of an event named `any_event` stands for each event's."""
        probes: list[Probe] = []
        group, consumer = self.group_name("listener"), self.process_name
        trim = ("MAXLEN", "~", self.max_stream_length) if self.max_stream_length else ()
        for api in api_names:
            stream = self.stream_name(api, CHECK_EVENT)
            dead = self.dead_letter_stream(stream)
            firing, listening = f"fire {api} events", f"listen on {api} events"
            probes.append(Probe("fire", firing, ("XADD", stream, *trim, "*", "f", "v")))
            if self.min_replicas:
                probes.append(Probe("fire", firing, ("WAIT", self.min_replicas, 1)))
            entry = "0-1"
            probes += [Probe("listen", listening, command) for command in (
                ("XGROUP", "CREATE", stream, group, "$", "MKSTREAM"),
                ("XREADGROUP", "GROUP", group, consumer, "COUNT", self.batch_size, "BLOCK", 1,
                 "STREAMS", stream, ">"),
                ("XPENDING", stream, group, entry, entry, 1),
                ("XCLAIM", stream, group, consumer, 0, entry),
                ("XAUTOCLAIM", stream, group, consumer, 1000, "0-0", "COUNT",
                 self.batch_size),
                ("XACK", stream, group, entry),
                ("MULTI",), ("XADD", dead, *trim, "*", "f", "v"), ("EXEC",))]
            if self.min_replicas_for_acks and self.min_replicas:
                probes.append(Probe("listen", listening, ("WAIT", self.min_replicas, 1)))
            if self.forget_consumers_after is not None:
                lost = "consumers of processes that are gone pile up in the listener groups"
                for command in self.scripts.probes("forget_idle_consumers", [stream],
                                                   [group, consumer, 1000]):
                    probes.append(Probe("listen", listening, command, lost))
                probes += [Probe("listen", listening, ("XINFO", "CONSUMERS", stream, group),
                                 lost),
                           Probe("listen", listening,
                                 ("XGROUP", "DELCONSUMER", stream, group, consumer), lost)]
        return probes

    # -- encoding ------------------------------------------------------------------------

    def encode(self, message: EventMessage) -> dict[str, bytes | str]:
        fields: dict[str, bytes | str] = {
            "id": message.id,
            "api_name": message.api_name,
            "event_name": message.event_name,
            "version": str(message.version),
        }
        size = 0
        for name, value in message.kwargs.items():
            fields[f":{name}"] = data = self.serializer.dumps(value)
            size += len(data)
        if message.headers:
            fields[HEADERS_FIELD] = json.dumps(message.headers, separators=(",", ":"))
        limit = getattr(self.serializer, "max_size", None)
        if limit is not None and size > limit:  # each field is bounded; so is their sum
            raise MessageTooLarge(f"event {message.canonical_name}'s parameters are {size} "
                                  f"bytes in all, above bus.max_message_size ({limit})")
        return fields

    def decode(self, stream: str, entry_id: str, fields: dict[bytes, bytes] | None,
               delivery_count: int) -> EventDelivery | None:
        """A delivery, or None for an entry to skip silently (noop or trimmed). Never
        raises: whatever goes wrong decoding one entry (any exception, from any serializer)
        makes it a malformed delivery, to be dead-lettered on its own."""
        try:
            return self._decode(stream, entry_id, fields, delivery_count)
        except Exception as exc:
            return EventDelivery(message=None, delivery_count=delivery_count, native_id=entry_id,
                                 stream=stream, raw=fields,
                                 problem=f"cannot decode the entry: {describe(exc)}")

    def _decode(self, stream: str, entry_id: str, fields: dict[bytes, bytes] | None,
                delivery_count: int) -> EventDelivery | None:
        """One pass over an entry whose field names are bytes (as Bus reads them); anything
        else goes the general way (`_decode_fields`), which says what is wrong."""
        if not fields:
            return None
        limit = self._max_size
        if limit is not None and sum(map(len, fields.values())) > limit:
            return self._decode_fields(stream, entry_id, fields, delivery_count)
        loads = self._loads
        kwargs: dict[str, Any] = {}
        headers = None
        try:
            for raw_name, raw_value in fields.items():
                if raw_name[:1] == b":":
                    kwargs[raw_name[1:].decode("utf-8", "replace")] = loads(raw_value)
                elif raw_name == b"" and raw_value:
                    headers = _headers(raw_value)
            message_id = fields[b"id"].decode()
            api_name = fields[b"api_name"].decode()
            event_name = fields[b"event_name"].decode()
            version = int(fields[b"version"])
        except Exception:  # a bad field, a missing or empty one: the general way says which
            return self._decode_fields(stream, entry_id, fields, delivery_count)
        if not (message_id and api_name and event_name) or names_problem(
                message_id, api_name, "event_name", event_name) is not None:
            return self._decode_fields(stream, entry_id, fields, delivery_count)
        message = EventMessage(api_name=api_name, event_name=event_name, kwargs=kwargs,
                               id=message_id, version=version, native_id=entry_id,
                               time=datetime_from_stream_id(entry_id), headers=headers)
        return EventDelivery(message=message, delivery_count=delivery_count, native_id=entry_id,
                             stream=stream, raw=fields)

    def _decode_fields(self, stream: str, entry_id: str, fields: dict[bytes, bytes] | None,
                       delivery_count: int) -> EventDelivery | None:
        if not fields or set(fields) == {b""}:
            return None
        metadata: dict[str, str] = {}
        kwargs: dict[str, Any] = {}
        problem = None
        limit = getattr(self.serializer, "max_size", None)
        # The parameters' fields, as the sender counted them (metadata is not counted).
        size = sum(len(value) for name, value in fields.items() if name[:1] in (b":", ":"))
        if limit is not None and size > limit:
            return EventDelivery(message=None, delivery_count=delivery_count, native_id=entry_id,
                                 stream=stream, raw=fields,
                                 problem=f"entry's parameters are {size} bytes in all, above "
                                         f"bus.max_message_size ({limit})")
        loads = self.serializer.loads
        headers = None
        for raw_name, raw_value in fields.items():
            name = _text(raw_name)
            if name.startswith(":"):
                try:
                    kwargs[name[1:]] = loads(raw_value)
                except Exception as exc:
                    problem = f"parameter {preview(name[1:])}: {describe(exc)}"
                    break
            elif name in METADATA_FIELDS:  # other bare fields are ignored
                metadata[name] = _strict_text(raw_value)
            elif name == HEADERS_FIELD and raw_value:
                headers = _headers(raw_value)
        missing = [key for key in METADATA_FIELDS if not metadata.get(key)]
        if missing and problem is None:
            problem = f"missing metadata field(s) {', '.join(missing)}"
        version = 1
        if problem is None:
            problem = names_problem(metadata["id"], metadata["api_name"], "event_name",
                                    metadata["event_name"])
        if problem is None:
            try:
                version = int(metadata["version"])
            except ValueError:
                problem = f"version {preview(metadata['version'])} is not an integer"
        if problem is not None:
            return EventDelivery(message=None, delivery_count=delivery_count, native_id=entry_id,
                                 stream=stream, problem=problem, raw=fields)
        message = EventMessage(api_name=metadata["api_name"], event_name=metadata["event_name"],
                               kwargs=kwargs, id=metadata["id"], version=version,
                               native_id=entry_id, time=datetime_from_stream_id(entry_id),
                               headers=headers)
        return EventDelivery(message=message, delivery_count=delivery_count, native_id=entry_id,
                             stream=stream, raw=fields)

    # -- publishing ----------------------------------------------------------------------

    async def send_event(self, message: EventMessage) -> None:
        stream = self.stream_name(message.api_name, message.event_name)
        item = (stream, self.encode(message))
        reply = await redis_call(self.url, f"cannot fire {message.canonical_name}",
                                 lambda: self._batcher.submit(item))
        self._settle(message, stream, reply)

    async def send_events(self, messages: Sequence[EventMessage]) -> None:
        """One pipeline of XADDs (per 500) for a `fire_many`."""
        for start in range(0, len(messages), 500):
            chunk = messages[start:start + 500]
            items = [(self.stream_name(m.api_name, m.event_name), self.encode(m))
                     for m in chunk]
            replies = await redis_call(
                self.url, f"cannot fire {len(messages)} {chunk[0].canonical_name} event(s)",
                lambda items=items: self._send_batch(items))  # type: ignore[misc]
            for message, (stream, _), reply in zip(chunk, items, replies, strict=True):
                self._settle(message, stream, reply)

    def _settle(self, message: EventMessage, stream: str, reply: Any) -> None:
        """Record the entry id XADD gave `message`; with min_replicas, refuse a write too
        few replicas confirmed."""
        replicas = None
        if self.min_replicas:
            reply, replicas = reply
        message.native_id = _text(reply)
        message.time = datetime_from_stream_id(message.native_id)
        if replicas is not None and replicas < self.min_replicas:
            raise ReplicationNotConfirmed(
                f"cannot confirm {message.canonical_name}: it was written on the master at "
                f"{redact(self.url)} (entry {message.native_id} of {stream}) but only "
                f"{replicas} of the {self.min_replicas} replica(s) asked for (min_replicas) "
                f"confirmed it within {self.min_replicas_timeout:g}s; a failover now may "
                "lose it, and firing it again may deliver it twice")

    async def _send_batch(self, events: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """XADD each event; with min_replicas, WAIT on the same connection (one pipeline)
        and return (entry id, replicas that confirmed) pairs instead of entry ids."""
        maxlen = self.max_stream_length or None
        if len(events) == 1 and not self.min_replicas:  # a pipeline of one only costs more
            stream, fields = events[0]
            return [await self.redis.xadd(stream, fields, maxlen=maxlen, approximate=True)]
        pipe = self.redis.pipeline(transaction=False)
        for stream, fields in events:
            pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)
        if not self.min_replicas:
            return list(await pipe.execute())
        wait_ms = max(1, int(self.min_replicas_timeout * 1000))
        if self.cluster:
            return await self._send_batch_waiting_per_node(pipe, events, wait_ms)
        pipe.wait(self.min_replicas, wait_ms)
        *entry_ids, replicas = await pipe.execute()
        return [(entry_id, int(replicas)) for entry_id in entry_ids]

    async def _send_batch_waiting_per_node(self, pipe: Any, events: list[tuple[str, Any]],
                                           wait_ms: int) -> list[Any]:
        """Cluster mode, min_replicas: WAIT has no key, so it is sent to each node that
        takes XADDs of the batch, after them, in the same per-node part of the pipeline
        (one connection per node): each event gets the count of its own node."""
        nodes = [await self.shared.node_for_key(stream) for stream, _ in events]
        distinct = list({node.name: node for node in nodes}.values())
        for node in distinct:
            pipe.execute_command("WAIT", self.min_replicas, wait_ms, target_nodes=node)
        replies = await pipe.execute()
        entry_ids, waits = replies[:len(events)], replies[len(events):]
        confirmed = {node.name: int(count) for node, count in zip(distinct, waits,
                                                                   strict=True)}
        return [(entry_id, confirmed[node.name])
                for entry_id, node in zip(entry_ids, nodes, strict=True)]

    # -- consuming -----------------------------------------------------------------------

    async def open_consumer(self, listen_for: Sequence[tuple[str, str]], listener_name: str,
                            since: str | datetime | None = None) -> EventConsumer:
        streams = list(dict.fromkeys(self.stream_name(a, e) for a, e in listen_for))
        group = self.group_name(listener_name)
        start = "$" if since is None else (
            stream_id_from_datetime(since) if isinstance(since, datetime) else str(since))
        await redis_call(self.url, f"cannot join listener {listener_name!r}",
                         lambda: self.create_groups(streams, group, start))
        await self.forget_idle_consumers(streams, group)
        return RedisEventConsumer(self, streams, group, listen_for)

    scripts = Scripts(forget_idle_consumers=FORGET_IDLE_CONSUMERS)

    async def forget_idle_consumers(self, streams: Sequence[str], group: str) -> int:
        """Delete the group's consumers that hold nothing and were idle longer than
        `forget_consumers_after`: each process name is a consumer of its own, so without
        this the consumers of every past process would pile up. Deleting one that holds no
        entry loses nothing (a live one is re-created by its next read). Best effort."""
        if self.forget_consumers_after is None:
            return 0
        removed = 0
        for stream in streams:
            try:
                removed += int(await self.scripts.run(
                    self.redis, "forget_idle_consumers", [stream],
                    [group, self.process_name, int(self.forget_consumers_after * 1000)]))
            except (RedisError, OSError) as exc:
                logger.debug("forgetting idle consumers of %s on %s failed: %s", group, stream,
                             exc)
        if removed:
            logger.info("listener group %s: forgot %d idle consumer(s) holding nothing", group,
                        removed)
        return removed

    async def create_groups(self, streams: Sequence[str], group: str, start: str) -> None:
        """Create the group on each stream (and the stream, if need be); an existing group
        keeps its position."""
        for stream in streams:
            try:
                await self.redis.xgroup_create(stream, group, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def history(self, api_name: str, event_name: str, start: datetime | None = None,
                      stop: datetime | None = None, undecodable: list[str] | None = None
                      ) -> AsyncIterator[EventMessage]:
        stream = self.stream_name(api_name, event_name)
        high = stream_id_from_datetime(stop).replace("-0", "-18446744073709551615") if stop \
            else "+"
        low = stream_id_from_datetime(start) if start else "-"
        while True:
            entries = await redis_call(
                self.url, f"cannot read the history of {api_name}.{event_name}",
                lambda high=high: self.redis.xrevrange(stream, max=high, min=low,
                                                       count=self.batch_size))
            if not entries:
                return
            for entry_id, fields in entries:
                delivery = self.decode(stream, _text(entry_id), fields, 0)
                if delivery is None:
                    continue
                if delivery.message is None:
                    if undecodable is not None:
                        undecodable.append(delivery.native_id)
                elif delivery.message.event_name == event_name:
                    yield delivery.message
            last = _text(entries[-1][0])
            milliseconds, sequence = (int(part) for part in last.split("-"))
            if sequence > 0:
                high = f"{milliseconds}-{sequence - 1}"
            elif milliseconds > 0:
                high = f"{milliseconds - 1}-18446744073709551615"
            else:
                return

    async def lag(self, api_name: str, event_name: str, listener_name: str) -> int:
        stream = self.stream_name(api_name, event_name)
        return await redis_call(self.url, f"cannot read the lag of {listener_name!r}",
                                lambda: self._lag(stream, self.group_name(listener_name)))

    async def _lag(self, stream: str, group: str) -> int:
        try:
            groups = await self.redis.xinfo_groups(stream)
        except ResponseError:  # no such stream yet
            return 0
        for info in groups:
            if _text(info["name"]) == group:
                unread = info.get("lag")
                if unread is None:  # Redis < 7: count what follows the group's position
                    unread = len(await self.redis.xrange(
                        stream, min=f"({_text(info['last-delivered-id'])}", max="+"))
                return int(unread) + int(info["pending"])
        return 0

    async def groups(self, api_name: str, event_name: str) -> list[GroupInfo]:
        stream = self.stream_name(api_name, event_name)
        return await redis_call(self.url, f"cannot read the listener groups of {stream}",
                                lambda: self._groups(stream))

    async def _groups(self, stream: str) -> list[GroupInfo]:
        try:
            groups = await self.redis.xinfo_groups(stream)
        except ResponseError:  # no such stream yet
            return []
        found = []
        for info in groups:
            name = _text(info["name"])
            consumers = await self.redis.xinfo_consumers(stream, name)
            lag = info.get("lag")
            found.append(GroupInfo(
                stream=stream, name=name, pending=int(info["pending"]),
                lag=None if lag is None else int(lag),
                consumers=[ConsumerInfo(_text(c["name"]), int(c["pending"]),
                                        int(c["idle"]) / 1000) for c in consumers]))
        return found

    def dead_letter_stream(self, stream: str) -> str:
        return stream + self.dead_letter_suffix


class RedisEventConsumer(EventConsumer):
    """One listener's consumer on one or more streams."""

    def __init__(self, transport: RedisEventTransport, streams: list[str], group: str,
                 wanted: Sequence[tuple[str, str]]) -> None:
        self.transport = transport
        self.streams = streams
        self.group = group
        self.consumer = transport.process_name
        # First, what this consumer held when it last stopped: read once, page by page.
        self._pending_cursor: dict[str, str] | None = dict.fromkeys(streams, "0")
        self._retries: dict[tuple[str, str], tuple[float, int]] = {}  # -> (due at, count)
        self._next_reclaim = 0.0
        # Idle consumers of gone processes were forgotten when this one joined; so they are
        # again every so often while it runs (a long-lived worker outlives many restarts).
        self._next_forget = time.monotonic() + self._forget_interval()
        self._reclaim_cursor = dict.fromkeys(streams, "0-0")
        self._blocking = BlockingClient(transport.shared)
        self._last_seen: dict[str, tuple[int, int]] = {}  # newest entry id read, per stream
        self._outstanding: set[tuple[str, str]] = set()  # handed out, not yet settled
        self._heartbeat: asyncio.Task[None] | None = None
        self.wanted: set[tuple[str, str]] = set(wanted)
        self.wanted_raw = {(api.encode(), event.encode()) for api, event in self.wanted}
        # Cluster mode: a blocking read of its own in flight per stream, and what the
        # finished ones brought beyond what was handed out (see _read_by_stream).
        self._reads: dict[str, asyncio.Task[list[Any]]] = {}
        self._unread: dict[str, list[Any]] = {stream: [] for stream in streams}
        self._stream_clients: dict[str, BlockingClient] = {}
        self._next_stream = 0

    async def receive(self, limit: int) -> Sequence[EventDelivery]:
        try:
            return await self._receive(limit)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream or group vanished (a Redis restarted without persistence, or
            # someone deleted it): join again after the newest entry this consumer read, or
            # from the start of a stream it never read. Not from "$": what was published
            # between the restart and this rejoin would be skipped, never delivered.
            logger.warning("consumer group %s is gone from Redis; creating it again",
                           self.group)
            for stream in self.streams:
                seen = self._last_seen.get(stream)
                await self.transport.create_groups(
                    [stream], self.group, f"{seen[0]}-{seen[1]}" if seen else "0")
            self._reclaim_cursor = dict.fromkeys(self.streams, "0-0")
            return []

    async def _receive(self, limit: int) -> Sequence[EventDelivery]:
        limit = max(1, min(limit, self.transport.batch_size))
        while True:
            deliveries = await self._due_retries(limit)
            if not deliveries and self._pending_cursor is not None:
                deliveries = await self._read_own_pending(limit)
            if not deliveries and time.monotonic() >= self._next_reclaim:
                deliveries = await self._reclaim(limit)
            if not deliveries:
                deliveries = await self._read(limit, ">", block=self._block_ms())
            if deliveries:
                self._outstanding.update((d.stream, d.native_id) for d in deliveries)
                if self._heartbeat is None:
                    self._heartbeat = asyncio.get_running_loop().create_task(
                        self._keep_claimed(), name=f"bus:heartbeat:{self.group}")
                return deliveries

    def _block_ms(self) -> int:
        now = time.monotonic()
        until = min([self._next_reclaim, *(due for due, _ in self._retries.values())],
                    default=now + self.transport.blocking_timeout)
        seconds = min(max(until - now, 0.001), self.transport.blocking_timeout)
        if self._outstanding:
            # A handler may fail meanwhile and ask for a redelivery, which only a new read
            # would notice: wake up soon rather than after the whole blocking_timeout.
            seconds = min(seconds, SETTLE_POLL)
        return max(1, int(seconds * 1000))

    async def _read_own_pending(self, limit: int) -> list[EventDelivery]:
        """The next page of entries this consumer held unacknowledged when it stopped."""
        assert self._pending_cursor is not None
        if self.transport.cluster:
            return await self._read_own_pending_by_stream(limit)
        reply = await self.transport.redis.xreadgroup(self.group, self.consumer,
                                                      self._pending_cursor, count=limit)
        if not any(entries for _, entries in reply or ()):
            self._pending_cursor = None
            return []
        for raw_stream, entries in reply:
            if entries:
                self._pending_cursor[_text(raw_stream)] = _text(entries[-1][0])
        return await self._deliveries(reply, await self._delivery_counts(reply))

    async def _read_own_pending_by_stream(self, limit: int) -> list[EventDelivery]:
        """Cluster mode: the same, one stream at a time (XREADGROUP cannot span slots)."""
        cursor = self._pending_cursor
        assert cursor is not None
        for stream in list(cursor):
            reply = await self.transport.redis.xreadgroup(
                self.group, self.consumer, {stream: cursor[stream]}, count=limit)
            entries = [(raw_stream, rows) for raw_stream, rows in reply or () if rows]
            if not entries:
                del cursor[stream]
                continue
            cursor[stream] = _text(entries[-1][1][-1][0])
            return await self._deliveries(entries, await self._delivery_counts(entries))
        self._pending_cursor = None
        return []

    async def _read_by_stream(self, limit: int, block: int) -> list[EventDelivery]:
        """Cluster mode: the streams may be on different nodes and one XREADGROUP cannot
        span slots, so each stream has one blocking read of its own in flight (each on a
        connection of its own, blocking up to `blocking_timeout`: a quiet listener costs no
        CPU, and an entry on any stream is seen at once). This waits up to `block` ms for
        one to finish, then hands out what the finished reads brought, up to `limit`,
        starting with a different stream each time; the rest waits for the next receive
        (those entries are already pending on this consumer: nothing is lost, and they are
        reclaimed elsewhere if this process dies). Reads are not cancelled until close."""
        loop = asyncio.get_running_loop()
        timeout_ms = max(1, int(self.transport.blocking_timeout * 1000))
        for stream in self.streams:
            if stream not in self._reads and not self._unread[stream]:
                self._reads[stream] = loop.create_task(
                    self._read_stream(stream, limit, timeout_ms),
                    name=f"bus:event-read:{self.group}:{stream}")
        if not any(self._unread.values()):
            await asyncio.wait(list(self._reads.values()), timeout=block / 1000,
                               return_when=asyncio.FIRST_COMPLETED)
        failure: BaseException | None = None
        for stream, task in list(self._reads.items()):
            if not task.done():
                continue
            del self._reads[stream]
            error = task.exception() if not task.cancelled() else asyncio.CancelledError()
            if error is None:
                self._unread[stream] += task.result()
                continue
            client = self._stream_clients.pop(stream, None)
            if client is not None:
                await client.close()
            failure = failure or error
        order = self.streams[self._next_stream:] + self.streams[:self._next_stream]
        self._next_stream = (self._next_stream + 1) % len(self.streams)
        reply: list[tuple[str, list[Any]]] = []
        room = limit
        for stream in order:
            if room <= 0:
                break
            rows = self._unread[stream]
            if rows:
                reply.append((stream, rows[:room]))
                self._unread[stream] = rows[room:]
                room -= len(reply[-1][1])
        if not reply and failure is not None:
            raise failure
        return await self._deliveries(reply, {})

    async def _read_stream(self, stream: str, limit: int, block: int) -> list[Any]:
        """One blocking XREADGROUP of new entries on `stream` (a cluster client of its
        own, following MOVED and failovers); its entries, or []."""
        client = self._stream_clients.get(stream)
        if client is None:
            client = self._stream_clients[stream] = BlockingClient(self.transport.shared)
        reply = await client.client.xreadgroup(self.group, self.consumer, {stream: ">"},
                                               count=limit, block=block)
        return [row for _, rows in reply or () for row in rows]

    async def _read(self, limit: int, position: str, block: int) -> list[EventDelivery]:
        """New entries (position ">"), waiting up to `block` ms on the blocking link."""
        if self.transport.cluster:
            return await self._read_by_stream(limit, block)
        streams = dict.fromkeys(self.streams, position)
        try:
            reply = await self._blocking.client.xreadgroup(
                self.group, self.consumer, streams, count=limit, block=block)
        except BaseException:
            await self._blocking.reset()
            raise
        return await self._deliveries(reply or [], {})

    async def _delivery_counts(self, reply: Any) -> dict[tuple[str, str], int]:
        pipe = self.transport.redis.pipeline(transaction=False)
        asked = []
        for stream, entries in reply:
            for entry_id, _ in entries:
                pipe.xpending_range(stream, self.group, entry_id, entry_id, 1)
                asked.append((_text(stream), _text(entry_id)))
        counts = {}
        for key, rows in zip(asked, await pipe.execute(), strict=True):
            counts[key] = int(rows[0]["times_delivered"]) if rows else 1
        return counts

    async def _deliveries(self, reply: Any, counts: dict[tuple[str, str], int]
                          ) -> list[EventDelivery]:
        deliveries, skipped = [], []
        decode = self.transport.decode
        for raw_stream, entries in reply:
            stream = _text(raw_stream)
            if entries:  # ids rise within a stream's reply: its last one is the newest seen
                self._saw(stream, _text(entries[-1][0]))
            for raw_id, fields in entries:
                entry_id = _text(raw_id)
                delivery = None if self._unwanted(fields) else decode(
                    stream, entry_id, fields, counts.get((stream, entry_id), 1))
                if delivery is None:
                    skipped.append((stream, entry_id))
                else:
                    deliveries.append(delivery)
        if skipped:  # noop, trimmed and unwanted entries: acknowledged, never handed out
            pipe = self.transport.redis.pipeline(transaction=False)
            for stream, entry_id in skipped:
                pipe.xack(stream, self.group, entry_id)
            await pipe.execute()
        return deliveries

    def _unwanted(self, fields: dict[bytes, bytes] | None) -> bool:
        """An entry of another event on a shared (per-API) stream: not this listener's,
        even when it is malformed (its own listeners dead-letter it). An entry whose names
        are not valid is nobody's event: every listener dead-letters it."""
        if not fields:
            return False
        if b"" in fields and replay_for_other_group(fields, self.group):
            return True
        api, event = fields.get(b"api_name"), fields.get(b"event_name")
        if api is None or event is None or (api, event) in self.wanted_raw:
            return False
        names = (_text(api), _text(event))
        return names not in self.wanted and valid_api_name(names[0]) \
            and valid_member_name(names[1])

    def _saw(self, stream: str, entry_id: str) -> None:
        milliseconds, _, sequence = entry_id.partition("-")
        try:
            seen = (int(milliseconds), int(sequence or 0))
        except ValueError:
            return
        if seen > self._last_seen.get(stream, (-1, -1)):
            self._last_seen[stream] = seen

    async def _due_retries(self, limit: int) -> list[EventDelivery]:
        now = time.monotonic()
        due = [key for key, (at, _) in self._retries.items() if at <= now][:limit]
        if not due:
            return []
        redis = self.transport.redis
        deliveries = []
        for stream, entry_id in due:
            _, count = self._retries.pop((stream, entry_id))
            claimed = await redis.xclaim(stream, self.group, self.consumer, 0, [entry_id])
            for raw_id, fields in claimed:
                delivery = self.transport.decode(stream, _text(raw_id), fields, count + 1)
                if delivery is None:
                    await redis.xack(stream, self.group, entry_id)
                else:
                    deliveries.append(delivery)
        return deliveries

    def _forget_interval(self) -> float:
        after = self.transport.forget_consumers_after
        return float("inf") if after is None else max(after / 4, self.transport.reclaim_interval)

    async def _reclaim(self, limit: int) -> list[EventDelivery]:
        """Take over entries that another consumer of this group has held, silently, for
        longer than `claim_idle`: that consumer has most likely died."""
        transport = self.transport
        now = time.monotonic()
        self._next_reclaim = now + transport.reclaim_interval
        if now >= self._next_forget:
            self._next_forget = now + self._forget_interval()
            await transport.forget_idle_consumers(self.streams, self.group)
        idle_ms = int(transport.claim_idle * 1000)
        gathered: list[tuple[str, list[Any]]] = []
        for stream in self.streams:
            try:
                reply = await transport.redis.xautoclaim(
                    stream, self.group, self.consumer, idle_ms,
                    start_id=self._reclaim_cursor[stream], count=limit)
            except ResponseError as exc:  # the group or stream was deleted meanwhile
                logger.warning("reclaiming on %s failed: %s", stream, exc)
                continue
            cursor, entries = _text(reply[0]), reply[1]
            self._reclaim_cursor[stream] = cursor
            # Our own handlers' entries are kept fresh by the heartbeat; should one slip
            # through (a stalled loop), it is still being handled here: do not hand it out.
            entries = [e for e in entries if (stream, _text(e[0])) not in self._outstanding]
            if entries:
                gathered.append((stream, entries))
                logger.info("reclaimed %d event(s) on %s for %s, idle for over %gs (their "
                            "consumer stopped or died)", len(entries), stream, self.group,
                            transport.claim_idle)
        if not gathered:
            return []
        counts = await self._delivery_counts(gathered)
        return await self._deliveries(gathered, counts)

    async def _keep_claimed(self) -> None:
        """While handlers run, reset their entries' idle time (XCLAIM ... JUSTID, which
        does not count as a delivery), so a slow handler's event is not reclaimed and run
        again elsewhere: it is reclaimed only once this process stops answering."""
        interval = self.transport.claim_idle / 3
        while True:
            await asyncio.sleep(interval)
            by_stream: dict[str, list[str]] = {}
            for stream, entry_id in list(self._outstanding):
                by_stream.setdefault(stream, []).append(entry_id)
            try:
                for stream, ids in by_stream.items():
                    await self.transport.redis.xclaim(stream, self.group, self.consumer, 0,
                                                      ids, justid=True)
            except Exception as exc:
                logger.warning("refreshing in-flight events on %s failed: %s", self.group, exc)

    async def acknowledge(self, deliveries: Sequence[EventDelivery]) -> None:
        by_stream: dict[str, list[str]] = {}
        for delivery in deliveries:
            by_stream.setdefault(delivery.stream, []).append(delivery.native_id)
            self._retries.pop((delivery.stream, delivery.native_id), None)
            self._outstanding.discard((delivery.stream, delivery.native_id))

        transport = self.transport
        wait_for = transport.min_replicas if transport.min_replicas_for_acks else 0

        async def ack() -> None:
            if len(by_stream) == 1 and not wait_for:  # one stream: one XACK, no pipeline
                ((stream, ids),) = by_stream.items()
                await transport.redis.xack(stream, self.group, *ids)
                return
            pipe = transport.redis.pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.xack(stream, self.group, *ids)
            wait_ms = max(1, int(transport.min_replicas_timeout * 1000))
            waits = 0
            if wait_for and transport.cluster:  # WAIT on each node that took XACKs
                nodes = {}
                for stream in by_stream:
                    node = await transport.shared.node_for_key(stream)
                    nodes[node.name] = node
                for node in nodes.values():
                    pipe.execute_command("WAIT", wait_for, wait_ms, target_nodes=node)
                waits = len(nodes)
            elif wait_for:
                pipe.wait(wait_for, wait_ms)
                waits = 1
            replies = await pipe.execute()
            confirmed = min((int(count) for count in replies[len(replies) - waits:]),
                            default=wait_for)
            if wait_for and confirmed < wait_for:
                # Acknowledged on the master: a failover now may only bring them back.
                transport._unconfirmed_acks.warning(
                    "acknowledging %d event(s) of %s: %d of the %d replica(s) asked for "
                    "confirmed within %gs; after a failover they may be delivered again",
                    len(deliveries), self.group, confirmed, wait_for,
                    transport.min_replicas_timeout)

        await redis_call(transport.url, "cannot acknowledge events", ack)

    async def redeliver(self, delivery: EventDelivery, delay: float) -> None:
        # It stays pending under this consumer; XCLAIM hands it back when due. Should this
        # process die first, another consumer reclaims it after claim_idle.
        self._retries[(delivery.stream, delivery.native_id)] = (
            time.monotonic() + delay, delivery.delivery_count)
        self._outstanding.discard((delivery.stream, delivery.native_id))

    async def dead_letter(self, delivery: EventDelivery, reason: str) -> None:
        transport = self.transport
        fields: dict[Any, Any] = dict(delivery.raw) if isinstance(delivery.raw, dict) else {}
        fields.update({
            "bus_dead_reason": reason,
            "bus_dead_group": self.group,
            "bus_dead_entry_id": delivery.native_id,
            "bus_dead_delivery_count": str(delivery.delivery_count),
            "bus_dead_time": datetime.now(timezone.utc).isoformat(),
        })
        self._retries.pop((delivery.stream, delivery.native_id), None)
        self._outstanding.discard((delivery.stream, delivery.native_id))

        async def move() -> None:
            if transport.cluster:
                # The dead-letter stream hashes apart from its stream: XADD, then XACK
                # (not atomic: a crash between them leaves the entry pending, so it is
                # dead-lettered again by whoever reclaims it: a duplicate, never a loss).
                await transport.redis.xadd(
                    transport.dead_letter_stream(delivery.stream), fields,
                    maxlen=transport.max_stream_length or None, approximate=True)
                await transport.redis.xack(delivery.stream, self.group, delivery.native_id)
                return
            pipe = transport.redis.pipeline(transaction=True)
            pipe.xadd(transport.dead_letter_stream(delivery.stream), fields,
                      maxlen=transport.max_stream_length or None, approximate=True)
            pipe.xack(delivery.stream, self.group, delivery.native_id)
            await pipe.execute()

        await redis_call(transport.url, "cannot dead-letter an event", move)

    async def close(self) -> None:
        # Entries still held stay pending; after claim_idle another consumer reclaims them.
        self._retries.clear()
        self._outstanding.clear()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._heartbeat
        reads, self._reads = self._reads, {}
        for task in reads.values():
            task.cancel()
        for task in reads.values():  # what a cancelled read took stays pending: reclaimed
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        clients, self._stream_clients = self._stream_clients, {}
        for client in clients.values():
            await client.close()
        self._unread = {stream: [] for stream in self.streams}
        await self._blocking.close()

