"""The four SQLite transports. One database file is the whole bus: every process that opens
it calls, serves, fires and listens on it.

Each transport instance owns one `sqlite3` connection, used from a worker thread (so the
event loop never blocks on the file) one statement batch at a time. Writes that read first
(taking calls, claiming events, locks) run in `BEGIN IMMEDIATE` transactions, so two
processes never take the same row.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from bus_core.errors import BusError, MalformedMessage, TransportError, TransportUnavailable
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
    REPLAY_GROUP_HEADER,
    REPLAY_OF_HEADER,
    ConsumerInfo,
    DeadLetter,
    EventConsumer,
    EventDelivery,
    EventTransport,
    GroupInfo,
    MalformedRpc,
    ResultTransport,
    RpcConsumer,
    RpcTransport,
    SchemaTransport,
    Transport,
    decode_call,
    replayed_for_another_group,
)

T = TypeVar("T")
RETURN_PATH_SCHEME = "sqlite://"

TABLES = """
CREATE TABLE IF NOT EXISTS bus_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, time REAL NOT NULL,
    data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS bus_events_by_stream ON bus_events (stream, id);
CREATE TABLE IF NOT EXISTS bus_groups (
    stream TEXT NOT NULL, name TEXT NOT NULL, last_id INTEGER NOT NULL,
    PRIMARY KEY (stream, name));
CREATE TABLE IF NOT EXISTS bus_pending (
    stream TEXT NOT NULL, grp TEXT NOT NULL, entry_id INTEGER NOT NULL, consumer TEXT,
    deliveries INTEGER NOT NULL, due REAL NOT NULL, PRIMARY KEY (stream, grp, entry_id));
CREATE TABLE IF NOT EXISTS bus_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, grp TEXT NOT NULL,
    entry_id INTEGER NOT NULL, reason TEXT NOT NULL, deliveries INTEGER NOT NULL,
    time REAL NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS bus_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT, api TEXT NOT NULL, expires REAL NOT NULL,
    data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS bus_calls_by_api ON bus_calls (api, id);
CREATE TABLE IF NOT EXISTS bus_results (
    key TEXT PRIMARY KEY, expires REAL NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS bus_locks (
    service TEXT NOT NULL, name TEXT NOT NULL, owner TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (service, name));
CREATE TABLE IF NOT EXISTS bus_schemas (
    api TEXT PRIMARY KEY, expires REAL, data BLOB NOT NULL);
"""


class _Database:
    """One connection to the bus file, used from worker threads one call at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=5.0, isolation_level=None,
                                     check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(TABLES)
        return connection

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._connection is None:
                self._connection = self._connect()
            connection = self._connection
            try:
                return work(connection)
            except BaseException:
                if connection.in_transaction:
                    connection.rollback()
                raise

    async def run(self, what: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(connection)` in a thread; a locked or unreadable file is a
        TransportUnavailable that says which file and what was being done."""
        try:
            return await asyncio.to_thread(self._call, work)
        except sqlite3.OperationalError as exc:
            raise TransportUnavailable(f"sqlite {self.path}: cannot {what}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise TransportError(f"sqlite {self.path}: cannot {what}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


def _immediate(connection: sqlite3.Connection, work: Callable[[], T]) -> T:
    """`work()` inside one write transaction, taken before its first read."""
    connection.execute("BEGIN IMMEDIATE")
    result = work()
    connection.execute("COMMIT")
    return result


class _SqliteTransport(Transport):
    """What the four share: the file, how often to look at it, open and close."""

    def __init__(self, *, path: str, poll_interval: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.poll_interval = poll_interval
        self.db = _Database(path)

    async def open(self) -> None:
        await self.db.run("open the bus file", lambda connection: None)

    async def close(self) -> None:
        await asyncio.to_thread(self.db.close)

    async def check(self, api_names: Sequence[str] = ()) -> list[str]:
        """`bus config check --connect`: the file opens and can be written."""
        def probe(connection: sqlite3.Connection) -> None:
            _immediate(connection, lambda: None)

        await self.db.run("write to the bus file", probe)
        return []


# -- RPCs -------------------------------------------------------------------------------


class SqliteRpcTransport(_SqliteTransport, RpcTransport):
    """Calls wait in `bus_calls` until a worker takes them or their caller's timeout
    passes; a taken call is deleted (RPCs are at most once)."""

    async def call_rpc(self, message: RpcMessage, *, timeout: float) -> None:
        data = self.serializer.dumps(rpc_to_blob(message))
        expires = time.time() + timeout
        await self.db.run("queue a call", lambda c: c.execute(
            "INSERT INTO bus_calls (api, expires, data) VALUES (?, ?, ?)",
            (message.api_name, expires, data)))

    async def open_consumer(self, api_names: Sequence[str]) -> RpcConsumer:
        return SqliteRpcConsumer(self, list(api_names))

    async def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        def take(connection: sqlite3.Connection) -> bool:
            def work() -> bool:
                now = time.time()
                row = connection.execute(
                    "SELECT owner, expires FROM bus_locks WHERE service = ? AND name = ?",
                    (self.service_name, name)).fetchone()
                if row is not None and row[0] != owner and row[1] > now:
                    return False
                connection.execute(
                    "INSERT OR REPLACE INTO bus_locks (service, name, owner, expires) "
                    "VALUES (?, ?, ?, ?)", (self.service_name, name, owner, now + ttl))
                return True

            return _immediate(connection, work)

        return await self.db.run(f"take lock {name!r}", take)

    async def unlock(self, name: str, owner: str) -> None:
        await self.db.run(f"release lock {name!r}", lambda c: c.execute(
            "DELETE FROM bus_locks WHERE service = ? AND name = ? AND owner = ?",
            (self.service_name, name, owner)))


class SqliteRpcConsumer(RpcConsumer):
    """Takes the oldest live calls of its APIs, polling while there are none."""

    def __init__(self, transport: SqliteRpcTransport, api_names: list[str]) -> None:
        self.transport = transport
        self.api_names = api_names

    def _take(self, connection: sqlite3.Connection, limit: int) -> list[bytes]:
        def work() -> list[bytes]:
            connection.execute("DELETE FROM bus_calls WHERE expires < ?", (time.time(),))
            marks = ",".join("?" * len(self.api_names))
            rows = connection.execute(
                f"SELECT id, data FROM bus_calls WHERE api IN ({marks}) ORDER BY id LIMIT ?",
                (*self.api_names, limit)).fetchall()
            connection.executemany("DELETE FROM bus_calls WHERE id = ?",
                                   [(row[0],) for row in rows])
            return [row[1] for row in rows]

        return _immediate(connection, work)

    async def receive(self, limit: int) -> Sequence[RpcMessage | MalformedRpc]:
        while True:
            raw = await self.transport.db.run(
                "take calls", lambda c: self._take(c, max(1, limit)))
            if raw:
                return [decode_call(self.transport.serializer, data) for data in raw]
            await asyncio.sleep(self.transport.poll_interval)


# -- results ----------------------------------------------------------------------------


class SqliteResultTransport(_SqliteTransport, ResultTransport):
    """A result waits in `bus_results` under its call's own key for `result_ttl` seconds."""

    return_path_scheme = RETURN_PATH_SCHEME

    def __init__(self, *, result_ttl: float = 60.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.result_ttl = result_ttl

    @classmethod
    def check_return_path(cls, key: str, call: RpcMessage | MalformedRpc) -> str | None:
        """Only the call's own key: a caller cannot make a worker write anywhere else."""
        if isinstance(call, RpcMessage):
            if key == result_key(call.api_name, call.procedure_name, call.id):
                return None
            return "not this call's own result key"
        return result_key_problem(key, call.id)

    def get_return_path(self, message: RpcMessage) -> str:
        return RETURN_PATH_SCHEME + result_key(message.api_name, message.procedure_name,
                                               message.id)

    @staticmethod
    def _key(return_path: str) -> str:
        if not return_path.startswith(RETURN_PATH_SCHEME):
            raise MalformedMessage(f"return path {preview(return_path)} is not a "
                                   f"{RETURN_PATH_SCHEME} path")
        key = return_path[len(RETURN_PATH_SCHEME):]
        problem = result_key_problem(key)
        if problem is not None:
            raise MalformedMessage(f"return path {preview(return_path)} refused: {problem}")
        return key

    async def send_result(self, rpc_message: RpcMessage, result_message: ResultMessage,
                          return_path: str) -> None:
        key = self._key(return_path)
        data = self.serializer.dumps(result_to_blob(result_message))

        def put(connection: sqlite3.Connection) -> None:
            def work() -> None:
                now = time.time()
                connection.execute("DELETE FROM bus_results WHERE expires < ?", (now,))
                connection.execute(
                    "INSERT OR REPLACE INTO bus_results (key, expires, data) VALUES (?, ?, ?)",
                    (key, now + self.result_ttl, data))

            _immediate(connection, work)

        await self.db.run("send a result", put)

    async def receive_result(self, rpc_message: RpcMessage, return_path: str,
                             timeout: float) -> ResultMessage:
        key = self._key(return_path)

        def take(connection: sqlite3.Connection) -> bytes | None:
            def work() -> bytes | None:
                row = connection.execute("SELECT data FROM bus_results WHERE key = ?",
                                         (key,)).fetchone()
                if row is not None:
                    connection.execute("DELETE FROM bus_results WHERE key = ?", (key,))
                return None if row is None else row[0]

            return _immediate(connection, work)

        deadline = time.monotonic() + timeout
        while True:
            data = await self.db.run("receive a result", take)
            if data is not None:
                return result_from_blob(self.serializer.loads(data))
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no result for {rpc_message.id}")
            await asyncio.sleep(min(self.poll_interval, left))


# -- events -----------------------------------------------------------------------------


class SqliteEventTransport(_SqliteTransport, EventTransport):
    """One stream per event (`<api>.<event>`), one group per listener name and service
    (`<service>-<listener>`), as on Redis Streams.

    A delivery is held by its consumer for `claim_idle` seconds; if not settled by then
    (its process died), any consumer of the group takes it again. A handler that runs
    longer than `claim_idle` may therefore run twice: events are at least once."""

    def __init__(self, *, claim_idle: float = 60.0, max_stream_length: int = 100_000,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.claim_idle = claim_idle
        self.max_stream_length = max_stream_length

    @staticmethod
    def stream_name(api_name: str, event_name: str) -> str:
        return f"{api_name}.{event_name}"

    def group_name(self, listener_name: str) -> str:
        return f"{self.service_name}-{listener_name}"

    async def send_event(self, message: EventMessage) -> None:
        stream = self.stream_name(message.api_name, message.event_name)
        data = self.serializer.dumps(event_to_blob(message))
        now = time.time()

        def append(connection: sqlite3.Connection) -> int:
            def work() -> int:
                cursor = connection.execute(
                    "INSERT INTO bus_events (stream, time, data) VALUES (?, ?, ?)",
                    (stream, now, data))
                entry_id = int(cursor.lastrowid or 0)
                connection.execute(  # keep the newest max_stream_length entries
                    "DELETE FROM bus_events WHERE stream = ? AND id <= ?",
                    (stream, entry_id - self.max_stream_length))
                return entry_id

            return _immediate(connection, work)

        entry_id = await self.db.run(f"fire {message.canonical_name}", append)
        message.native_id = str(entry_id)
        message.time = datetime.fromtimestamp(now, timezone.utc)

    def _start(self, connection: sqlite3.Connection, stream: str,
               since: str | datetime | None) -> int:
        """The id after which a new group starts reading."""
        if since is None:
            query, args = "SELECT MAX(id) FROM bus_events WHERE stream = ?", (stream,)
        elif isinstance(since, datetime):
            moment = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
            query = "SELECT MAX(id) FROM bus_events WHERE stream = ? AND time < ?"
            args = (stream, moment.timestamp())  # type: ignore[assignment]
        elif str(since).isdigit():
            return int(since)
        else:
            raise ValueError(f"since={since!r}: use None, '0', a datetime or an entry id")
        return int(connection.execute(query, args).fetchone()[0] or 0)

    async def open_consumer(self, listen_for: Sequence[tuple[str, str]], listener_name: str,
                            since: str | datetime | None = None) -> EventConsumer:
        streams = list(dict.fromkeys(self.stream_name(a, e) for a, e in listen_for))
        group = self.group_name(listener_name)

        def join(connection: sqlite3.Connection) -> None:
            def work() -> None:
                for stream in streams:  # an existing group keeps its position
                    connection.execute(
                        "INSERT OR IGNORE INTO bus_groups (stream, name, last_id) "
                        "VALUES (?, ?, ?)", (stream, group, self._start(connection, stream,
                                                                        since)))

            _immediate(connection, work)

        await self.db.run(f"join listener {listener_name!r}", join)
        return SqliteEventConsumer(self, streams, group)

    def decode(self, stream: str, entry_id: int, entry_time: float, data: bytes,
               deliveries: int) -> EventDelivery:
        """One delivery; a malformed one (`message` None, `problem` set) whatever goes
        wrong decoding it, so that the worker dead-letters it and goes on."""
        try:
            message = event_from_blob(self.serializer.loads(data))
        except Exception as exc:
            return EventDelivery(message=None, delivery_count=deliveries,
                                 native_id=str(entry_id), stream=stream,
                                 problem=describe(exc), raw=data)
        message.native_id = str(entry_id)
        message.time = datetime.fromtimestamp(entry_time, timezone.utc)
        return EventDelivery(message=message, delivery_count=deliveries,
                             native_id=str(entry_id), stream=stream, raw=data)

    async def history(self, api_name: str, event_name: str, start: datetime | None = None,
                      stop: datetime | None = None, undecodable: list[str] | None = None
                      ) -> AsyncIterator[EventMessage]:
        stream = self.stream_name(api_name, event_name)
        low = _aware(start).timestamp() if start else float("-inf")
        high = _aware(stop).timestamp() if stop else float("inf")
        below = None  # read newest first, a page at a time
        while True:
            page = await self.db.run(f"read the history of {stream}", lambda c, b=below: (
                c.execute("SELECT id, time, data FROM bus_events WHERE stream = ? "
                          "AND time >= ? AND time <= ? AND id < ? ORDER BY id DESC LIMIT 100",
                          (stream, low, high, b if b is not None else 2 ** 62)).fetchall()))
            if not page:
                return
            for entry_id, entry_time, data in page:
                delivery = self.decode(stream, entry_id, entry_time, data, 0)
                if delivery.message is not None:
                    yield delivery.message
                elif undecodable is not None:
                    undecodable.append(delivery.native_id)
            below = page[-1][0]

    async def lag(self, api_name: str, event_name: str, listener_name: str) -> int:
        stream = self.stream_name(api_name, event_name)
        group = self.group_name(listener_name)

        def count(connection: sqlite3.Connection) -> int:
            row = connection.execute("SELECT last_id FROM bus_groups WHERE stream = ? AND "
                                     "name = ?", (stream, group)).fetchone()
            if row is None:
                return 0
            unread = connection.execute("SELECT COUNT(*) FROM bus_events WHERE stream = ? "
                                        "AND id > ?", (stream, row[0])).fetchone()[0]
            held = connection.execute("SELECT COUNT(*) FROM bus_pending WHERE stream = ? "
                                      "AND grp = ?", (stream, group)).fetchone()[0]
            return int(unread) + int(held)

        return await self.db.run(f"read the lag of {listener_name!r}", count)

    async def groups(self, api_name: str, event_name: str) -> list[GroupInfo]:
        stream = self.stream_name(api_name, event_name)

        def read(connection: sqlite3.Connection) -> list[GroupInfo]:
            found = []
            for name, last_id in connection.execute(
                    "SELECT name, last_id FROM bus_groups WHERE stream = ? ORDER BY name",
                    (stream,)).fetchall():
                held = connection.execute(
                    "SELECT consumer, COUNT(*) FROM bus_pending WHERE stream = ? AND grp = ? "
                    "GROUP BY consumer", (stream, name)).fetchall()
                unread = connection.execute("SELECT COUNT(*) FROM bus_events WHERE stream = ? "
                                            "AND id > ?", (stream, last_id)).fetchone()[0]
                found.append(GroupInfo(
                    stream=stream, name=name, pending=sum(n for _, n in held), lag=unread,
                    consumers=[ConsumerInfo(consumer, n, None)
                               for consumer, n in held if consumer is not None]))
            return found

        return await self.db.run(f"list the listener groups of {stream}", read)


    # -- dead letters (optional: `bus dead-letters`, the web console) --------------------

    def _as_letter(self, row: tuple[Any, ...]) -> DeadLetter:
        letter_id, stream, group, entry_id, reason, deliveries, moment, data = row
        letter = DeadLetter(id=str(letter_id), stream=stream, group=group, reason=reason,
                            time=datetime.fromtimestamp(moment, timezone.utc),
                            delivery_count=deliveries, entry_id=str(entry_id))
        delivery = self.decode(stream, entry_id, moment, data, deliveries)
        letter.message, letter.problem = delivery.message, delivery.problem
        letter.api_name, _, letter.event_name = stream.rpartition(".")
        return letter

    async def list_dead_letters(self, api_name: str, event_name: str | None = None,
                                start: datetime | None = None, stop: datetime | None = None,
                                limit: int | None = None) -> list[DeadLetter]:
        if event_name is not None:
            where, args = "stream = ?", [self.stream_name(api_name, event_name)]
        else:  # the API's events, not those of an API whose name continues with a dot
            where = "substr(stream, 1, ?) = ? AND instr(substr(stream, ?), '.') = 0"
            args = [len(api_name) + 1, f"{api_name}.", len(api_name) + 2]
        low = _aware(start).timestamp() if start else float("-inf")
        high = _aware(stop).timestamp() if stop else float("inf")
        rows = await self.db.run(f"list the dead letters of {api_name}", lambda c: c.execute(
            "SELECT id, stream, grp, entry_id, reason, deliveries, time, data FROM "
            f"bus_dead_letters WHERE {where} AND time >= ? AND time <= ? ORDER BY id DESC "
            "LIMIT ?", (*args, low, high, -1 if limit is None else limit)).fetchall())
        return [self._as_letter(row) for row in rows]

    async def replay_dead_letter(self, letter: DeadLetter) -> str | None:
        """Back on its stream for its own group only (the replay headers), and out of the
        dead letters, in one transaction: replaying twice delivers once."""
        if letter.message is None:
            raise BusError(f"dead letter {letter.id} of {letter.stream} cannot be replayed: "
                           f"{letter.problem or 'it cannot be decoded'} (purge it instead)")
        message = letter.message
        replay = EventMessage(message.api_name, message.event_name, message.kwargs,
                              id=message.id, version=message.version,
                              headers={**(message.headers or {}),
                                       REPLAY_GROUP_HEADER: letter.group,
                                       REPLAY_OF_HEADER: letter.id})
        data = self.serializer.dumps(event_to_blob(replay))

        def move(connection: sqlite3.Connection) -> int | None:
            def work() -> int | None:
                gone = connection.execute("DELETE FROM bus_dead_letters WHERE id = ?",
                                          (int(letter.id),)).rowcount
                if not gone:
                    return None
                cursor = connection.execute(
                    "INSERT INTO bus_events (stream, time, data) VALUES (?, ?, ?)",
                    (letter.stream, time.time(), data))
                return int(cursor.lastrowid or 0)

            return _immediate(connection, work)

        new_id = await self.db.run(f"replay dead letter {letter.id}", move)
        return None if new_id is None else str(new_id)

    async def purge_dead_letter(self, letter: DeadLetter) -> bool:
        gone = await self.db.run(f"purge dead letter {letter.id}", lambda c: c.execute(
            "DELETE FROM bus_dead_letters WHERE id = ?", (int(letter.id),)).rowcount)
        return bool(gone)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class SqliteEventConsumer(EventConsumer):
    """Takes due deliveries (given back, or held too long by a dead consumer) first, then
    new entries past its group's position; polls while there are none."""

    def __init__(self, transport: SqliteEventTransport, streams: list[str], group: str
                 ) -> None:
        self.transport = transport
        self.streams = streams
        self.group = group
        # One name per consumer, so closing one never lets go of another's deliveries.
        self.name = f"{transport.process_name}-{uuid.uuid4().hex[:8]}"
        self.closed = False

    def _claim(self, connection: sqlite3.Connection, limit: int
               ) -> list[tuple[str, int, float, bytes, int]]:
        transport, group = self.transport, self.group

        def work() -> list[tuple[str, int, float, bytes, int]]:
            now = time.time()
            held_until = now + transport.claim_idle
            taken: list[tuple[str, int, float, bytes, int]] = []
            for stream in self.streams:
                room = limit - len(taken)
                if room <= 0:
                    break
                for entry_id, deliveries, entry_time, data in connection.execute(
                        "SELECT p.entry_id, p.deliveries, e.time, e.data FROM bus_pending p "
                        "LEFT JOIN bus_events e ON e.id = p.entry_id WHERE p.stream = ? AND "
                        "p.grp = ? AND p.due <= ? ORDER BY p.entry_id LIMIT ?",
                        (stream, group, now, room)).fetchall():
                    if data is None:  # trimmed away while pending: nothing left to handle
                        connection.execute("DELETE FROM bus_pending WHERE stream = ? AND "
                                           "grp = ? AND entry_id = ?", (stream, group, entry_id))
                        continue
                    connection.execute(
                        "UPDATE bus_pending SET consumer = ?, deliveries = ?, due = ? WHERE "
                        "stream = ? AND grp = ? AND entry_id = ?",
                        (self.name, deliveries + 1, held_until, stream, group, entry_id))
                    taken.append((stream, entry_id, entry_time, data, deliveries + 1))
                room = limit - len(taken)
                if room <= 0:
                    break
                last_id = connection.execute(
                    "SELECT last_id FROM bus_groups WHERE stream = ? AND name = ?",
                    (stream, group)).fetchone()[0]
                fresh = connection.execute(
                    "SELECT id, time, data FROM bus_events WHERE stream = ? AND id > ? "
                    "ORDER BY id LIMIT ?", (stream, last_id, room)).fetchall()
                if not fresh:
                    continue
                connection.executemany(
                    "INSERT INTO bus_pending (stream, grp, entry_id, consumer, deliveries, "
                    "due) VALUES (?, ?, ?, ?, 1, ?)",
                    [(stream, group, row[0], self.name, held_until) for row in fresh])
                connection.execute("UPDATE bus_groups SET last_id = ? WHERE stream = ? AND "
                                   "name = ?", (fresh[-1][0], stream, group))
                taken += [(stream, row[0], row[1], row[2], 1) for row in fresh]
            return taken

        return _immediate(connection, work)

    async def receive(self, limit: int) -> Sequence[EventDelivery]:
        while True:
            if self.closed:
                raise TransportError("this consumer is closed")
            taken = await self.transport.db.run(
                f"receive events for {self.group}", lambda c: self._claim(c, max(1, limit)))
            deliveries = [self.transport.decode(stream, entry_id, entry_time, data, count)
                          for stream, entry_id, entry_time, data, count in taken]
            # A replayed dead letter is for the group that gave up on it: others skip it.
            elsewhere = [d for d in deliveries if d.message is not None
                         and replayed_for_another_group(d.message.headers, self.group)]
            if elsewhere:
                await self.acknowledge(elsewhere)
                skipped = {id(d) for d in elsewhere}
                deliveries = [d for d in deliveries if id(d) not in skipped]
            if deliveries:
                return deliveries
            if not taken:
                await asyncio.sleep(self.transport.poll_interval)

    async def acknowledge(self, deliveries: Sequence[EventDelivery]) -> None:
        rows = [(d.stream, self.group, int(d.native_id)) for d in deliveries]
        if rows:
            await self.transport.db.run("acknowledge events", lambda c: c.executemany(
                "DELETE FROM bus_pending WHERE stream = ? AND grp = ? AND entry_id = ?", rows))

    async def redeliver(self, delivery: EventDelivery, delay: float) -> None:
        due = time.time() + delay
        await self.transport.db.run("give an event back", lambda c: c.execute(
            "UPDATE bus_pending SET consumer = NULL, due = ? WHERE stream = ? AND grp = ? "
            "AND entry_id = ?", (due, delivery.stream, self.group, int(delivery.native_id))))

    async def dead_letter(self, delivery: EventDelivery, reason: str) -> None:
        data = delivery.raw if isinstance(delivery.raw, bytes) else b""
        keep = self.transport.max_stream_length

        def move(connection: sqlite3.Connection) -> None:
            def work() -> None:
                cursor = connection.execute(
                    "INSERT INTO bus_dead_letters (stream, grp, entry_id, reason, deliveries, "
                    "time, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (delivery.stream, self.group, int(delivery.native_id), reason,
                     delivery.delivery_count, time.time(), data))
                connection.execute("DELETE FROM bus_dead_letters WHERE id <= ?",
                                   (int(cursor.lastrowid or 0) - keep,))
                connection.execute(
                    "DELETE FROM bus_pending WHERE stream = ? AND grp = ? AND entry_id = ?",
                    (delivery.stream, self.group, int(delivery.native_id)))

            _immediate(connection, work)

        await self.transport.db.run("dead-letter an event", move)

    async def close(self) -> None:
        """What this consumer holds unsettled goes back to its group at once."""
        if self.closed:
            return
        self.closed = True
        marks = ",".join("?" * len(self.streams))
        await self.transport.db.run("release held events", lambda c: c.execute(
            f"UPDATE bus_pending SET consumer = NULL, due = 0 WHERE grp = ? AND consumer = ? "
            f"AND stream IN ({marks})", (self.group, self.name, *self.streams)))


# -- schemas ----------------------------------------------------------------------------


class SqliteSchemaTransport(_SqliteTransport, SchemaTransport):
    """Each API's schema as one row, expiring after its TTL unless stored again."""

    async def store(self, api_name: str, schema: dict[str, Any], ttl: float | None) -> None:
        data = self.serializer.dumps(schema)
        expires = None if ttl is None else time.time() + ttl
        await self.db.run(f"store the schema of {api_name!r}", lambda c: c.execute(
            "INSERT OR REPLACE INTO bus_schemas (api, expires, data) VALUES (?, ?, ?)",
            (api_name, expires, data)))

    async def load(self) -> dict[str, dict[str, Any]]:
        rows = await self.db.run("load schemas", lambda c: c.execute(
            "SELECT api, data FROM bus_schemas WHERE expires IS NULL OR expires > ?",
            (time.time(),)).fetchall())
        loaded = {}
        for api_name, data in rows:
            try:
                schema = self.serializer.loads(data)
            except Exception:
                continue  # one bad schema hides no other
            if isinstance(schema, dict):
                loaded[api_name] = schema
        return loaded
