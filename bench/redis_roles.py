"""The processes of bench/redis_bench.py: producers, consumers, callers and workers, each
in a raw redis-py asyncio form (the baseline) and a Bus form.

`redis_bench.py` starts each role in a process of its own (multiprocessing, spawn) and talks
to it over a pipe. Every role connects, sends ("ready",), then obeys commands until ("stop",):

- producer: ("events", mode, n) -> fires n events ("awaited": one awaited XADD or
  `fire_async` after another; "batched": BATCH at a time), replies ("ran", t0, t1);
- consumer: ("expect", n) -> replies ("armed",), then ("done", t) once it has handled n more
  events; t0 (the producer's) to t is the end-to-end time, on the shared monotonic clock;
- caller: ("call", "seq", n) -> n calls one after another, replies ("ran", t0, t1,
  latencies); ("call", "many", n) -> n calls by CONCURRENCY tasks at once, replies ("ran",
  t0, t1, []);
- worker: serves calls until ("stop",);
- backlog: producer ("fill", n) -> puts n events on a stream of their own (the backlog API;
  raw: pipelines of XADDs), replies ("filled",); consumer ("drain", n, k) -> starts a new
  listener (raw: a new group) at the start of that stream, replies ("drained", t0, t1)
  once it has handled all n.

Any role answers ("cpu",) with its CPU seconds so far. With a profile prefix, a role runs
under cProfile after ("profile", label), one profile per label (see redis_bench.py
--profile).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

import bus_core
from bus_core import Api, Bus, Event

CONCURRENCY = 50  # RPCs in flight in the "many" rows
BATCH = 100  # events per batched fire (gather of fire_async / one XADD pipeline)
READ_COUNT = 100  # XREADGROUP COUNT and BLMPOP COUNT of the raw consumers and workers
MAXLEN = 100_000  # approximate stream cap, the Bus default (max_stream_length)

RAW_STREAM = "raw.*:stream"
RAW_BACKLOG_STREAM = "rawbacklog.*:stream"
FILL_CHUNK = 1000  # events per fire_many / XADD pipeline when filling the backlog
RAW_GROUP = "raw-counter"
RAW_SEQ_QUEUE = "raw:rpc_queue:seq"
RAW_MANY_QUEUE = "raw:rpc_queue:many"
# The same field layout as a Bus event (36-character id, metadata, one JSON parameter).
RAW_EVENT_ID = "00000000-0000-4000-8000-000000000000"
# A request body the size of a Bus call blob, so both sides move about as many bytes.
RAW_BODY = (b'{"kwargs":{"a":1,"b":1},"metadata":{"api_name":"bench","id":"' + b"0" * 36
            + b'","procedure_name":"add","return_path":"redis+key://bus:reply:' + b"0" * 48
            + b'"}}')


# -- plumbing ---------------------------------------------------------------------------------


class Control:
    """The role's end of its pipe to the benchmark. `recv` waits in a thread so the role's
    loop keeps running; `send` may be called from the loop meanwhile (a socketpair is
    full duplex)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def recv(self) -> tuple[Any, ...]:
        return await asyncio.get_running_loop().run_in_executor(None, self.conn.recv)

    def send(self, *message: Any) -> None:
        self.conn.send(message)


def run_role(role: str, conn: Connection, url: str, profile_prefix: str | None) -> None:
    """Process entry point: run `role` until told to stop."""
    body = ROLES[role]
    profiles = Profiles(profile_prefix)
    try:
        asyncio.run(body(Control(conn), url, profiles))
    finally:
        profiles.dump()
        conn.close()


class Profiles:
    """cProfile by phase: ("profile", label) switches to the label's profiler, so each row of
    the benchmark gets a profile of its own (`<prefix>.<label>.pstats`). Inactive without a
    prefix. The timer is cProfile's default (wall clock): a process preempted inside a
    system call (2 CPUs, 3 busy processes) charges the wait to that call, mostly
    socket.send; a CPU-time timer would be a system call per event and distort more."""

    def __init__(self, prefix: str | None) -> None:
        self.prefix = prefix
        self.by_label: dict[str, cProfile.Profile] = {}
        self.current: cProfile.Profile | None = None

    def switch(self, label: str | None) -> None:
        if self.current is not None:
            self.current.disable()
            self.current = None
        if self.prefix is not None and label is not None:
            if label not in self.by_label:
                self.by_label[label] = cProfile.Profile()
            self.current = self.by_label[label]
            self.current.enable()

    def dump(self) -> None:
        self.switch(None)
        for label, profile in self.by_label.items():
            profile.dump_stats(f"{self.prefix}.{label}.pstats")


async def serve_commands(control: Control, profiles: Profiles,
                         handle: Callable[[tuple[Any, ...]], Awaitable[None]]) -> None:
    """Say ready, then run each command until ("stop",): ("cpu",) is answered with this
    process's CPU seconds so far, ("profile", label) switches profiles, the rest go to
    `handle`."""
    control.send("ready")
    try:
        while True:
            command = await control.recv()
            if command[0] == "stop":
                return
            if command[0] == "cpu":
                control.send("cpu", time.process_time())
            elif command[0] == "profile":
                profiles.switch(command[1])
            else:
                await handle(command)
    finally:
        profiles.switch(None)


class Counter:
    """Counts handled events; reports the time the expected number was reached."""

    def __init__(self, control: Control) -> None:
        self.control = control
        self.count = 0
        self.target: int | None = None

    def expect(self, n: int) -> None:
        self.count = 0
        self.target = n
        self.control.send("armed")

    def add(self, n: int = 1) -> None:
        self.count += n
        if self.target is not None and self.count >= self.target:
            self.target = None
            self.control.send("done", time.perf_counter())


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- the Bus side -----------------------------------------------------------------------------


class BenchApi(Api):
    """The benchmark's API: one async RPC, one event (as in memory_bench)."""

    tick = Event(parameters=("n",))

    class Meta:
        name = "bench"

    async def add(self, a: int, b: int) -> int:
        return a + b


class BacklogApi(Api):
    """The backlog row's event, on a stream of its own (bench.tick's stream holds the other
    rows' events)."""

    item = Event(parameters=("n",))

    class Meta:
        name = "backlog"


def make_bus(url: str, service_name: str, *, serve: bool = False) -> Bus:
    """A bus on the benchmark's Redis, default settings but long timeouts; `serve` registers
    BenchApi (to serve its RPC, or to be allowed to fire its event)."""
    transport = {"redis": {"url": url}}
    config = {
        "bus": {"schema": {"transport": transport}, "drain_timeout": 5},
        "apis": {"default": {"rpc_transport": transport, "result_transport": transport,
                             "event_transport": transport, "rpc_timeout": 60,
                             "event_fire_timeout": 60}},
    }
    bus = bus_core.create(config, service_name=service_name)
    if serve:
        bus.client.register_api(BenchApi())
        bus.client.register_api(BacklogApi())
    return bus


async def bus_producer(control: Control, url: str, profiles: Profiles) -> None:
    """`await bus.bench.tick.fire_async(n=i)` one after another, or BATCH at a time with
    asyncio.gather (the transport puts XADDs issued in one loop turn in one pipeline)."""
    bus = make_bus(url, "bench_producer", serve=True)
    fire = bus.bench.tick.fire_async

    async def handle(command: tuple[Any, ...]) -> None:
        if command[0] == "fill":
            for first in range(0, command[1], FILL_CHUNK):
                await bus.backlog.item.fire_many_async(
                    [{"n": i} for i in range(first, min(first + FILL_CHUNK, command[1]))])
            control.send("filled")
            return
        _, mode, n = command
        started = time.perf_counter()
        if mode == "awaited":
            for i in range(n):
                await fire(n=i)
        else:
            for first in range(0, n, BATCH):
                await asyncio.gather(*(fire(n=i) for i in range(first, min(first + BATCH, n))))
        control.send("ran", started, time.perf_counter())

    try:
        await serve_commands(control, profiles, handle)
    finally:
        await bus.client.close_async()


async def bus_consumer(control: Control, url: str, profiles: Profiles) -> None:
    """A Bus worker with one async listener on bench.tick (default settings)."""
    bus = make_bus(url, "bench_consumer")
    counter = Counter(control)

    async def on_tick(event: Any, n: int) -> None:
        counter.add()

    bus.client.listen("bench.tick", on_tick, listener_name="counter")
    worker = bus.client.worker()
    await worker.start()

    async def drain(n: int, k: int) -> None:
        drained = asyncio.Event()
        handled = 0

        async def on_item(event: Any, n: int) -> None:
            nonlocal handled
            handled += 1
            if handled == count:
                drained.set()

        count = n
        started = time.perf_counter()
        await bus.client.listen_async("backlog.item", on_item, listener_name=f"drain{k}",
                                      since="0")
        await drained.wait()
        control.send("drained", started, time.perf_counter())

    async def handle(command: tuple[Any, ...]) -> None:
        if command[0] == "drain":
            await drain(command[1], command[2])
            return
        counter.expect(command[1])

    try:
        await serve_commands(control, profiles, handle)
    finally:
        await worker.stop()
        await bus.client.close_async()


async def bus_worker(control: Control, url: str, profiles: Profiles) -> None:
    """A Bus worker serving `async def add(a, b)` (default settings)."""
    bus = make_bus(url, "bench_worker", serve=True)
    worker = bus.client.worker()
    await worker.start()

    async def handle(command: tuple[Any, ...]) -> None:
        pass

    try:
        await serve_commands(control, profiles, handle)
    finally:
        await worker.stop()
        await bus.client.close_async()


async def bus_caller(control: Control, url: str, profiles: Profiles) -> None:
    """`await bus.bench.add.call_async(a=i, b=1)`: one after another, or from CONCURRENCY
    tasks at once. The caller does not register BenchApi (a client of another service)."""
    bus = make_bus(url, "bench_caller")
    call = bus.bench.add.call_async

    async def handle(command: tuple[Any, ...]) -> None:
        _, mode, n = command
        latencies: list[float] = []
        clock = time.perf_counter
        started = clock()
        if mode == "seq":
            for i in range(n):
                before = clock()
                await call(a=i, b=1)
                latencies.append(clock() - before)
        else:
            async def calls(count: int) -> None:
                for i in range(count):
                    await call(a=i, b=1)

            await asyncio.gather(*(calls(n // CONCURRENCY) for _ in range(CONCURRENCY)))
        control.send("ran", started, clock(), latencies)

    try:
        await serve_commands(control, profiles, handle)
    finally:
        await bus.client.close_async()


# -- the raw redis-py side --------------------------------------------------------------------


def raw_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url)


async def raw_producer(control: Control, url: str, profiles: Profiles) -> None:
    """One awaited XADD per event, or pipelines of BATCH XADDs; Bus's field layout."""
    redis = raw_client(url)

    def fields(i: int) -> dict[str, Any]:
        return {"id": RAW_EVENT_ID, "api_name": "bench", "event_name": "tick", "version": "1",
                ":n": b"%d" % i}

    async def handle(command: tuple[Any, ...]) -> None:
        if command[0] == "fill":
            for first in range(0, command[1], FILL_CHUNK):
                pipe = redis.pipeline(transaction=False)
                for i in range(first, min(first + FILL_CHUNK, command[1])):
                    pipe.xadd(RAW_BACKLOG_STREAM, fields(i), maxlen=MAXLEN, approximate=True)
                await pipe.execute()
            control.send("filled")
            return
        _, mode, n = command
        started = time.perf_counter()
        if mode == "awaited":
            for i in range(n):
                await redis.xadd(RAW_STREAM, fields(i), maxlen=MAXLEN, approximate=True)
        else:
            for first in range(0, n, BATCH):
                pipe = redis.pipeline(transaction=False)
                for i in range(first, min(first + BATCH, n)):
                    pipe.xadd(RAW_STREAM, fields(i), maxlen=MAXLEN, approximate=True)
                await pipe.execute()
        control.send("ran", started, time.perf_counter())

    try:
        await serve_commands(control, profiles, handle)
    finally:
        await redis.aclose()


async def raw_consumer(control: Control, url: str, profiles: Profiles) -> None:
    """XREADGROUP COUNT 100 (blocking), then one multi-id XACK per batch."""
    redis = raw_client(url)
    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
        await redis.xgroup_create(RAW_STREAM, RAW_GROUP, id="$", mkstream=True)
    counter = Counter(control)

    async def consume() -> None:
        while True:
            reply = await redis.xreadgroup(RAW_GROUP, "c1", {RAW_STREAM: ">"},
                                           count=READ_COUNT, block=1000)
            for stream, entries in reply or ():
                ids = [entry_id for entry_id, _ in entries]
                counter.add(len(ids))
                await redis.xack(stream, RAW_GROUP, *ids)

    task = asyncio.get_running_loop().create_task(consume())

    async def drain(n: int, k: int) -> None:
        """A new group at the start of the backlog stream, read and acknowledged in batches
        of READ_COUNT until all n are handled."""
        started = time.perf_counter()
        group = f"drain{k}"
        await redis.xgroup_create(RAW_BACKLOG_STREAM, group, id="0")
        handled = 0
        while handled < n:
            reply = await redis.xreadgroup(group, "c1", {RAW_BACKLOG_STREAM: ">"},
                                           count=READ_COUNT, block=1000)
            for stream, entries in reply or ():
                ids = [entry_id for entry_id, _ in entries]
                handled += len(ids)
                await redis.xack(stream, group, *ids)
        control.send("drained", started, time.perf_counter())

    async def handle(command: tuple[Any, ...]) -> None:
        if command[0] == "drain":
            await drain(command[1], command[2])
            return
        counter.expect(command[1])

    try:
        await serve_commands(control, profiles, handle)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()


async def raw_worker(control: Control, url: str, profiles: Profiles) -> None:
    """Two loops: BLPOP one request + LPUSH its reply (sequential rows), and BLMPOP COUNT 100
    + one pipeline of replies per batch, grouped by reply list (many-in-flight rows).
    A request is b"<id>|<reply key>|<body>"; a reply b"<id>|<result>"."""
    redis = raw_client(url)

    async def one_by_one() -> None:
        while True:
            popped = await redis.blpop([RAW_SEQ_QUEUE], timeout=1)
            if popped:
                call_id, _, rest = popped[1].partition(b"|")
                reply_key, _, _ = rest.partition(b"|")
                await redis.lpush(reply_key, call_id + b"|2")

    async def in_batches() -> None:
        while True:
            popped = await redis.blmpop(1, 1, RAW_MANY_QUEUE, direction="LEFT",
                                        count=READ_COUNT)
            if not popped:
                continue
            replies: dict[bytes, list[bytes]] = {}
            for data in popped[1]:
                call_id, _, rest = data.partition(b"|")
                reply_key, _, _ = rest.partition(b"|")
                replies.setdefault(reply_key, []).append(call_id + b"|2")
            pipe = redis.pipeline(transaction=False)
            for reply_key, values in replies.items():
                pipe.rpush(reply_key, *values)
            await pipe.execute()

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(one_by_one()), loop.create_task(in_batches())]

    async def handle(command: tuple[Any, ...]) -> None:
        pass

    try:
        await serve_commands(control, profiles, handle)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()


class RawManyClient:
    """Calls with one shared reply list read by one BLMPOP loop, and the requests issued in
    one loop turn written with one RPUSH."""

    def __init__(self, redis: aioredis.Redis, reply_key: bytes) -> None:
        self.redis = redis
        self.reply_key = reply_key
        self.waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self.queued: list[bytes] = []
        self.flushing: asyncio.Task[None] | None = None
        self.next_id = 0
        self.reader: asyncio.Task[None] | None = None

    async def call(self) -> bytes:
        loop = asyncio.get_running_loop()
        if self.reader is None:
            self.reader = loop.create_task(self._read())
        self.next_id += 1
        call_id = b"%d" % self.next_id
        future: asyncio.Future[bytes] = loop.create_future()
        self.waiting[call_id] = future
        self.queued.append(call_id + b"|" + self.reply_key + b"|" + RAW_BODY)
        if self.flushing is None:  # the task runs after this loop turn's other callers
            self.flushing = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        requests, self.queued = self.queued, []
        self.flushing = None
        await self.redis.rpush(RAW_MANY_QUEUE, *requests)

    async def _read(self) -> None:
        while True:
            popped = await self.redis.blmpop(1, 1, self.reply_key, direction="LEFT",
                                             count=READ_COUNT)
            for data in popped[1] if popped else ():
                call_id, _, result = data.partition(b"|")
                future = self.waiting.pop(call_id, None)
                if future is not None and not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader


async def raw_caller(control: Control, url: str, profiles: Profiles) -> None:
    """Sequential: LPUSH the request, BLPOP the reply key. Many: RawManyClient."""
    redis = raw_client(url)
    reply_key = f"raw:reply:{id(control)}".encode()
    many = RawManyClient(redis, reply_key + b":many")

    async def handle(command: tuple[Any, ...]) -> None:
        _, mode, n = command
        latencies: list[float] = []
        clock = time.perf_counter
        started = clock()
        if mode == "seq":
            for i in range(n):
                before = clock()
                await redis.lpush(RAW_SEQ_QUEUE, b"%d|%s|%s" % (i, reply_key, RAW_BODY))
                await redis.blpop([reply_key], timeout=10)
                latencies.append(clock() - before)
        else:
            async def calls(count: int) -> None:
                for _ in range(count):
                    await many.call()

            await asyncio.gather(*(calls(n // CONCURRENCY) for _ in range(CONCURRENCY)))
        control.send("ran", started, clock(), latencies)

    try:
        await serve_commands(control, profiles, handle)
    finally:
        await many.close()
        await redis.aclose()


ROLES: dict[str, Callable[[Control, str, Profiles], Awaitable[None]]] = {
    "bus_producer": bus_producer,
    "bus_consumer": bus_consumer,
    "bus_worker": bus_worker,
    "bus_caller": bus_caller,
    "raw_producer": raw_producer,
    "raw_consumer": raw_consumer,
    "raw_worker": raw_worker,
    "raw_caller": raw_caller,
}
