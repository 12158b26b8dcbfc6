"""Outbox benchmark: what a transactional fire costs next to a plain one, and how fast one
relay publishes (issue 16: >= 5k events/s from one relay).

Starts its own redis-server and PostgreSQL cluster (initdb + pg_ctl, as the tests do: as the
user `nobody` when run as root) on free loopback ports, and stops them at the end. Cases,
each next to its baseline measured in the same run:

- sync `fire()` inside `bus_outbox.transaction(conn)`, 100 fires per transaction (the cost
  of one outbox row) and 1 per transaction (a row plus a commit), against a plain `fire()`
  to Redis;
- `await fire_async()` inside an async transaction against a plain `await fire_async()`;
- one relay publishing a backlog (transactions of 10 events), against plain `fire_async()`
  calls gathered 100 at a time (the fastest a producer sends the same events itself).

    python bench/outbox_bench.py            # ~30 s
    python bench/outbox_bench.py --quick    # a few seconds, rough figures
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from redis_bench import redis_server
from tables import HEADER, Row, format_table, legend

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bus_outbox  # noqa: E402
from bus_outbox.relay import Relay, create_tables  # noqa: E402

import bus_core  # noqa: E402
from bus_core import Api, Bus, Event, Parameter  # noqa: E402
from tests.outbox.postgres import PostgresServer, find_bindir  # noqa: E402

TARGET_RELAY_RATE = 5000.0
SCHEMA = "bench"


class BenchApi(Api):
    placed = Event(parameters=[Parameter("order_id", int), Parameter("note", str)])

    class Meta:
        name = "bench"


def make_bus(redis_url: str, dsn: str, outbox: bool) -> Bus:
    transport = {"redis": {"url": redis_url}}
    config: dict[str, Any] = {"apis": {"default": {"event_transport": transport,
                                                   "rpc_transport": transport,
                                                   "result_transport": transport}}}
    if outbox:
        config["plugins"] = {"outbox": {"enabled": True, "dsn": dsn, "schema": SCHEMA,
                                        "relay": False, "batch_size": 500}}
    bus = bus_core.create(config, service_name="bench")
    bus.client.register_api(BenchApi())
    return bus


def timed(count: int, run: Callable[[], None]) -> float:
    """Operations per second of `run()`, which does `count` of them."""
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def best(rounds: int, measure: Callable[[], float]) -> float:
    return max(measure() for _ in range(rounds))


def sync_rows(plain: Bus, outboxed: Bus, dsn: str, n: int, rounds: int) -> list[Row]:
    def plain_fires() -> None:
        for i in range(n):
            plain.bench.placed.fire(order_id=i, note="x")

    def outbox_fires(per_transaction: int) -> Callable[[], None]:
        def run() -> None:
            with psycopg.connect(dsn) as conn:
                for start in range(0, n, per_transaction):
                    with bus_outbox.transaction(conn):
                        for i in range(start, min(n, start + per_transaction)):
                            outboxed.bench.placed.fire(order_id=i, note="x")
        return run

    plain_fires()  # warm up: connections, prepared statements
    outbox_fires(100)()
    base = best(rounds, lambda: timed(n, plain_fires))
    many = best(rounds, lambda: timed(n, outbox_fires(100)))
    one = best(rounds, lambda: timed(n, outbox_fires(1)))
    return [Row("fire() in a transaction, 100 per tx", many, base, "plain fire()"),
            Row("fire() + commit, 1 per tx", one, base, "plain fire()")]


async def async_rows(plain: Bus, outboxed: Bus, dsn: str, n: int, rounds: int) -> list[Row]:
    async def plain_fires() -> float:
        started = time.perf_counter()
        for i in range(n):
            await plain.bench.placed.fire_async(order_id=i, note="x")
        return n / (time.perf_counter() - started)

    async def outbox_fires() -> float:
        conn = await psycopg.AsyncConnection.connect(dsn)
        try:
            started = time.perf_counter()
            for start in range(0, n, 100):
                async with bus_outbox.transaction(conn):
                    for i in range(start, min(n, start + 100)):
                        await outboxed.bench.placed.fire_async(order_id=i, note="x")
            return n / (time.perf_counter() - started)
        finally:
            await conn.close()

    await plain_fires()
    await outbox_fires()
    base = max([await plain_fires() for _ in range(rounds)])
    rate = max([await outbox_fires() for _ in range(rounds)])
    return [Row("await fire_async() in a tx, 100 per tx", rate, base, "plain fire_async()")]


async def relay_row(plain: Bus, outboxed: Bus, dsn: str, n: int, rounds: int) -> Row:
    async def gathered() -> float:
        started = time.perf_counter()
        for start in range(0, n, 100):
            await asyncio.gather(*(plain.bench.placed.fire_async(order_id=i, note="x")
                                   for i in range(start, min(n, start + 100))))
        return n / (time.perf_counter() - started)

    async def relayed() -> float:
        conn = await psycopg.AsyncConnection.connect(dsn)
        try:
            async with conn.transaction():  # only this round's events in the backlog
                await conn.execute(f"TRUNCATE {SCHEMA}.bus_outbox")
            for start in range(0, n, 10):
                async with bus_outbox.transaction(conn):
                    for i in range(start, min(n, start + 10)):
                        await outboxed.bench.placed.fire_async(order_id=i, note="x")
        finally:
            await conn.close()
        relay = Relay(outboxed.client)
        started = time.perf_counter()
        await relay.run(once=True)
        elapsed = time.perf_counter() - started
        assert relay.published == n, (relay.published, n)
        return n / elapsed

    await gathered()
    base = max([await gathered() for _ in range(rounds)])
    rate = max([await relayed() for _ in range(rounds)])
    return Row("relay: publish + mark, 10 per tx", rate, base, "fire_async() x100 gathered")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, rough figures")
    args = parser.parse_args(argv)
    n, relay_n, rounds = (500, 2000, 1) if args.quick else (3000, 20000, 3)
    bindir = find_bindir()
    if bindir is None:
        print("outbox_bench: skipped, no PostgreSQL server binaries (apt-get install "
              "postgresql)", flush=True)
        return 0
    postgres = PostgresServer(bindir)
    postgres.start()
    try:
        dsn = postgres.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_tables(conn, SCHEMA)
        with redis_server() as (redis_url, redis_version):
            plain, outboxed = make_bus(redis_url, dsn, False), make_bus(redis_url, dsn, True)
            try:
                rows = sync_rows(plain, outboxed, dsn, n, rounds)

                async def run_async() -> list[Row]:
                    found = await async_rows(plain, outboxed, dsn, n, rounds)
                    found.append(await relay_row(plain, outboxed, dsn, relay_n, rounds))
                    await plain.client.close_async()
                    await outboxed.client.close_async()
                    return found

                rows += asyncio.run(run_async())
            finally:
                plain.client.close()
                outboxed.client.close()
            with psycopg.connect(dsn) as conn:
                pg_version = conn.execute("SHOW server_version").fetchone()[0]
    finally:
        postgres.stop()
    print(f"outbox_bench: Python {platform.python_version()}, Redis {redis_version}, "
          f"PostgreSQL {pg_version}, {os.cpu_count()} CPUs; best of {rounds} round(s), "
          f"{n} fires / {relay_n} relayed events per round")
    print("\n".join(format_table(HEADER, [row.cells() for row in rows])))
    relay = rows[-1]
    verdict = "meets" if relay.bus_rate >= TARGET_RELAY_RATE else "MISSES"
    print(f"\nrelay: {relay.bus_rate:,.0f} events/s, {verdict} the target of "
          f"{TARGET_RELAY_RATE:,.0f}/s")
    print("\n".join(legend({
        "plain fire()": "sync fire() to Redis, one at a time, no transaction",
        "plain fire_async()": "await fire_async() to Redis, one at a time",
        "fire_async() x100 gathered": "100 fire_async() gathered per round trip, as a fast "
                                      "producer would send the same events itself",
    })))
    return 0


if __name__ == "__main__":
    sys.exit(main())
