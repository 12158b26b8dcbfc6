"""Redis path benchmark: Bus on its Redis transports against raw redis-py asyncio doing the
same Redis work, producer and consumer (caller and worker) in separate processes.

The benchmark starts its own redis-server on a free loopback port (no persistence) and stops
it at the end. Each side runs in processes of its own (bench/redis_roles.py, started with
multiprocessing's spawn), all of one group alive at once: the raw and the bus runs of a row
alternate (raw, bus, bus, raw, ...) and each figure is the median of its runs, so drift and
other load on the machine hit both sides alike.

- events, awaited: one producer process firing with awaited `fire_async` (raw: an awaited
  XADD per event), one consumer process (a Bus worker with one listener; raw: XREADGROUP
  COUNT 100 and one multi-id XACK per batch); timed from the first fire to the last event
  handled.
- events, batched: the same, the producer firing BATCH events at once with asyncio.gather
  of `fire_async` (raw: a pipeline of BATCH XADDs).
- backlog drain: BACKLOG events already on a stream (filled beforehand, Bus's field layout
  on both sides), then one consumer from its start (a new listener; raw: a new group reading
  COUNT 100 and acknowledging each batch), timed until all are handled.
- RPC, sequential: p50 of one `call_async` after another (raw: LPUSH request, worker BLPOP
  + LPUSH reply, caller BLPOP on its reply key).
- RPC, CONCURRENCY in flight: calls per second with CONCURRENCY tasks calling at once
  (raw: one shared reply list read by one BLMPOP loop, the requests of a loop turn in one
  RPUSH, a worker popping batches with BLMPOP and pipelining the replies).

    python bench/redis_bench.py            # ~60 s
    python bench/redis_bench.py --quick    # ~10 s, rough figures
    python bench/redis_bench.py --quick --profile /tmp/prof   # where the time goes

Besides the table, the run prints per row the CPU microseconds per operation of each process
(bus and raw, from the processes' own CPU clocks, no profiler): on a machine with 2 CPUs the
producer, the consumer and redis-server compete for them, so CPU per operation is what the
rates follow.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import platform
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
import redis_roles
import tables
from redis_roles import BATCH, CONCURRENCY
from tables import HEADER, format_table, legend

# The per-message CPU budgets of the speed work (issue #13): microseconds of CPU per event
# consumed, per batched fire, and per RPC on each side, beside raw redis-py's.
CONSUMER_BUDGET_US = 15
PRODUCER_BUDGET_US = 25
RPC_BUDGET_US = 25
REPLY_TIMEOUT = 120.0  # seconds to wait for a role's answer before giving up
PROFILED_OPS: dict[str, int] = {}  # operations each profile label covered (warm-up included)


# -- sizes and rows ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Operations per timed run of each row, runs per side (`repeats`), and the warm-up
    run's size as a fraction of a timed one."""

    events_awaited: int
    events_batched: int
    backlog: int
    rpc_sequential: int
    rpc_many: int
    repeats: int
    warmup: float

    @classmethod
    def full(cls) -> Sizes:
        return cls(events_awaited=5_000, events_batched=20_000, backlog=50_000,
                   rpc_sequential=2_000,
                   rpc_many=12_000, repeats=3, warmup=0.3)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(events_awaited=1_000, events_batched=4_000, backlog=10_000,
                   rpc_sequential=400,
                   rpc_many=2_500, repeats=2, warmup=0.2)


@dataclasses.dataclass(frozen=True)
class Row(tables.Row):
    """A table row (for the sequential RPC row the rates are 1 / p50 latency) with the
    issue's target."""

    target: str = ""
    met: bool = False
    note: str = ""


# -- redis-server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, str]]:
    """A redis-server of this run on a free loopback port: (url, version)."""
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis_bench: skipped, redis-server is not installed (apt-get install "
              "redis-server)", flush=True)
        sys.exit(0)
    port = free_port()
    if port == 6379:  # never the standard port: someone else's Redis may live there
        port = free_port()
    with tempfile.TemporaryDirectory(prefix="redis-bench-") as folder:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", folder, "--logfile", str(Path(folder, "log"))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port, socket_connect_timeout=0.2)
            deadline = time.monotonic() + 10
            while True:
                try:
                    version = str(client.info("server")["redis_version"])
                    break
                except redis.exceptions.ConnectionError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        sys.exit(f"redis_bench: redis-server did not start on port {port}")
                    time.sleep(0.02)
            client.close()
            yield f"redis://127.0.0.1:{port}/0", version
        finally:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- role processes ---------------------------------------------------------------------------


class Role:
    """A role process (see redis_roles.py) and our end of its pipe."""

    def __init__(self, name: str, url: str, profile_dir: Path | None) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = context.Pipe()
        prefix = str(profile_dir / name) if profile_dir else None
        self.process = context.Process(target=redis_roles.run_role, name=f"bench-{name}",
                                       args=(name, child, url, prefix), daemon=True)
        self.process.start()
        child.close()

    def send(self, *message: Any) -> None:
        self.conn.send(message)

    def recv(self, expected: str) -> tuple[Any, ...]:
        if not self.conn.poll(REPLY_TIMEOUT):
            raise RuntimeError(f"{self.name} did not answer within {REPLY_TIMEOUT:g}s")
        message = self.conn.recv()
        if message[0] != expected:
            raise RuntimeError(f"{self.name} said {message!r}, expected {expected!r}")
        return message

    def cpu(self) -> float:
        """CPU seconds the process has used so far."""
        self.send("cpu")
        return float(self.recv("cpu")[1])

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.send("stop")
        self.process.join(15)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.conn.close()


@contextlib.contextmanager
def roles(phases: list[list[str]], url: str, profile_dir: Path | None
          ) -> Iterator[dict[str, Role]]:
    """Start the roles of each phase at once, the next phase once they are all ready (the
    consumers and workers first: a Bus worker publishes its API's schema as it starts, so
    the callers find it); stop them all at the end."""
    started: dict[str, Role] = {}
    try:
        for names in phases:
            for name in names:
                started[name] = Role(name, url, profile_dir)
            for name in names:
                started[name].recv("ready")
        yield started
    finally:
        for role in started.values():
            role.stop()


@dataclasses.dataclass(frozen=True)
class Run:
    """One timed run: its duration, how long the producer or caller alone took, the CPU
    seconds of (producer or caller, consumer or worker), and per-call latencies."""

    seconds: float
    driver_seconds: float
    cpu: tuple[float, float]
    latencies: list[float]


def event_run(producer: Role, consumer: Role, mode: str, n: int) -> Run:
    """n events fired; timed from the first fire to the last event handled."""
    cpu = producer.cpu(), consumer.cpu()
    consumer.send("expect", n)
    consumer.recv("armed")
    producer.send("events", mode, n)
    _, started, fired = producer.recv("ran")
    _, handled = consumer.recv("done")
    return Run(handled - started, fired - started,
               (producer.cpu() - cpu[0], consumer.cpu() - cpu[1]), [])


def drain_run(consumer: Role, n: int, k: int) -> Run:
    """A new listener (group) at the start of a stream holding n events: until all handled."""
    cpu = consumer.cpu()
    consumer.send("drain", n, k)
    _, started, finished = consumer.recv("drained")
    return Run(finished - started, finished - started, (0.0, consumer.cpu() - cpu), [])


def rpc_run(caller: Role, worker: Role, mode: str, n: int) -> Run:
    """n calls, one after another ("seq") or CONCURRENCY at once ("many")."""
    cpu = caller.cpu(), worker.cpu()
    caller.send("call", mode, n)
    _, started, finished, latencies = caller.recv("ran")
    return Run(finished - started, finished - started,
               (caller.cpu() - cpu[0], worker.cpu() - cpu[1]), latencies)


def compare(sizes: Sizes, n: int, label: str, raw: Callable[[int], Run],
            bus: Callable[[int], Run], roles: list[Role]) -> tuple[list[Run], list[Run]]:
    """A warm-up run of each side, then `sizes.repeats` timed runs of each in ABBA order
    (raw, bus, bus, raw, ...): (raw runs, bus runs). The roles profile under `label`."""
    for role in roles:
        role.send("profile", label)
    warm = max(BATCH, int(n * sizes.warmup))
    PROFILED_OPS[label] = warm + n * sizes.repeats
    raw(warm)
    bus(warm)
    raw_runs: list[Run] = []
    bus_runs: list[Run] = []
    for number in range(sizes.repeats):
        order = [(raw, raw_runs), (bus, bus_runs)]
        for run, runs in order if number % 2 == 0 else reversed(order):
            runs.append(run(n))
    return raw_runs, bus_runs


def median_rate(n: int, runs: list[Run]) -> float:
    return n / statistics.median(run.seconds for run in runs)


def cpu_note(n: int, raw_runs: list[Run], bus_runs: list[Run], names: tuple[str, str]) -> str:
    """CPU microseconds per operation in each process, bus and raw (medians)."""
    def per_op(runs: list[Run], index: int) -> float:
        return statistics.median(run.cpu[index] for run in runs) / n * 1e6

    return (f"CPU us/op: {names[0]} bus {per_op(bus_runs, 0):.0f} / raw {per_op(raw_runs, 0):.0f}"
            f", {names[1]} bus {per_op(bus_runs, 1):.0f} / raw {per_op(raw_runs, 1):.0f}")


# -- the rows ---------------------------------------------------------------------------------


def event_rows(url: str, sizes: Sizes, profile_dir: Path | None) -> list[Row]:
    names = [["raw_consumer", "bus_consumer"], ["raw_producer", "bus_producer"]]
    rows = []
    with roles(names, url, profile_dir) as r:
        for mode, n, label, case, base, target in (
            ("awaited", sizes.events_awaited, "events_awaited",
             "events end to end, awaited fire_async", "F", 0.85),
            ("batched", sizes.events_batched, "events_batched",
             f"events end to end, gather of {BATCH} fire_async", "G", 0.6),
        ):
            raw_runs, bus_runs = compare(
                sizes, n, label,
                lambda k, m=mode: event_run(r["raw_producer"], r["raw_consumer"], m, k),
                lambda k, m=mode: event_run(r["bus_producer"], r["bus_consumer"], m, k),
                list(r.values()))
            bus_rate, raw_rate = median_rate(n, bus_runs), median_rate(n, raw_runs)
            alone = (f"producer alone: bus "
                     f"{n / statistics.median(x.driver_seconds for x in bus_runs):,.0f}/s, raw "
                     f"{n / statistics.median(x.driver_seconds for x in raw_runs):,.0f}/s")
            cpu = cpu_note(n, raw_runs, bus_runs, ("producer", "consumer"))
            budget = (f"; budget: consumer <= {CONSUMER_BUDGET_US} us"
                      + (f", producer <= {PRODUCER_BUDGET_US} us" if mode == "batched" else ""))
            rows.append(Row(case, bus_rate, raw_rate, base, f">= {target}",
                            bus_rate / raw_rate >= target, f"{alone}; {cpu}{budget}"))
        rows.append(backlog_row(r, sizes))
    return rows


def backlog_row(r: dict[str, Role], sizes: Sizes) -> Row:
    """`sizes.backlog` events already on a stream, then one consumer from its start: each
    timed run a new listener (raw: a new group), raw and bus alternating."""
    n = sizes.backlog
    for name in ("raw_producer", "bus_producer"):
        r[name].send("fill", n)
        r[name].recv("filled")
    for name in ("raw_consumer", "bus_consumer"):
        r[name].send("profile", "backlog")
    PROFILED_OPS["backlog"] = n * sizes.repeats
    raw_runs: list[Run] = []
    bus_runs: list[Run] = []
    for k in range(sizes.repeats):
        order = [("raw_consumer", raw_runs), ("bus_consumer", bus_runs)]
        for name, runs in order if k % 2 == 0 else reversed(order):
            runs.append(drain_run(r[name], n, k))
    bus_rate, raw_rate = median_rate(n, bus_runs), median_rate(n, raw_runs)

    def per_op(runs: list[Run]) -> float:
        return statistics.median(run.cpu[1] for run in runs) / n * 1e6

    note = (f"{n:,} events: bus {n / bus_rate:.2f} s, raw {n / raw_rate:.2f} s; CPU us/op: "
            f"consumer bus {per_op(bus_runs):.0f} / raw {per_op(raw_runs):.0f} "
            f"(budget <= {CONSUMER_BUDGET_US} us)")
    return Row(f"backlog drain, {n:,} events, 1 consumer", bus_rate, raw_rate, "J", ">= 0.5",
               bus_rate / raw_rate >= 0.5, note)


def rpc_rows(url: str, sizes: Sizes, profile_dir: Path | None) -> list[Row]:
    names = [["raw_worker", "bus_worker"], ["raw_caller", "bus_caller"]]
    rows = []
    with roles(names, url, profile_dir) as r:
        def raw(mode: str) -> Callable[[int], Run]:
            return lambda k: rpc_run(r["raw_caller"], r["raw_worker"], mode, k)

        def bus(mode: str) -> Callable[[int], Run]:
            return lambda k: rpc_run(r["bus_caller"], r["bus_worker"], mode, k)

        n = sizes.rpc_sequential
        raw_runs, bus_runs = compare(sizes, n, "rpc_sequential", raw("seq"), bus("seq"),
                                     list(r.values()))

        def p(runs: list[Run], fraction: float) -> float:
            return statistics.median(redis_roles.percentile(x.latencies, fraction)
                                     for x in runs)

        bus_p50, raw_p50 = p(bus_runs, 0.5), p(raw_runs, 0.5)
        note = (f"p50/p90/p99 us: bus {bus_p50 * 1e6:,.0f}/{p(bus_runs, 0.9) * 1e6:,.0f}/"
                f"{p(bus_runs, 0.99) * 1e6:,.0f}, raw {raw_p50 * 1e6:,.0f}/"
                f"{p(raw_runs, 0.9) * 1e6:,.0f}/{p(raw_runs, 0.99) * 1e6:,.0f} "
                f"(p50 bus/raw {bus_p50 / raw_p50:.2f}x); "
                f"{cpu_note(n, raw_runs, bus_runs, ('caller', 'worker'))}")
        rows.append(Row("RPC sequential call_async, 1/p50", 1 / bus_p50, 1 / raw_p50, "H",
                        "p50 <= 1.3x", bus_p50 <= 1.3 * raw_p50, note))

        n = sizes.rpc_many
        raw_runs, bus_runs = compare(sizes, n, "rpc_many", raw("many"), bus("many"),
                                     list(r.values()))
        bus_rate = median_rate(n, bus_runs)
        rows.append(Row(f"RPC, {CONCURRENCY} call_async in flight", bus_rate,
                        median_rate(n, raw_runs), "I", ">= 0.5",
                        bus_rate >= 0.5 * median_rate(n, raw_runs),
                        cpu_note(n, raw_runs, bus_runs, ("caller", "worker"))
                        + f"; budget: <= {RPC_BUDGET_US} us a side"))
    return rows


# -- the run ----------------------------------------------------------------------------------


BASELINES = {
    "F": "raw producer process: awaited XADD per event; raw consumer process: XREADGROUP "
         "COUNT 100 BLOCK, one multi-id XACK per batch",
    "G": f"as F, the producer sending pipelines of {BATCH} XADDs",
    "H": "raw caller: LPUSH request, BLPOP its reply key; raw worker: BLPOP, LPUSH reply",
    "I": f"raw caller, {CONCURRENCY} tasks: one RPUSH per loop turn, one shared reply list "
         "read by one BLMPOP loop; raw worker: BLMPOP COUNT 100, one pipeline of replies",
    "J": "raw consumer: a new group at 0, XREADGROUP COUNT 100 + one multi-id XACK per batch; "
         "both streams filled beforehand in Bus's field layout",
}


def render(rows: list[Row], sizes: Sizes, quick: bool, seconds: float, version: str) -> str:
    body = [(*row.cells(), row.target, "ok" if row.met else "MISS") for row in rows]
    lines = [
        f"redis_bench{' --quick' if quick else ''}: Python {platform.python_version()} "
        f"on {platform.machine()}, {os.cpu_count()} CPU(s), redis-server {version}; "
        f"median of {sizes.repeats} run(s) per figure, raw and bus alternating; "
        f"{seconds:.1f}s in all",
        "",
        *format_table((*HEADER, "target", ""), body, left=(0, 7, 8)),
        *legend(BASELINES),
    ]
    notes = [(row.baseline, row.note) for row in rows if row.note]
    if notes:
        lines.append("")
        lines += [f"  {key}: {note}" for key, note in notes]
    return "\n".join(lines)


IDLE = ("<method 'poll' of 'select.epoll' objects>",
        "<method 'recv' of '_multiprocessing.Connection' objects>")
AREAS = (  # (area, test on "path:function"), first match wins
    ("socket syscalls (+ preemption)", lambda f: "of '_socket.socket' objects" in f),
    ("redis-py + hiredis", lambda f: "/redis/" in f or "hiredis" in f),
    ("asyncio loop, tasks, futures", lambda f: "/asyncio/" in f or "selectors.py" in f
     or "_asyncio." in f or "_contextvars" in f or "_heapq" in f),
    ("bus_redis transports", lambda f: "/bus_redis/" in f),
    ("bus_core kernel", lambda f: "/bus_core/" in f),
    ("schema plugin", lambda f: "/bus_schema/" in f),
    ("pluggy", lambda f: "/pluggy/" in f),
    ("json", lambda f: "/json/" in f),
    ("uuid", lambda f: "uuid.py" in f),
    ("typing", lambda f: "typing.py" in f),
    ("bench harness", lambda f: "redis_roles.py" in f),
)


def area_of(filename: str, name: str) -> str:
    key = f"{filename}:{name}"
    for area, test in AREAS:
        if test(key):
            return area
    return "other (builtins, stdlib)"


def load_profile(path: Path, ops: int) -> tuple[float, dict[str, float], list[Any]]:
    """(own us/op in all, own us/op by area, [(own us/op, cum us/op, calls/op, function)])
    outside idle waits."""
    stats: Any = pstats.Stats(str(path))
    areas: dict[str, float] = {}
    entries = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():
        if name in IDLE or name.startswith("<method 'acquire' of '_thread"):
            continue
        area = area_of(filename, name)
        areas[area] = areas.get(area, 0.0) + own / ops * 1e6
        where = f"{Path(filename).name}:{line}" if line else "~"
        entries.append((own / ops * 1e6, cumulative / ops * 1e6, calls / ops,
                        f"{where}({name})"))
    entries.sort(reverse=True)
    return sum(areas.values()), areas, entries


def print_profiles(profile_dir: Path, top: int) -> None:
    """Per row and process: own time per operation by area, bus beside raw; then each bus
    process's top functions. Microseconds per operation of the row, warm-up included;
    idle waiting (epoll, the control pipe) left out."""
    for label, ops in PROFILED_OPS.items():
        for bus_path in sorted(profile_dir.glob(f"bus_*.{label}.pstats")):
            role = bus_path.stem.partition(".")[0].removeprefix("bus_")
            raw_path = profile_dir / f"raw_{role}.{label}.pstats"
            bus_total, bus_areas, entries = load_profile(bus_path, ops)
            raw_total, raw_areas, _ = (load_profile(raw_path, ops) if raw_path.exists()
                                       else (0.0, {}, []))
            print(f"\n== {label}, {role}: profiled own time per op (us), {ops:,} ops ==")
            print(f"{'area':<32} {'bus':>8} {'raw':>8}")
            for area in sorted(bus_areas, key=lambda a: -bus_areas[a]):
                print(f"{area:<32} {bus_areas[area]:8.1f} {raw_areas.get(area, 0.0):8.1f}")
            print(f"{'total':<32} {bus_total:8.1f} {raw_total:8.1f}")
            print(f"-- bus top {top} by own time --")
            print(f"{'own us/op':>9} {'cum us/op':>9} {'calls/op':>8}  function")
            for own, cumulative, calls, where in entries[:top]:
                print(f"{own:9.2f} {cumulative:9.2f} {calls:8.2f}  {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Redis path benchmark of Bus.")
    parser.add_argument("--quick", action="store_true",
                        help="a ~10 s run with small counts (rough figures)")
    parser.add_argument("--only", choices=("events", "rpc"),
                        help="run only the event rows or only the RPC rows")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run every process under cProfile (one profile per row), write "
                             "DIR/<role>.<row>.pstats and print where the time goes "
                             "(the figures then suffer, the bus's more)")
    parser.add_argument("--top", type=int, default=25,
                        help="functions shown per profile (default 25)")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[Row] = []
    with redis_server() as (url, version):
        if args.only in (None, "events"):
            rows += event_rows(url, sizes, args.profile)
        if args.only in (None, "rpc"):
            rows += rpc_rows(url, sizes, args.profile)
    print(render(rows, sizes, args.quick, time.perf_counter() - started, version), flush=True)
    if args.profile:
        print_profiles(args.profile, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
