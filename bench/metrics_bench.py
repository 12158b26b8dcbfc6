"""Metrics benchmark: what the metrics plugin (`bus-metrics`) costs per message.

The same bus twice, in one process on the `memory` transports (each on a broker of its own):
once with `plugins: {metrics: {enabled: true}}` (its endpoint serving on a free port, as a
worker in production would), once without. The two run in alternating rounds (ABBA order)
on the same loop and each figure is the median of the rounds, so drift and noise hit both.

The goal (issue 5): events per second end to end drop by no more than 10% with the plugin.

    python bench/metrics_bench.py            # ~25 s
    python bench/metrics_bench.py --quick    # ~4 s, rough figures
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
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tables import HEADER, Row, format_table

import bus_core
from bus_core import Api, Bus, Event, EventMessage, hookimpl

TARGET_RATIO = 0.9  # events/s with metrics >= 0.9x without
_brokers = itertools.count(1)


class BenchApi(Api):
    """One async RPC, one event."""

    tick = Event(parameters=("n",))

    class Meta:
        name = "bench"

    async def add(self, a: int, b: int) -> int:
        return a + b


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Operations per timed round, and how many alternating rounds."""

    events: int
    fire: int
    rpc: int
    facade: int
    rounds: int
    warmup: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(events=3_000, fire=3_000, rpc=2_000, facade=20_000, rounds=16, warmup=300)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(events=600, fire=600, rpc=400, facade=5_000, rounds=6, warmup=100)


class NoOpObservers:
    """A plugin whose two per-event hooks do nothing: the floor any observing plugin pays
    (the kernel's facade and the hook call), to tell it from the metrics plugin's own work."""

    bus_plugin_name = "bench_noop_observers"

    @hookimpl
    def bus_after_event_fire(self, client: Any, message: EventMessage,
                             error: BaseException | None, duration: float) -> None:
        pass

    @hookimpl
    def bus_after_event_handling(self, client: Any, message: EventMessage, listener_name: str,
                                 error: BaseException | None, duration: float) -> None:
        pass


def make_bus(*, metrics: bool, plugins: tuple[object, ...] = ()) -> Bus:
    """A bus on a memory broker of its own serving BenchApi, the metrics plugin on or off."""
    transport = {"memory": {"broker": f"metrics-bench-{os.getpid()}-{next(_brokers)}"}}
    config: dict[str, Any] = {
        "bus": {"schema": {"transport": transport}},
        "apis": {"default": {"rpc_transport": transport, "result_transport": transport,
                             "event_transport": transport, "rpc_timeout": 30}},
        "plugins": {"metrics": {"enabled": metrics, "port": 0}},
    }
    bus = bus_core.create(config, service_name="bench", plugins=plugins)
    bus.client.register_api(BenchApi())
    return bus


class Counter:
    """The listener: counts events and wakes the timer once `target` have arrived."""

    def __init__(self) -> None:
        self.handled = 0
        self.target = 0
        self.done = asyncio.Event()

    async def __call__(self, event: EventMessage, n: int) -> None:
        self.handled += 1
        if self.handled >= self.target:
            self.done.set()

    def expect(self, count: int) -> None:
        self.done.clear()
        self.target = self.handled + count


Workload = Callable[[Bus, Counter, int], Awaitable[None]]


async def events(bus: Bus, counter: Counter, n: int) -> None:
    """`n` awaited fire_async, until the listener has handled the last one."""
    counter.expect(n)
    fire = bus.bench.tick.fire_async
    for i in range(n):
        await fire(n=i)
    await counter.done.wait()


async def rpcs(bus: Bus, counter: Counter, n: int) -> None:
    """`n` sequential call_async, the worker on the same loop."""
    call = bus.bench.add.call_async
    for i in range(n):
        await call(a=i, b=1)


async def facade(bus: Bus, counter: Counter, n: int) -> None:
    """The per-message hook calls of one event end to end, alone: after_event_fire and
    after_event_handling through the kernel's facade."""
    client = bus.client
    hooks = client.hooks
    message = EventMessage(api_name="bench", event_name="tick", kwargs={"n": 1})
    for _ in range(n):
        await hooks.after_event_fire(client, message, None, 1e-5)
        await hooks.after_event_handling(client, message, "bench_counter", None, 1e-5)


async def start_counting(buses: list[Bus]) -> tuple[list[Counter], list[Any]]:
    """A started worker per bus, each with a Counter listening to bench.tick."""
    counters, workers = [], []
    for bus in buses:
        counter = Counter()
        bus.bench.tick.listen(counter, listener_name="bench_counter")
        worker = bus.client.worker()
        await worker.start()
        counters.append(counter)
        workers.append(worker)
    return counters, workers


async def alternating(sizes: Sizes) -> list[Row]:
    """Every row: the bus without the plugin (K), with it, and with two no-op observer hooks
    instead, measured in rotating rounds on one loop."""
    buses = [make_bus(metrics=False), make_bus(metrics=True),
             make_bus(metrics=False, plugins=(NoOpObservers(),))]
    counters, workers = await start_counting(buses)
    plan: list[tuple[str, Workload, int, list[int]]] = [
        ("events end to end, fire_async -> listener", events, sizes.events, [1, 2]),
        ("RPC, sequential await call_async", rpcs, sizes.rpc, [1]),
        ("hook facade alone, after_event_fire + after_event_handling", facade,
         sizes.facade, [1, 2]),
    ]
    rows = []
    try:
        for case, workload, count, compared in plan:
            sides = [0, *compared]
            for side in sides:
                await workload(buses[side], counters[side], sizes.warmup)
            times: dict[int, list[float]] = {side: [] for side in sides}
            for round_number in range(sizes.rounds):
                shift = round_number % len(sides)  # each goes first as often as the others
                order = sides[shift:] + sides[:shift]
                for side in order if round_number % 2 == 0 else reversed(order):
                    started = time.perf_counter()
                    await workload(buses[side], counters[side], count)
                    times[side].append(time.perf_counter() - started)
            rate = {side: count / statistics.median(t) for side, t in times.items()}
            rows.append(Row(case, rate[1], rate[0], "K"))
            if 2 in compared:
                rows.append(Row("  the same, two no-op hooks instead of metrics", rate[2],
                                rate[0], "K"))
    finally:
        for worker in workers:
            await worker.stop()
        for bus in buses:
            await bus.client.close_async()
    return rows


def render(rows: list[Row], sizes: Sizes, quick: bool, seconds: float) -> str:
    """The table, its legend, and the verdict on the 10% goal."""
    lines = [
        f"metrics_bench{' --quick' if quick else ''}: Python {platform.python_version()} "
        f"on {platform.machine()}, {os.cpu_count()} CPU(s); median of {sizes.rounds} "
        f"alternating rounds per figure; {seconds:.1f}s in all",
        "",
    ]
    lines += format_table(HEADER, [row.cells() for row in rows])
    lines += [
        "",
        "baselines (bus/base = bus rate / baseline rate; 1.0 would be free):",
        "  K  the same bus, the same workload, with the metrics plugin disabled (no plugin",
        "     implementing a message-flow hook)",
        "",
    ]
    end_to_end = rows[0]
    verdict = "ok" if end_to_end.ratio >= TARGET_RATIO else "MISS"
    noop, hooks, hooks_noop = rows[1], rows[-2], rows[-1]

    def extra(row: Row) -> str:
        return f"{1e6 / row.bus_rate - 1e6 / row.baseline_rate:+.2f} us"

    lines += [
        f"events end to end with metrics: {end_to_end.ratio:.3f}x the rate without "
        f"({extra(end_to_end)} per event; two no-op hooks: {noop.ratio:.3f}x, "
        f"{extra(noop)}); target >= {TARGET_RATIO}x: {verdict}",
        f"the two hooks through the facade alone: metrics {extra(hooks)}, no-op "
        f"{extra(hooks_noop)} per event (the plugin's own work: the difference)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cost of the metrics plugin per message.")
    parser.add_argument("--quick", action="store_true",
                        help="a few-second run with small counts (rough figures)")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    started = time.perf_counter()
    rows = asyncio.run(alternating(sizes))
    print(render(rows, sizes, args.quick, time.perf_counter() - started), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
