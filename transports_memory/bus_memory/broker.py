"""The shared in-process store behind the memory transports. Thread-safe: clients on
different event loops and threads use one broker; waiters are woken on their own loop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

MAX_DEAD_LETTERS = 100_000  # per broker; the oldest go first


class _Waiters:
    """Futures on any loop, woken thread-safely when something they wait for changes."""

    def __init__(self) -> None:
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def add(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._futures.append((loop, future))
        return future

    def discard(self, future: asyncio.Future[None]) -> None:
        self._futures = [(lp, f) for lp, f in self._futures if f is not future]

    def wake_all(self) -> None:
        futures, self._futures = self._futures, []
        for loop, future in futures:
            _wake(loop, future)


def _wake(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    def set_result() -> None:
        if not future.done():
            future.set_result(None)

    if loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        set_result()
    else:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(set_result)


@dataclass
class StreamEntry:
    offset: int
    data: bytes
    time: datetime

    @property
    def native_id(self) -> str:
        return str(self.offset)


@dataclass
class PendingEntry:
    offset: int
    consumer: str | None  # None: released, deliverable to any consumer of the group
    delivery_count: int
    available_at: float  # monotonic time from which it may be delivered again


@dataclass
class ConsumerGroup:
    name: str
    next_offset: int
    pending: dict[int, PendingEntry] = field(default_factory=dict)
    consumers: set[str] = field(default_factory=set)


@dataclass
class DeadLetter:
    stream: str
    group: str
    native_id: str
    data: bytes
    reason: str
    time: datetime


class Stream:
    """One event's entries. `lock` is the broker's: appends come from any thread."""

    def __init__(self, name: str, max_length: int | None,
                 lock: threading.RLock | None = None) -> None:
        self.name = name
        self.lock = lock if lock is not None else threading.RLock()
        self.entries: deque[StreamEntry] = deque()
        self.first_offset = 1
        self.next_offset = 1
        self.max_length = max_length
        self.groups: dict[str, ConsumerGroup] = {}
        self.waiters = _Waiters()

    def append(self, data: bytes) -> StreamEntry:
        with self.lock:  # offsets must be unique, and a reader must never see a gap
            entry = StreamEntry(self.next_offset, data, datetime.now(timezone.utc))
            self.next_offset += 1
            self.entries.append(entry)
            if self.max_length and len(self.entries) > self.max_length:
                self.entries.popleft()
                self.first_offset = self.entries[0].offset
            self.waiters.wake_all()
        return entry

    def unread(self, group: ConsumerGroup) -> int:
        """Entries still on the stream that `group` has not yet been given."""
        return self.next_offset - max(group.next_offset, self.first_offset)

    def get(self, offset: int) -> StreamEntry | None:
        index = offset - self.first_offset
        if 0 <= index < len(self.entries):
            return self.entries[index]
        return None

    def start_offset(self, since: str | datetime | None) -> int:
        if since is None or since == "$":
            return self.next_offset
        if isinstance(since, datetime):
            if since.tzinfo is None:
                since = since.replace(tzinfo=timezone.utc)
            for entry in self.entries:
                if entry.time >= since:
                    return entry.offset
            return self.next_offset
        text = str(since)
        if text in ("0", "0-0", "beginning"):
            return self.first_offset
        try:
            return max(int(text.split("-")[0]) + 1, self.first_offset)
        except ValueError:
            raise ValueError(f"since={since!r} is not a memory stream position: use None, "
                             "'0' (the beginning), a datetime, or an entry id") from None


MAX_LOST_CALLS = 10_000  # lost-call notes kept for callers that have not asked yet


class MemoryBroker:
    """Queues, results, streams and schemas of one named in-process bus."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.RLock()
        self.rpc_queues: dict[str, deque[tuple[bytes, float]]] = {}
        self.rpc_waiters = _Waiters()
        self.results: dict[str, tuple[bytes, float]] = {}  # oldest first
        self._result_bytes = 0
        self.dropped_results = 0  # results not taken, dropped to stay within the bounds
        self.result_waiters: dict[str, _Waiters] = {}
        self.streams: dict[str, Stream] = {}
        # The newest dead letters (bounded, like a Redis dead-letter stream's length).
        self.dead_letters: deque[DeadLetter] = deque(maxlen=MAX_DEAD_LETTERS)
        self.schemas: dict[str, tuple[bytes, float | None]] = {}
        self.locks: dict[str, tuple[str, float]] = {}  # key -> (owner, monotonic expiry)
        self._consumer_ids = itertools.count(1)
        # Calls a consumer took and has not answered: result key -> (consumer, idempotent);
        # and those whose consumer closed first: result key -> (consumer, idempotent).
        self.claims: dict[str, tuple[str, bool]] = {}
        self.lost_calls: dict[str, tuple[str, bool]] = {}

    # -- RPC ----------------------------------------------------------------------------

    def push_call(self, api_name: str, data: bytes, expires_at: float) -> None:
        with self.lock:
            self.rpc_queues.setdefault(api_name, deque()).append((data, expires_at))
            self.rpc_waiters.wake_all()

    def pop_calls(self, api_names: Iterable[str], limit: int) -> tuple[list[bytes], int]:
        """Up to `limit` live calls from the queues of `api_names`, and how many expired
        calls were dropped on the way."""
        taken: list[bytes] = []
        dropped = 0
        clock = time.monotonic()
        with self.lock:
            for api_name in api_names:
                queue = self.rpc_queues.get(api_name)
                while queue and len(taken) < limit:
                    data, expires_at = queue.popleft()
                    if expires_at < clock:
                        dropped += 1
                    else:
                        taken.append(data)
        return taken, dropped

    def claim_calls(self, consumer: str, claims: Iterable[tuple[str, bool]]) -> None:
        """Record that `consumer` took the calls answered on these result keys (with
        whether it declares each idempotent), until their results are put."""
        with self.lock:
            for key, idempotent in claims:
                self.claims[key] = (consumer, idempotent)

    def release_claims(self, consumer: str) -> int:
        """`consumer` closed: each call it took and did not answer is lost; its waiting
        caller is woken to learn so (see `take_lost`). Returns how many."""
        woken: list[_Waiters] = []
        with self.lock:
            lost = [key for key, (owner, _) in self.claims.items() if owner == consumer]
            for key in lost:
                self.lost_calls[key] = self.claims.pop(key)
                waiters = self.result_waiters.pop(key, None)
                if waiters is not None:
                    woken.append(waiters)
            while len(self.lost_calls) > MAX_LOST_CALLS:  # callers that gave up never ask
                del self.lost_calls[next(iter(self.lost_calls))]
        for waiters in woken:
            waiters.wake_all()
        return len(lost)

    def take_lost(self, key: str) -> tuple[str, bool] | None:
        """(consumer, idempotent) if the call answered on `key` was lost by its consumer."""
        with self.lock:
            return self.lost_calls.pop(key, None)

    def queued_calls(self, api_name: str) -> int:
        with self.lock:
            return len(self.rpc_queues.get(api_name, ()))

    # -- results ------------------------------------------------------------------------

    def put_result(self, key: str, data: bytes, ttl: float, max_count: int = 10_000,
                   max_bytes: int = 16 * 2 ** 20) -> int:
        """Keep a result for `ttl` seconds under `key`; results not taken are kept within
        `max_count` and `max_bytes`, oldest dropped first. Returns how many were dropped."""
        dropped = 0
        with self.lock:
            self._expire_results()
            self.claims.pop(key, None)
            previous = self.results.pop(key, None)
            if previous is not None:
                self._result_bytes -= len(previous[0])
            self.results[key] = (data, time.monotonic() + ttl)
            self._result_bytes += len(data)
            while self.results and (len(self.results) > max_count
                                    or self._result_bytes > max_bytes):
                oldest = next(iter(self.results))
                self._result_bytes -= len(self.results.pop(oldest)[0])
                dropped += 1
            self.dropped_results += dropped
            waiters = self.result_waiters.pop(key, None)
        if waiters:
            waiters.wake_all()
        return dropped

    def take_result(self, key: str) -> bytes | None:
        with self.lock:
            found = self.results.pop(key, None)
            if found is not None:
                self._result_bytes -= len(found[0])
            if found is None or found[1] < time.monotonic():
                return None  # never sent, or expired
            return found[0]

    def result_waiter(self, key: str) -> asyncio.Future[None]:
        with self.lock:
            return self.result_waiters.setdefault(key, _Waiters()).add()

    def forget_result_waiter(self, key: str, future: asyncio.Future[None]) -> None:
        with self.lock:
            waiters = self.result_waiters.get(key)
            if waiters is not None:
                waiters.discard(future)
                if not waiters._futures:
                    del self.result_waiters[key]

    def _expire_results(self) -> None:
        """Forget expired results from the oldest on (cheap: stops at the first live one;
        results of a longer TTL queued behind go when taken, or by the count bound)."""
        clock = time.monotonic()
        while self.results:
            oldest = next(iter(self.results))
            data, expires = self.results[oldest]
            if expires >= clock:
                return
            del self.results[oldest]
            self._result_bytes -= len(data)

    # -- streams ------------------------------------------------------------------------

    def stream(self, name: str, max_length: int | None = None) -> Stream:
        with self.lock:
            stream = self.streams.get(name)
            if stream is None:
                stream = self.streams[name] = Stream(name, max_length, self.lock)
            return stream

    def new_consumer_id(self, process_name: str) -> str:
        return f"{process_name}#{next(self._consumer_ids)}"

    def join_group(self, stream: Stream, group_name: str, consumer: str,
                   since: str | datetime | None) -> ConsumerGroup:
        with self.lock:
            group = stream.groups.get(group_name)
            if group is None:  # `since` applies only to a new group, as on Redis
                group = stream.groups[group_name] = ConsumerGroup(
                    group_name, stream.start_offset(since))
            group.consumers.add(consumer)
            return group

    def leave_group(self, stream: Stream, group: ConsumerGroup, consumer: str) -> None:
        """A consumer went away: whatever it held unacknowledged goes back to the group."""
        with self.lock:
            group.consumers.discard(consumer)
            for pending in group.pending.values():
                if pending.consumer == consumer:
                    pending.consumer = None
                    pending.available_at = 0.0
            stream.waiters.wake_all()

    def claim(self, stream: Stream, group: ConsumerGroup, consumer: str, limit: int
              ) -> tuple[list[tuple[StreamEntry | None, int, int]], float | None]:
        """Deliver up to `limit` entries to `consumer`: released or due redeliveries first,
        then new entries. Returns [(entry or None if trimmed, offset, delivery count)] and,
        when nothing is deliverable yet, how long until a redelivery falls due."""
        clock = time.monotonic()
        taken: list[tuple[StreamEntry | None, int, int]] = []
        next_due: float | None = None
        with self.lock:
            for pending in sorted(group.pending.values(), key=lambda p: p.offset):
                if len(taken) >= limit:
                    break
                if pending.consumer is not None:
                    continue
                if pending.available_at > clock:
                    wait = pending.available_at - clock
                    next_due = wait if next_due is None else min(next_due, wait)
                    continue
                pending.consumer = consumer
                pending.delivery_count += 1
                taken.append((stream.get(pending.offset), pending.offset,
                              pending.delivery_count))
            # Entries trimmed away before the group read them are gone, as on Redis.
            group.next_offset = max(group.next_offset, stream.first_offset)
            while len(taken) < limit and group.next_offset < stream.next_offset:
                offset = group.next_offset
                group.next_offset += 1
                group.pending[offset] = PendingEntry(offset, consumer, 1, 0.0)
                taken.append((stream.get(offset), offset, 1))
        return taken, (None if taken else next_due)

    def acknowledge(self, group: ConsumerGroup, offsets: Iterable[int]) -> None:
        with self.lock:
            for offset in offsets:
                group.pending.pop(offset, None)

    def release(self, stream: Stream, group: ConsumerGroup, offset: int, delay: float) -> None:
        with self.lock:
            pending = group.pending.get(offset)
            if pending is not None:
                pending.consumer = None
                pending.available_at = time.monotonic() + delay
            stream.waiters.wake_all()

    def dead_letter(self, stream: Stream, group: ConsumerGroup, offset: int, data: bytes,
                    reason: str) -> None:
        with self.lock:
            self.dead_letters.append(DeadLetter(stream.name, group.name, str(offset), data,
                                                reason, datetime.now(timezone.utc)))
            group.pending.pop(offset, None)

    # -- schemas ------------------------------------------------------------------------

    def try_lock(self, key: str, owner: str, ttl: float) -> bool:
        """Take (or, for its owner, extend) the lock `key` for `ttl` seconds."""
        with self.lock:
            moment = time.monotonic()
            held = self.locks.get(key)
            if held is not None and held[0] != owner and held[1] > moment:
                return False
            self.locks[key] = (owner, moment + ttl)
            return True

    def unlock(self, key: str, owner: str) -> None:
        """Release the lock `key` if `owner` holds it."""
        with self.lock:
            held = self.locks.get(key)
            if held is not None and held[0] == owner:
                del self.locks[key]

    def store_schema(self, api_name: str, data: bytes, ttl: float | None) -> None:
        with self.lock:
            self.schemas[api_name] = (data, time.monotonic() + ttl if ttl else None)

    def load_schemas(self) -> dict[str, bytes]:
        clock = time.monotonic()
        with self.lock:
            return {name: data for name, (data, expires) in self.schemas.items()
                    if expires is None or expires >= clock}


_brokers: dict[str, MemoryBroker] = {}
_brokers_lock = threading.Lock()


def get_broker(name: str = "default") -> MemoryBroker:
    """The process-wide broker called `name`, made on first use."""
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = MemoryBroker(name)
        return broker


def reset_brokers() -> None:
    """Forget every broker (tests start from an empty bus with this)."""
    with _brokers_lock:
        _brokers.clear()


def time_of(entry: StreamEntry | None) -> datetime | None:
    return entry.time if entry is not None else None

