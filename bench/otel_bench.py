"""OpenTelemetry benchmark: what the otel plugin (`bus-otel`) costs per message.

The same bus twice in one process, on the `memory` transports (or, with `--redis`, on a
redis-server this benchmark starts on a free port and stops): once with
`plugins: {otel: {enabled: true}}` and the OpenTelemetry SDK recording every span into a
no-op exporter, once without the plugin (K). Both run in alternating rounds (ABBA order) on one
loop; each figure is the median of the rounds, so drift and noise hit both.

The goal (issue 14): events and RPCs per second drop by no more than 15% with tracing on.

    python bench/otel_bench.py              # memory transports, ~20 s
    python bench/otel_bench.py --redis      # a real redis-server, ~40 s
    python bench/otel_bench.py --quick      # a few seconds, rough figures
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from metrics_bench import BenchApi, Sizes, Workload, events, rpcs, start_counting
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from tables import HEADER, Row, format_table

import bus_core
from bus_core import Bus

TARGET_RATIO = 0.85  # with tracing >= 0.85x the rate without
_brokers = itertools.count(1)


class NoOpExporter(SpanExporter):
    """Takes every finished span and drops it: the SDK's full per-span work, no I/O."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def make_bus(*, traced: bool, redis_url: str | None) -> Bus:
    if redis_url:
        transport: dict[str, Any] = {"redis": {"url": redis_url}}
        stream = f"bench{next(_brokers)}"
    else:
        transport = {"memory": {"broker": f"otel-bench-{os.getpid()}-{next(_brokers)}"}}
        stream = "bench"
    config: dict[str, Any] = {
        "bus": {"schema": {"transport": transport}},
        "apis": {"default": {"rpc_transport": transport, "result_transport": transport,
                             "event_transport": transport, "rpc_timeout": 30}},
        "plugins": {"otel": {"enabled": traced}},
    }
    bus = bus_core.create(config, service_name=stream)
    bus.client.register_api(BenchApi())
    return bus


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server of this run's own on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("otel_bench --redis: no redis-server on PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no", "--dir", folder],
                                   stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("otel_bench --redis: redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


async def alternating(sizes: Sizes, redis_url: str | None) -> list[Row]:
    buses = [make_bus(traced=False, redis_url=redis_url),
             make_bus(traced=True, redis_url=redis_url)]
    counters, workers = await start_counting(buses)
    plan: list[tuple[str, Workload, int]] = [
        ("events end to end, fire_async -> listener", events, sizes.events),
        ("RPC, sequential await call_async", rpcs, sizes.rpc),
    ]
    rows = []
    try:
        for case, workload, count in plan:
            for side in (0, 1):
                await workload(buses[side], counters[side], sizes.warmup)
            times: dict[int, list[float]] = {0: [], 1: []}
            for round_number in range(sizes.rounds):
                order = (0, 1) if round_number % 2 == 0 else (1, 0)
                for side in order:
                    started = time.perf_counter()
                    await workload(buses[side], counters[side], count)
                    times[side].append(time.perf_counter() - started)
            rate = {side: count / statistics.median(t) for side, t in times.items()}
            rows.append(Row(case, rate[1], rate[0], "K"))
    finally:
        for worker in workers:
            await worker.stop()
        for bus in buses:
            await bus.client.close_async()
    return rows


def render(rows: list[Row], sizes: Sizes, transport: str, quick: bool,
           seconds: float) -> str:
    lines = [
        f"otel_bench{' --quick' if quick else ''} ({transport}): Python "
        f"{platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU(s); "
        f"median of {sizes.rounds} alternating rounds per figure; {seconds:.1f}s in all",
        "",
        *format_table(HEADER, [row.cells() for row in rows]),
        "",
        "bus: the otel plugin enabled, SDK TracerProvider + SimpleSpanProcessor + a no-op",
        "     exporter (spans end to end: publish/receive/process per event, a receive per",
        "     batch; client/server per call)",
        "  K  the same bus and workload without the plugin (no message-flow hook implemented)",
        "",
    ]
    for row in rows:
        verdict = "ok" if row.ratio >= TARGET_RATIO else "MISS"
        lines.append(f"{row.case}: {row.ratio:.3f}x the rate without tracing "
                     f"({1e6 / row.bus_rate - 1e6 / row.baseline_rate:+.1f} us per message); "
                     f"target >= {TARGET_RATIO}x: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cost of the otel plugin per message.")
    parser.add_argument("--quick", action="store_true", help="small counts, rough figures")
    parser.add_argument("--redis", action="store_true",
                        help="on a redis-server this run starts (default: memory transports)")
    args = parser.parse_args(argv)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(NoOpExporter()))
    trace.set_tracer_provider(provider)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(redis_server()) if args.redis else None
        rows = asyncio.run(alternating(sizes, url))
    print(render(rows, sizes, "redis" if args.redis else "memory", args.quick,
                 time.perf_counter() - started), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
