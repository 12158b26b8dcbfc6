"""Schema validation benchmark: what the schema plugin costs per message.

The message is a typical small event, four parameters (`order_id: int`, `customer: str`,
`total_cents: int`, `express: bool`), checked against the schema the plugin generates for it.
Every figure is printed next to a baseline measured in the same run, in the same process:

- Validation rows: the plugin's compiled check (`CompiledSchema.check`, fastjsonschema)
  against jsonschema's `Draft7Validator.is_valid`, the reference, on the same schema and value.
- Bus rows: the same bus with the schema plugin enabled against one with it disabled
  (`plugins: {schema: {enabled: false}}`), each on a memory broker of its own, measured in
  alternating rounds (ABBA order) and compared by their medians, because the difference is
  small next to the noise.

    python bench/schema_bench.py            # ~25 s
    python bench/schema_bench.py --quick    # ~5 s, rough figures
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import tables
from bus_schema import CompiledSchema, SchemaValidationError, api_schema
from tables import HEADER, format_table, legend

import bus_core
from bus_core import Api, Bus, Event, EventMessage, Parameter

TARGET_US = 10.0  # the goal: at most 10 us of validation per message
VALUE = {"order_id": 1234, "customer": "ada", "total_cents": 900, "express": False}
INVALID = {"order_id": 1234, "customer": "ada", "total_cents": "9.00", "express": False}
_brokers = itertools.count(1)


# -- what the bus serves ----------------------------------------------------------------------


class BenchApi(Api):
    """One typed event with four parameters."""

    order_placed = Event(parameters=[
        Parameter("order_id", int),
        Parameter("customer", str),
        Parameter("total_cents", int),
        Parameter("express", bool, default=False),
    ])

    class Meta:
        name = "bench"


def make_bus(*, schema: bool) -> Bus:
    """A bus on a memory broker of its own, serving BenchApi, the schema plugin on or off."""
    transport = {"memory": {"broker": f"schema-bench-{os.getpid()}-{next(_brokers)}"}}
    config = {
        "bus": {"schema": {"transport": transport}},
        "apis": {"default": {"rpc_transport": transport, "result_transport": transport,
                             "event_transport": transport, "rpc_timeout": 30}},
        "plugins": {"schema": {"enabled": schema}},
    }
    bus = bus_core.create(config, service_name="bench")
    bus.client.register_api(BenchApi())
    return bus


# -- measuring --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Operations per timed run of each row, and how many alternating rounds of each."""

    compiled: int
    reference: int
    hook: int
    fire: int
    events: int
    rounds: int
    warmup: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(compiled=50_000, reference=5_000, hook=20_000, fire=3_000, events=3_000,
                   rounds=16, warmup=500)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(compiled=10_000, reference=1_000, hook=5_000, fire=1_000, events=1_000,
                   rounds=6, warmup=200)


@dataclasses.dataclass(frozen=True)
class Row(tables.Row):
    """A table row that also knows what the case adds per operation."""

    @property
    def added_us(self) -> float:
        """Microseconds per operation the case costs more than its baseline."""
        return 1e6 / self.bus_rate - 1e6 / self.baseline_rate


def alternating(first: Callable[[], float], second: Callable[[], float],
                rounds: int) -> tuple[float, float]:
    """Median durations of two timed runs measured in alternating rounds (ABBA order)."""
    times: tuple[list[float], list[float]] = ([], [])
    for round_number in range(rounds):
        order = [(first, times[0]), (second, times[1])]
        for run, out in order if round_number % 2 == 0 else reversed(order):
            out.append(run())
    return statistics.median(times[0]), statistics.median(times[1])


async def alternating_async(first: Callable[[], Awaitable[float]],
                            second: Callable[[], Awaitable[float]],
                            rounds: int) -> tuple[float, float]:
    """`alternating` for coroutines, on the running loop."""
    times: tuple[list[float], list[float]] = ([], [])
    for round_number in range(rounds):
        order = [(first, times[0]), (second, times[1])]
        for run, out in order if round_number % 2 == 0 else reversed(order):
            out.append(await run())
    return statistics.median(times[0]), statistics.median(times[1])


def event_schema() -> dict[str, Any]:
    """The parameters schema the plugin generates (and publishes) for bench.order_placed."""
    return api_schema(BenchApi)["events"]["order_placed"]["parameters"]


# -- validation alone -------------------------------------------------------------------------


def validation_rates(sizes: Sizes) -> tuple[float, float]:
    """(compiled check, jsonschema is_valid) checks per second on a valid value."""
    compiled = CompiledSchema(event_schema())
    check, reference = compiled.check, compiled.reference.is_valid
    where = "event bench.order_placed"
    assert reference(VALUE) and compiled.is_valid(VALUE)

    def run_compiled() -> float:
        started = time.perf_counter()
        for _ in range(sizes.compiled):
            check(VALUE, where, True)
        return time.perf_counter() - started

    def run_reference() -> float:
        started = time.perf_counter()
        for _ in range(sizes.reference):
            reference(VALUE)
        return time.perf_counter() - started

    run_compiled()
    run_reference()
    compiled_time, reference_time = alternating(run_compiled, run_reference, sizes.rounds)
    return sizes.compiled / compiled_time, sizes.reference / reference_time


def rejection_us(count: int) -> float:
    """Microseconds to refuse an invalid value: the compiled check fails, jsonschema confirms
    and explains (SchemaValidationError with its message)."""
    compiled = CompiledSchema(event_schema())
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(count):
            with contextlib.suppress(SchemaValidationError):
                compiled.check(INVALID, "event bench.order_placed", True)
        timings.append(time.perf_counter() - started)
    return 1e6 * statistics.median(timings) / count


# -- the bus, schema plugin on and off --------------------------------------------------------


async def hook_rates(sizes: Sizes) -> tuple[float, float]:
    """`await hooks.before_event_fire(...)` alone: (plugin on, plugin off) calls per second.
    With the plugin on this is the whole per-message validation as a bus pays it: the hook
    call, the config and store look-ups and the compiled check."""
    on, off = make_bus(schema=True), make_bus(schema=False)
    message = EventMessage(api_name="bench", event_name="order_placed", kwargs=dict(VALUE))

    def runner(bus: Bus) -> Callable[[], Awaitable[float]]:
        client = bus.client
        hook = client.hooks.before_event_fire

        async def run() -> float:
            started = time.perf_counter()
            for _ in range(sizes.hook):
                await hook(client, message)
            return time.perf_counter() - started

        return run

    try:
        await runner(on)()  # compiles the validator
        await runner(off)()
        on_time, off_time = await alternating_async(runner(on), runner(off), sizes.rounds)
    finally:
        await on.client.close_async()
        await off.client.close_async()
    return sizes.hook / on_time, sizes.hook / off_time


async def fire_rates(sizes: Sizes) -> tuple[float, float]:
    """`await fire_async(...)` alone, no listener: (plugin on, plugin off) fires per second."""
    on, off = make_bus(schema=True), make_bus(schema=False)

    def runner(bus: Bus, count: int) -> Callable[[], Awaitable[float]]:
        fire = bus.bench.order_placed.fire_async

        async def run() -> float:
            started = time.perf_counter()
            for i in range(count):
                await fire(order_id=i, customer="ada", total_cents=900, express=False)
            return time.perf_counter() - started

        return run

    try:
        await runner(on, sizes.warmup)()
        await runner(off, sizes.warmup)()
        on_time, off_time = await alternating_async(runner(on, sizes.fire),
                                                    runner(off, sizes.fire), sizes.rounds)
    finally:
        await on.client.close_async()
        await off.client.close_async()
    return sizes.fire / on_time, sizes.fire / off_time


class Counted:
    """A bus with a worker and one async listener that counts what it handled."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.handled = 0
        self.target = 0
        self.done = asyncio.Event()

    async def on_order(self, event: EventMessage, order_id: int, customer: str,
                       total_cents: int, express: bool) -> None:
        self.handled += 1
        if self.handled >= self.target:
            self.done.set()

    def runner(self, count: int) -> Callable[[], Awaitable[float]]:
        fire = self.bus.bench.order_placed.fire_async

        async def run() -> float:
            self.done.clear()
            self.target = self.handled + count
            started = time.perf_counter()
            for i in range(count):
                await fire(order_id=i, customer="ada", total_cents=900, express=False)
            await self.done.wait()
            return time.perf_counter() - started

        return run


async def event_rates(sizes: Sizes) -> tuple[float, float]:
    """fire_async -> listener, timed until the last event is handled: (plugin on, plugin off)
    events per second. With the plugin on each event is checked twice: when fired and
    before it is handled."""
    sides = [Counted(make_bus(schema=True)), Counted(make_bus(schema=False))]
    workers = []
    try:
        for side in sides:
            side.bus.bench.order_placed.listen(side.on_order, listener_name="bench_orders")
            worker = side.bus.client.worker()
            await worker.start()
            workers.append(worker)
        for side in sides:
            await side.runner(sizes.warmup)()
        on_time, off_time = await alternating_async(sides[0].runner(sizes.events),
                                                    sides[1].runner(sizes.events),
                                                    sizes.rounds)
    finally:
        for worker in workers:
            await worker.stop()
        for side in sides:
            await side.bus.client.close_async()
    return sizes.events / on_time, sizes.events / off_time


# -- the run ----------------------------------------------------------------------------------


BASELINES = {
    "J": "jsonschema Draft7Validator(schema).is_valid(value): the reference validator",
    "K": "the same bus with the schema plugin disabled (plugins.schema.enabled: false)",
}


def measure(sizes: Sizes) -> list[Row]:
    """Every row of the table; each figure with its baseline measured right beside it."""
    compiled, reference = validation_rates(sizes)
    rows = [Row("validate, compiled (CompiledSchema.check)", compiled, reference, "J")]
    rows.append(Row("before_event_fire hook alone, plugin on",
                    *asyncio.run(hook_rates(sizes)), "K"))
    rows.append(Row("fire_async, plugin on", *asyncio.run(fire_rates(sizes)), "K"))
    rows.append(Row("events end to end, fire_async -> listener, plugin on",
                    *asyncio.run(event_rates(sizes)), "K"))
    return rows


def render(rows: list[Row], sizes: Sizes, quick: bool, seconds: float,
           rejected_us: float) -> str:
    """The table, its legend, the cost per validated message and the target."""
    lines = [
        f"schema_bench{' --quick' if quick else ''}: Python {platform.python_version()} "
        f"on {platform.machine()}, {os.cpu_count()} CPU(s); median of {sizes.rounds} "
        f"alternating rounds per figure; {seconds:.1f}s in all",
        "",
    ]
    lines += format_table(HEADER, [row.cells() for row in rows])
    lines += legend(BASELINES)
    check, hook, fire, events = rows

    def verdict(us: float) -> str:
        return "ok" if us <= TARGET_US else "MISS"

    compiled_us = 1e6 / check.bus_rate
    lines += [
        "",
        f"per validated message (a 4-parameter event), target <= {TARGET_US:g} us:",
        f"  compiled check alone          {compiled_us:7.2f} us  {verdict(compiled_us):4}  "
        f"(jsonschema is_valid {1e6 / check.baseline_rate:.2f} us, {check.ratio:.1f}x as long)",
        f"  before_event_fire hook        {hook.added_us:+7.2f} us  {verdict(hook.added_us):4}  "
        "(the check, the plugin's look-ups and the hook call)",
        f"  fire_async                    {fire.added_us:+7.2f} us  {verdict(fire.added_us):4}  "
        "(what a fire pays)",
        f"  end to end, two checks        {events.added_us:+7.2f} us        "
        "(fired and handled: one check each side)",
        f"  refusing an invalid value     {rejected_us:7.1f} us        "
        "(compiled check, then jsonschema to confirm and explain)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Schema validation benchmark of Bus.")
    parser.add_argument("--quick", action="store_true",
                        help="a ~5 s run with small counts and few rounds (rough figures)")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    started = time.perf_counter()
    rows = measure(sizes)
    rejected = rejection_us(200 if args.quick else 1_000)
    print(render(rows, sizes, args.quick, time.perf_counter() - started, rejected),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
