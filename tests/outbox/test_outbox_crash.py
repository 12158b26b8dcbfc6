"""Crash tests with real processes: `bus outbox relay` processes SIGKILLed mid-batch while a
producer commits (and rolls back) transactions, two relays at once, Redis restarted under a
relay. Every committed event is handled once by a transactional listener (rows counted),
none of a rolled-back transaction, and each transaction's events are published in order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bus_outbox
import psycopg
import pytest
import redis
import yaml
from bus_outbox.relay import create_tables

import bus_core
from bus_core import Bus, EventMessage
from tests.helpers import wait_until
from tests.outbox.conftest import outbox_config
from tests.outbox.shop import ORDERS_DDL, ShopApi
from tests.redis.conftest import RedisServer, free_port, redis_config, stop_process

pytestmark = pytest.mark.slow
BUS = [sys.executable, "-m", "bus_core.cli"]
LINES = 3  # events per transaction


class Scenario:
    """One test's world: the config file, a consumer worker in this process, a producer
    thread, relay processes."""

    def __init__(self, tmp_path: Path, redis_url: str, dsn: str, schema: str,
                 claim_idle: float | None = None, **relay_options: Any) -> None:
        self.tmp_path, self.dsn, self.schema = tmp_path, dsn, schema
        self.redis_url = redis_url
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_tables(conn, schema)
            conn.execute(ORDERS_DDL.format(schema=schema).encode())
        options = {"batch_size": 20, "poll_interval": 0.2, "retry_delay": 0.05,
                   "heartbeat_interval": 0.5, **relay_options}
        self.config = outbox_config(redis_config(redis_url), dsn, schema, **options)
        if claim_idle is not None:  # entries a consumer could not acknowledge come back sooner
            self.config["apis"]["default"]["event_transport"] = {
                "redis": {"url": redis_url, "claim_idle": claim_idle}}
        self.config_file = tmp_path / "bus.yaml"
        self.config_file.write_text(yaml.safe_dump(self.config))
        self.relays: list[subprocess.Popen[bytes]] = []
        self.arrivals: list[tuple[str, int, int]] = []  # (message id, order, position)
        self.lock = threading.Lock()
        self.consumer: Bus | None = None
        self.stop_producing = threading.Event()
        self.producer: threading.Thread | None = None
        self.committed = 0
        self.next_order = 1
        self.producer_error: BaseException | None = None

    # -- consumer -------------------------------------------------------------------------

    def start_consumer(self) -> None:
        bus = bus_core.create(self.config, service_name="consumer")
        bus.client.register_api(ShopApi())
        schema = self.schema

        def apply(event: EventMessage, order_id: int, position: int) -> None:
            bus_outbox.current_connection().execute(
                f"INSERT INTO {schema}.handled (listener, message_id, order_id, position) "
                "VALUES ('apply', %s, %s, %s)", (event.id, order_id, position))

        def watch(event: EventMessage, order_id: int, position: int) -> None:
            with self.lock:
                self.arrivals.append((event.id, order_id, position))

        bus.shop.order_placed.listen(apply, listener_name="apply", transactional=True,
                                     ordered=True)
        bus.shop.order_placed.listen(watch, listener_name="watch", ordered=True)
        bus.client.start_worker()
        self.consumer = bus

    # -- producer -------------------------------------------------------------------------

    def produce(self, transactions: int, background: bool = True) -> None:
        """Commit `transactions` orders of LINES events each; every fifth one rolls back."""
        bus = bus_core.create(self.config, service_name="producer")
        bus.client.register_api(ShopApi())
        first, self.next_order = self.next_order, self.next_order + transactions

        def run() -> None:
            try:
                with psycopg.connect(self.dsn) as conn:
                    for order_id in range(first, first + transactions):
                        if self.stop_producing.is_set():
                            break
                        try:
                            with bus_outbox.transaction(conn):
                                conn.execute(f"INSERT INTO {self.schema}.orders VALUES (%s, %s)",
                                             (order_id, LINES))
                                for position in range(LINES):
                                    bus.shop.order_placed.fire(order_id=order_id,
                                                               position=position)
                                if order_id % 5 == 0:
                                    raise RollBack
                        except RollBack:
                            continue
                        self.committed += 1
            except BaseException as exc:
                self.producer_error = exc
            finally:
                bus.client.close()

        if not background:
            run()
            return
        self.producer = threading.Thread(target=run, name="producer")
        self.producer.start()

    def wait_produced(self) -> None:
        if self.producer is not None:
            self.producer.join(120)
            assert not self.producer.is_alive()
        assert self.producer_error is None, self.producer_error

    # -- relays ---------------------------------------------------------------------------

    def start_relay(self, wait: bool = True) -> subprocess.Popen[bytes]:
        """A `bus outbox relay` process; with `wait`, once it has said it is relaying."""
        path = self.tmp_path / f"relay-{len(self.relays)}.log"
        with path.open("w") as log:
            process = subprocess.Popen(
                [*BUS, "outbox", "relay"], cwd=self.tmp_path, stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "BUS_CONFIG": str(self.config_file), "PYTHONUNBUFFERED": "1"})
        self.relays.append(process)
        if wait:
            wait_until(lambda: "relaying" in path.read_text() or process.poll() is not None,
                       "the relay to start", timeout=30)
            assert process.poll() is None, path.read_text()
        return process

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")
                         for path in sorted(self.tmp_path.glob("relay-*.log")))

    # -- reading the database ---------------------------------------------------------------

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(sql.format(s=self.schema).encode(), args or None).fetchall()

    def unsent(self) -> int:
        return int(self.query("SELECT count(*) FROM {s}.bus_outbox WHERE sent_at IS NULL")[0][0])

    def published(self) -> int:
        return int(self.query("SELECT count(*) FROM {s}.bus_outbox WHERE sent_at IS NOT NULL"
                              )[0][0])

    def check_effectively_once(self) -> None:
        """Every committed order's events applied exactly once, in order; nothing of a
        rolled-back one."""
        orders = {row[0] for row in self.query("SELECT order_id FROM {s}.orders")}
        assert len(orders) == self.committed
        expected = {(order, position) for order in orders for position in range(LINES)}
        wait_until(lambda: len(self.query("SELECT DISTINCT order_id, position FROM {s}.handled"
                                          )) >= len(expected),
                   "every committed event applied", timeout=60)
        applied = Counter((o, p) for o, p in self.query("SELECT order_id, position "
                                                        "FROM {s}.handled"))
        assert set(applied) == expected  # none missing, none of a rolled-back transaction
        assert set(applied.values()) == {1}, [k for k, v in applied.items() if v > 1]
        wait_until(lambda: {(o, p) for _, o, p in list(self.arrivals)} >= expected,
                   "every committed event heard by the plain listener", timeout=30)
        # Published in order: each transaction's events, by first appearance on the stream
        # (what a consumer reads in normal operation; a consumer that loses a read to a Redis
        # restart gets that entry back later, by reclaim, which is the transport's business).
        first_seen: dict[int, list[int]] = defaultdict(list)
        seen_ids: set[bytes] = set()
        with redis.Redis.from_url(self.redis_url) as raw:
            entries = raw.xrange("shop.*:stream")
        for _, fields in entries:
            if fields[b"id"] not in seen_ids:
                seen_ids.add(fields[b"id"])
                first_seen[int(json.loads(fields[b":order_id"]))].append(
                    int(json.loads(fields[b":position"])))
        assert set(first_seen) == orders
        assert all(positions == list(range(LINES)) for positions in first_seen.values()), \
            {o: p for o, p in first_seen.items() if p != list(range(LINES))}

    def close(self) -> None:
        self.stop_producing.set()
        if self.producer is not None:
            self.producer.join(30)
        for process in self.relays:
            if process.poll() is None:
                process.kill()
                process.wait()
        if self.consumer is not None:
            self.consumer.client.close()


class RollBack(Exception):
    pass


@pytest.fixture
def make_scenario(tmp_path: Path, dsn: str, pg_schema: str) -> Iterator[Callable[..., Scenario]]:
    made: list[Scenario] = []

    def make(redis_url: str, **options: Any) -> Scenario:
        scenario = Scenario(tmp_path, redis_url, dsn, pg_schema, **options)
        made.append(scenario)
        return scenario

    yield make
    for scenario in made:
        scenario.close()


def test_relays_killed_mid_batch_lose_nothing_and_the_inbox_applies_each_event_once(
        make_scenario, redis_url, raw):
    world = make_scenario(redis_url)
    world.start_consumer()
    world.produce(300)
    kills = 0
    while kills < 6:
        relay = world.start_relay()
        before = world.published()
        # Let it publish a little (it is mid-flow), then kill it without warning.
        wait_until(lambda b=before: (raw.xlen("shop.*:stream") > 0 and world.published() > b)
                   or (world.unsent() == 0 and world.producer is not None
                   and not world.producer.is_alive()), "the relay publishing", timeout=30)
        relay.send_signal(signal.SIGKILL)
        relay.wait()
        kills += 1
    world.wait_produced()
    last = world.start_relay()
    wait_until(lambda: world.unsent() == 0, "the last relay to publish the backlog", timeout=60)
    world.check_effectively_once()
    last.send_signal(signal.SIGTERM)
    assert last.wait(20) == 0, world.logs()
    assert "password" not in world.logs() and world.config["plugins"]["outbox"]["dsn"].split(
        ":")[2].split("@")[0] not in world.logs()


def test_a_relay_killed_between_publish_and_mark_republishes_the_same_ids_absorbed_once(
        make_scenario, redis_url, raw):
    # One round takes the whole backlog and marks it only after publishing all of it: a kill
    # once some of it is on the stream is a kill between publish and mark, every time.
    world = make_scenario(redis_url, batch_size=1000)
    world.start_consumer()
    world.produce(400, background=False)
    total = world.unsent()
    relay = world.start_relay(wait=False)
    wait_until(lambda: raw.xlen("shop.*:stream") >= 30, "the relay publishing", timeout=30)
    relay.send_signal(signal.SIGKILL)
    relay.wait()
    on_stream = raw.xlen("shop.*:stream")
    assert 30 <= on_stream < total and world.published() == 0  # published, none marked
    last = world.start_relay()
    wait_until(lambda: world.unsent() == 0, "the next relay to publish again", timeout=60)
    world.check_effectively_once()
    ids = [fields[b"id"] for _, fields in raw.xrange("shop.*:stream")]
    repeated = len(ids) - len(set(ids))
    assert len(set(ids)) == total and repeated >= on_stream  # the same ids, published again
    stats = bus_outbox.stats_for(world.consumer.client)
    wait_until(lambda: stats.duplicates.get("apply", 0) == repeated,
               "the inbox to absorb every repeat")
    assert stats.processed["apply"] == total
    last.send_signal(signal.SIGTERM)
    assert last.wait(20) == 0, world.logs()


def test_two_relays_at_once_publish_each_event_once_in_transaction_order(
        make_scenario, redis_url, raw):
    world = make_scenario(redis_url, batch_size=5)
    world.start_consumer()
    world.produce(250, background=False)  # a backlog both relays compete for
    first, second = world.start_relay(), world.start_relay()
    world.produce(250)  # ... and more arriving while they run
    world.wait_produced()
    wait_until(lambda: world.unsent() == 0, "the relays to publish everything", timeout=60)
    for relay in (first, second):
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(20) == 0, world.logs()
    world.check_effectively_once()
    ids = [fields[b"id"] for _, fields in raw.xrange("shop.*:stream")]
    assert len(ids) == len(set(ids)) == world.committed * LINES  # none published twice
    counts = [int(line.rsplit("(", 1)[1].split()[0]) for line in world.logs().splitlines()
              if "events published)" in line]
    assert len(counts) == 2 and all(counts) and sum(counts) == len(ids), counts


def test_a_redis_restart_during_relay_loses_nothing(make_scenario, tmp_path):
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(free_port(), folder, extra=("--appendonly", "yes",
                                                     "--appendfsync", "always"))
    server.start()
    try:
        # The consumer's acknowledgements fail while Redis is down: those entries come back
        # after claim_idle (bus-redis); 1 s rather than the default minute.
        world = make_scenario(server.url, claim_idle=1.0)
        world.start_consumer()
        relay = world.start_relay()
        world.produce(200)
        wait_until(lambda: world.published() > 30, "the relay publishing", timeout=30)
        server.stop()  # Redis goes away mid-stream ...
        world.wait_produced()
        # ... while transactions still commit (so the relay has something to publish,
        # however fast it emptied the outbox before) ...
        world.produce(10, background=False)
        assert world.producer_error is None, world.producer_error
        wait_until(lambda: "publishing failed" in world.logs(), "the relay to notice",
                   timeout=30)
        server.start()  # ... and comes back with what it had acknowledged
        wait_until(lambda: world.unsent() == 0, "the relay to catch up", timeout=60)
        world.check_effectively_once()
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(20) == 0, world.logs()
    finally:
        stop_process(server.process)
