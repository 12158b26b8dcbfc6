"""In-memory path benchmark: what the bus itself costs per RPC and per event.

Every figure is printed next to a baseline measured in the same run, in the same process, so
the ratio stays meaningful on a noisy machine:

- RPC rows: a bare asyncio round trip doing the same hand-off (a request `asyncio.Queue`
  served by one task, a reply future per call), with the same thread arrangement as the bus
  case (the sync baseline hops from the main thread to a loop thread, like a sync bus call).
- Event row: the same number of items through one `asyncio.Queue` to one consumer task.
- Hook rows: the bus without any hook implementation is the baseline for the bus with a
  trivial plugin implementing `bus_before_event_fire` and `bus_after_event_fire`.

    python bench/memory_bench.py            # ~40 s
    python bench/memory_bench.py --quick    # ~5 s, rough figures
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tables import HEADER, Row, format_table, legend

import bus_core
from bus_core import Api, Bus, Event, EventMessage, hookimpl

CONCURRENCY = 50
_brokers = itertools.count(1)


# -- what the bus serves ----------------------------------------------------------------------


class BenchApi(Api):
    """One async RPC, one sync RPC (run in the thread pool), one event."""

    tick = Event(parameters=("n",))

    class Meta:
        name = "bench"

    async def add(self, a: int, b: int) -> int:
        return a + b

    def add_sync(self, a: int, b: int) -> int:
        return a + b


class TrivialHooks:
    """A plugin whose per-message hooks do nothing: the price of the facade and pluggy."""

    bus_plugin_name = "bench_trivial_hooks"

    @hookimpl
    def bus_before_event_fire(self, client: Any, message: EventMessage) -> None:
        pass

    @hookimpl
    def bus_after_event_fire(self, client: Any, message: EventMessage,
                             error: BaseException | None, duration: float) -> None:
        pass


def make_bus(*, plugins: tuple[object, ...] = ()) -> Bus:
    """A bus on a memory broker of its own, serving BenchApi."""
    transport = {"memory": {"broker": f"bench-{os.getpid()}-{next(_brokers)}"}}
    config = {
        "bus": {"schema": {"transport": transport}},
        "apis": {"default": {"rpc_transport": transport, "result_transport": transport,
                             "event_transport": transport, "rpc_timeout": 30}},
    }
    bus = bus_core.create(config, plugins=plugins, service_name="bench")
    bus.client.register_api(BenchApi())
    return bus


# -- measuring --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each measurement does, and how often: `repeats` for the rows against
    an asyncio baseline, `rounds` of alternation for the hook rows (whose difference is
    small next to the noise, so they need more samples)."""

    rpc_sync: int
    rpc_async: int
    rpc_concurrent: int
    events: int
    fire: int
    facade: int
    repeats: int
    rounds: int
    warmup: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(rpc_sync=3_000, rpc_async=5_000, rpc_concurrent=10_000, events=10_000,
                   fire=2_000, facade=20_000, repeats=3, rounds=16, warmup=300)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(rpc_sync=500, rpc_async=1_000, rpc_concurrent=2_000, events=2_000,
                   fire=500, facade=10_000, repeats=1, rounds=6, warmup=100)


def rate(count: int, timings: list[float]) -> float:
    """Operations per second from the median of repeated timings of `count` operations."""
    return count / statistics.median(timings)


async def timed(operation: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await operation()
    return time.perf_counter() - started


# -- baselines: bare asyncio doing the same hand-off -----------------------------------------


class RawServer:
    """The hand-off a bus RPC makes, with nothing else: a request queue served by one task,
    and a reply future per call."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[tuple[dict[str, int], asyncio.Future[int]]] = (
            asyncio.Queue())
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            kwargs, reply = await self.requests.get()
            if not reply.done():
                reply.set_result(kwargs["a"] + kwargs["b"])

    async def call(self, a: int, b: int) -> int:
        reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self.requests.put(({"a": a, "b": b}, reply))
        return await reply

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def raw_sequential(count: int, repeats: int, warmup: int) -> float:
    server = RawServer()
    server.start()

    async def calls(n: int) -> None:
        for i in range(n):
            await server.call(i, 1)

    await calls(warmup)
    timings = [await timed(lambda: calls(count)) for _ in range(repeats)]
    await server.stop()
    return rate(count, timings)


async def raw_concurrent(count: int, repeats: int, warmup: int) -> float:
    server = RawServer()
    server.start()

    async def calls(n: int) -> None:
        for _ in range(n // CONCURRENCY):
            await asyncio.gather(*(server.call(i, 1) for i in range(CONCURRENCY)))

    await calls(warmup)
    timings = [await timed(lambda: calls(count)) for _ in range(repeats)]
    await server.stop()
    return rate(count, timings)


def raw_sync_sequential(count: int, repeats: int, warmup: int) -> float:
    """Sync caller on the main thread, server on a loop in another thread: each call is a
    thread hop plus the queue hand-off, as a sync bus call is."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="raw-loop", daemon=True)
    thread.start()
    server = RawServer()
    loop.call_soon_threadsafe(server.start)

    def calls(n: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            asyncio.run_coroutine_threadsafe(server.call(i, 1), loop).result()
        return time.perf_counter() - started

    calls(warmup)
    timings = [calls(count) for _ in range(repeats)]
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
    return rate(count, timings)


async def raw_events(count: int, repeats: int, warmup: int) -> float:
    """`count` items put one by one on a queue, one consumer task; until all are taken."""
    queue: asyncio.Queue[dict[str, int]] = asyncio.Queue()
    handled = 0
    target = 0
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal handled
        while True:
            await queue.get()
            handled += 1
            if handled >= target:
                done.set()

    consumer = asyncio.get_running_loop().create_task(consume())

    async def burst(n: int) -> None:
        nonlocal target
        done.clear()
        target = handled + n
        for i in range(n):
            await queue.put({"n": i})
        await done.wait()

    await burst(warmup)
    timings = [await timed(lambda: burst(count)) for _ in range(repeats)]
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    return rate(count, timings)


# -- the bus ----------------------------------------------------------------------------------


def bus_sync_sequential(count: int, repeats: int, warmup: int) -> float:
    """`bus.bench.add(...)` from the main thread; the worker runs on the client's own loop
    (bus.client.start_worker()), as in a script or a Django view next to a worker."""
    bus = make_bus()
    bus.client.start_worker()
    try:
        def calls(n: int) -> float:
            started = time.perf_counter()
            for i in range(n):
                bus.bench.add(a=i, b=1)
            return time.perf_counter() - started

        calls(warmup)
        timings = [calls(count) for _ in range(repeats)]
    finally:
        bus.client.close()
    return rate(count, timings)


async def _serving(body: Callable[[Bus], Awaitable[float]]) -> float:
    """Run `body(bus)` with a worker for the bus on the current loop."""
    bus = make_bus()
    worker = bus.client.worker()
    await worker.start()
    try:
        return await body(bus)
    finally:
        await worker.stop()
        await bus.client.close_async()


async def bus_async_sequential(count: int, repeats: int, warmup: int, *,
                               procedure: str = "add") -> float:
    """`await bus.bench.add.call_async(...)` one after another, worker on the same loop."""

    async def body(bus: Bus) -> float:
        call = getattr(bus.bench, procedure).call_async

        async def calls(n: int) -> None:
            for i in range(n):
                await call(a=i, b=1)

        await calls(warmup)
        return rate(count, [await timed(lambda: calls(count)) for _ in range(repeats)])

    return await _serving(body)


async def bus_async_concurrent(count: int, repeats: int, warmup: int) -> float:
    """Batches of CONCURRENCY `call_async` in flight at once (asyncio.gather)."""

    async def body(bus: Bus) -> float:
        async def calls(n: int) -> None:
            for _ in range(n // CONCURRENCY):
                await asyncio.gather(*(bus.bench.add.call_async(a=i, b=1)
                                       for i in range(CONCURRENCY)))

        await calls(warmup)
        return rate(count, [await timed(lambda: calls(count)) for _ in range(repeats)])

    return await _serving(body)


async def bus_events(count: int, repeats: int, warmup: int) -> float:
    """`await fire_async` `count` times, one async listener on a worker on the same loop;
    timed until the last event is handled."""
    handled = 0
    target = 0
    done = asyncio.Event()

    async def on_tick(event: EventMessage, n: int) -> None:
        nonlocal handled
        handled += 1
        if handled >= target:
            done.set()

    bus = make_bus()
    bus.bench.tick.listen(on_tick, listener_name="bench_counter")  # before the worker starts
    worker = bus.client.worker()
    await worker.start()
    try:
        async def burst(n: int) -> None:
            nonlocal target
            done.clear()
            target = handled + n
            for i in range(n):
                await bus.bench.tick.fire_async(n=i)
            await done.wait()

        await burst(warmup)
        timings = [await timed(lambda: burst(count)) for _ in range(repeats)]
    finally:
        await worker.stop()
        await bus.client.close_async()
    return rate(count, timings)


async def _alternating(count: int, rounds: int, warmup: int,
                       run: Callable[[Bus, int], Awaitable[None]]) -> tuple[float, float]:
    """Rates of `run(bus, count)` on a hook-free bus and on one with the trivial hook plugin,
    measured in alternating rounds (ABBA order) so drift and noise hit both alike."""
    plain, hooked = make_bus(), make_bus(plugins=(TrivialHooks(),))
    try:
        await run(plain, warmup)
        await run(hooked, warmup)
        plain_times: list[float] = []
        hooked_times: list[float] = []
        for round_number in range(rounds):
            order = [(plain, plain_times), (hooked, hooked_times)]
            for bus, times in order if round_number % 2 == 0 else reversed(order):
                times.append(await timed(lambda bus=bus: run(bus, count)))
    finally:
        await plain.client.close_async()
        await hooked.client.close_async()
    return rate(count, plain_times), rate(count, hooked_times)


async def fire_rates(count: int, rounds: int, warmup: int) -> tuple[float, float]:
    """`await fire_async` alone (no listener): (hook-free rate, trivial-hooks rate)."""

    async def fires(bus: Bus, n: int) -> None:
        fire = bus.bench.tick.fire_async
        for i in range(n):
            await fire(n=i)

    return await _alternating(count, rounds, warmup, fires)


async def facade_rates(count: int, rounds: int) -> tuple[float, float]:
    """The facade calls alone, `await hooks.before_event_fire(...)` then
    `await hooks.after_event_fire(...)` per message: (no implementation, trivial ones)."""
    message = EventMessage(api_name="bench", event_name="tick", kwargs={"n": 1})

    async def calls(bus: Bus, n: int) -> None:
        client = bus.client
        hooks = client.hooks
        for _ in range(n):
            await hooks.before_event_fire(client, message)
            await hooks.after_event_fire(client, message, None, 0.0)

    return await _alternating(count, rounds, 1000, calls)


# -- the run ----------------------------------------------------------------------------------


BASELINES = {
    "A": "main thread -> loop thread (run_coroutine_threadsafe), request Queue + reply future",
    "B": "same loop: request asyncio.Queue served by one task + a reply future per call",
    "C": "as B, CONCURRENCY calls gathered at once",
    "D": "asyncio.Queue, one producer awaiting put(), one consumer task",
    "E": "the same bus with no plugin implementing any message-flow hook",
}


def measure(sizes: Sizes) -> list[Row]:
    """Every row of the table; each bus figure with its baseline measured right beside it."""
    s = sizes
    rows = [
        Row("RPC, sequential sync calls",
            bus_sync_sequential(s.rpc_sync, s.repeats, s.warmup),
            raw_sync_sequential(s.rpc_sync, s.repeats, s.warmup), "A"),
        Row("RPC, sequential await call_async",
            asyncio.run(bus_async_sequential(s.rpc_async, s.repeats, s.warmup)),
            asyncio.run(raw_sequential(s.rpc_async, s.repeats, s.warmup)), "B"),
        Row("RPC, sequential call_async, sync procedure",
            asyncio.run(bus_async_sequential(s.rpc_async, s.repeats, s.warmup,
                                             procedure="add_sync")),
            asyncio.run(raw_sequential(s.rpc_async, s.repeats, s.warmup)), "B"),
        Row(f"RPC, {CONCURRENCY} concurrent call_async",
            asyncio.run(bus_async_concurrent(s.rpc_concurrent, s.repeats, s.warmup)),
            asyncio.run(raw_concurrent(s.rpc_concurrent, s.repeats, s.warmup)), "C"),
        Row("events end to end, fire_async -> listener",
            asyncio.run(bus_events(s.events, s.repeats, s.warmup)),
            asyncio.run(raw_events(s.events, s.repeats, s.warmup)), "D"),
    ]
    plain_fire, hooked_fire = asyncio.run(fire_rates(s.fire, s.rounds, s.warmup))
    rows.append(Row("fire_async, trivial before/after_event_fire", hooked_fire, plain_fire,
                    "E"))
    plain_facade, hooked_facade = asyncio.run(facade_rates(s.facade, s.rounds))
    rows.append(Row("hook facade alone, trivial before/after_event_fire", hooked_facade,
                    plain_facade, "E"))
    return rows


TARGETS = {"events end to end": 50_000, "RPC, sequential await call_async": 20_000}


def render(rows: list[Row], sizes: Sizes, quick: bool, seconds: float) -> str:
    """The table, its legend, and the per-message hook cost."""
    lines = [
        f"memory_bench{' --quick' if quick else ''}: Python {platform.python_version()} "
        f"on {platform.machine()}, {os.cpu_count()} CPU(s); median of {sizes.repeats} "
        f"run(s) per figure ({sizes.rounds} alternating rounds for the hook rows); "
        f"{seconds:.1f}s in all",
        "",
    ]
    lines += format_table(HEADER, [row.cells() for row in rows])
    lines += legend(BASELINES)
    fire = next(r for r in rows if r.case.startswith("fire_async, trivial"))
    facade = next(r for r in rows if r.case.startswith("hook facade alone"))
    lines.append("")
    lines.append(
        f"per-message cost of two trivial hook impls: "
        f"{1e6 / fire.bus_rate - 1e6 / fire.baseline_rate:+.2f} us on fire_async "
        f"({fire.ratio:.3f}x the hook-free rate); facade with no impl: "
        f"{1e6 / facade.baseline_rate:.2f} us, with the trivial impls: "
        f"{1e6 / facade.bus_rate:.2f} us (both hooks together)"
    )
    for case, target in TARGETS.items():  # issue #13's absolute targets for this path
        row = next(r for r in rows if r.case.startswith(case))
        lines.append(f"{case}: {row.bus_rate:,.0f}/s; target >= {target:,}/s: "
                     f"{'ok' if row.bus_rate >= target else 'MISS'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="In-memory path benchmark of Bus.")
    parser.add_argument("--quick", action="store_true",
                        help="a ~5 s run with small counts and no repeats (rough figures)")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    started = time.perf_counter()
    rows = measure(sizes)
    print(render(rows, sizes, args.quick, time.perf_counter() - started), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
