"""The outbox and the inbox against a real PostgreSQL and a real Redis: what a commit, a
rollback, a relay, a redelivery and a failing handler do."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import bus_outbox
import psycopg
import pytest
from bus_outbox.relay import Relay, create_tables

from bus_core import Bus, EventMessage, InvalidArguments
from tests.helpers import wait_until
from tests.outbox.conftest import outbox_config
from tests.outbox.shop import ORDERS_DDL, ShopApi
from tests.redis.conftest import redis_config

STREAM = "shop.*:stream"  # per_api streams (the default)


class Boom(Exception):
    pass


@pytest.fixture
def tables(dsn: str, pg_schema: str) -> str:
    """The outbox tables, and the tests' orders/handled tables, in this test's schema."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_tables(conn, pg_schema)
        conn.execute(ORDERS_DDL.format(schema=pg_schema).encode())
    return pg_schema


@pytest.fixture
def make_outbox_bus(make_redis_bus: Callable[..., Bus], redis_url: str, dsn: str,
                    tables: str) -> Callable[..., Bus]:
    def make(service_name: str = "shop", **options: Any) -> Bus:
        bus = make_redis_bus(config=outbox_config(redis_config(redis_url), dsn, tables,
                                                  **options), service_name=service_name)
        bus.client.register_api(ShopApi())
        return bus

    return make


def relay_once(bus: Bus) -> Relay:
    """Publish every committed outbox row now, on the client's own loop."""
    relay = Relay(bus.client)
    bus.client.run_sync(relay.run(once=True))
    return relay


def outbox_rows(dsn: str, schema: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT message_id, kwargs::text, sent_at IS NOT NULL, error "
                            f"FROM {schema}.bus_outbox ORDER BY seq").fetchall()


def test_a_commit_fires_its_events_in_order_and_a_rollback_fires_nothing(
        make_outbox_bus, dsn, tables, raw):
    bus = make_outbox_bus()
    heard: list[tuple[str, int, int]] = []
    bus.shop.order_placed.listen(
        lambda event, order_id, position: heard.append((event.id, order_id, position)),
        listener_name="audit")
    bus.client.start_worker()
    with psycopg.connect(dsn) as conn:
        with bus_outbox.transaction(conn):
            conn.execute(f"INSERT INTO {tables}.orders VALUES (1, 3)")
            fired = [bus.shop.order_placed.fire(order_id=1, position=p) for p in range(3)]
            assert raw.xlen(STREAM) == 0  # written to the outbox, not sent
            # Not visible outside the transaction before it commits:
            with psycopg.connect(dsn) as other:
                assert other.execute(f"SELECT count(*) FROM {tables}.bus_outbox"
                                     ).fetchone() == (0,)
        with pytest.raises(Boom), bus_outbox.transaction(conn):
            conn.execute(f"INSERT INTO {tables}.orders VALUES (2, 1)")
            bus.shop.order_placed.fire(order_id=2, position=0)
            raise Boom
    # Outside a transaction block, a fire goes straight to the transport.
    direct = bus.shop.order_placed.fire(order_id=9, position=0)
    assert [row[0] for row in outbox_rows(dsn, tables)] == [m.id for m in fired]
    assert relay_once(bus).published == 3
    wait_until(lambda: len(heard) == 4, "four events heard")
    assert (direct.id, 9, 0) in heard
    assert [h for h in heard if h[1] == 1] == [(m.id, 1, p) for p, m in enumerate(fired)]
    assert all(sent for _, _, sent, _ in outbox_rows(dsn, tables))
    assert relay_once(bus).published == 0  # marked: never published again


async def test_an_async_connection_takes_fire_async(make_outbox_bus, dsn, tables, raw):
    bus = make_outbox_bus()
    conn = await psycopg.AsyncConnection.connect(dsn)
    try:
        async with bus_outbox.transaction(conn):
            first = await bus.shop.order_placed.fire_async(order_id=5, position=0)
            second = await bus.shop.order_placed.fire_async(order_id=5, position=1)
            # A sync fire() cannot write on an async connection: it says what to do.
            with pytest.raises(bus_outbox.OutboxError, match="fire_async"):
                await asyncio.to_thread(bus_outbox.outbox.take_event, bus.client, first)
        with pytest.raises(Boom):
            async with bus_outbox.transaction(conn):
                await bus.shop.order_placed.fire_async(order_id=6, position=0)
                raise Boom
    finally:
        await conn.close()
    relay = Relay(bus.client)
    await relay.run(once=True)
    assert relay.published == 2
    entries = raw.xrange(STREAM)
    assert [fields[b"id"].decode() for _, fields in entries] == [first.id, second.id]
    await bus.client.close_async()


def test_bad_arguments_are_refused_and_nothing_is_written(make_outbox_bus, dsn, tables):
    bus = make_outbox_bus()
    with psycopg.connect(dsn) as conn, bus_outbox.transaction(conn), \
            pytest.raises(InvalidArguments):
        bus.shop.order_placed.fire(order_id=1)
    assert outbox_rows(dsn, tables) == []
    with pytest.raises(bus_outbox.OutboxError, match="psycopg 3 Connection"):
        bus_outbox.transaction(object())


def test_a_transactional_listener_applies_each_event_once(make_outbox_bus, dsn, tables):
    bus = make_outbox_bus()
    failures = {"left": 1}

    def record(event: EventMessage, order_id: int, position: int) -> None:
        conn = bus_outbox.current_connection()
        conn.execute(f"INSERT INTO {tables}.handled (listener, message_id, order_id, position)"
                     " VALUES ('record', %s, %s, %s)", (event.id, order_id, position))
        if order_id == 13 and failures["left"]:
            failures["left"] -= 1
            raise Boom("the handler's write and the inbox mark roll back together")

    bus.shop.order_placed.listen(record, listener_name="record", transactional=True)
    bus.client.start_worker()
    with psycopg.connect(dsn) as conn, bus_outbox.transaction(conn):
        fired = [bus.shop.order_placed.fire(order_id=o, position=0) for o in (11, 12, 13)]
    relay_once(bus)

    def handled() -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn) as conn:
            return conn.execute(f"SELECT message_id, order_id FROM {tables}.handled "
                                "ORDER BY id").fetchall()

    wait_until(lambda: len(handled()) == 3, "three events handled (13 after a retry)")
    # A relay crash after publishing, before marking: the same ids are published again.
    with psycopg.connect(dsn) as conn:
        conn.execute(f"UPDATE {tables}.bus_outbox SET sent_at = NULL")
    relay_once(bus)
    stats = bus_outbox.stats_for(bus.client)
    wait_until(lambda: stats.duplicates.get("record", 0) == 3, "the repeats absorbed")
    assert sorted(handled()) == sorted((m.id, m.kwargs["order_id"]) for m in fired)
    assert stats.processed["record"] == 3
    with psycopg.connect(dsn) as conn:
        marks = conn.execute(f"SELECT service_name, listener_name, message_id "
                             f"FROM {tables}.bus_inbox").fetchall()
    assert sorted(marks) == sorted(("shop", "record", m.id) for m in fired)


async def test_an_async_transactional_listener_fires_into_the_outbox_of_its_transaction(
        make_outbox_bus, dsn, tables):
    bus = make_outbox_bus()
    done = asyncio.Event()

    async def forward(event: EventMessage, order_id: int, position: int) -> None:
        conn = bus_outbox.current_connection()
        assert isinstance(conn, psycopg.AsyncConnection)
        await conn.execute(f"INSERT INTO {tables}.handled (listener, message_id, order_id, "
                           "position) VALUES ('forward', %s, %s, %s)",
                           (event.id, order_id, position))
        if position == 0:  # consume, transform, produce: the next event in the same commit
            await bus.shop.order_placed.fire_async(order_id=order_id, position=1)
        else:
            done.set()

    await bus.shop.order_placed.listen_async(forward, listener_name="forward",
                                             transactional=True)
    worker = bus.client.worker()
    await worker.start()
    try:
        conn = await psycopg.AsyncConnection.connect(dsn)
        async with bus_outbox.transaction(conn):
            await bus.shop.order_placed.fire_async(order_id=21, position=0)
        await conn.close()
        relay = Relay(bus.client)
        task = asyncio.get_running_loop().create_task(relay.run())
        await asyncio.wait_for(done.wait(), 10)
        relay.stop()
        await task
    finally:
        await worker.stop()
        await bus.client.close_async()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"SELECT order_id, position FROM {tables}.handled ORDER BY id"
                            ).fetchall()
        kinds = conn.execute(f"SELECT count(*) FROM {tables}.bus_outbox").fetchone()
    assert rows == [(21, 0), (21, 1)]
    assert kinds == (2,)  # the forwarded event went through the outbox too


def test_config_declares_a_transactional_listener(make_outbox_bus, dsn, tables):
    bus = make_outbox_bus(transactional_listeners=["by_config"])
    listener = bus.shop.order_placed.listen(lambda event, **kw: None, listener_name="by_config")
    assert listener.transactional
    plain = bus.shop.order_placed.listen(lambda event, **kw: None, listener_name="plain")
    assert not plain.transactional


def test_a_row_that_can_never_be_published_is_kept_with_its_error(make_outbox_bus, dsn,
                                                                  tables, raw):
    bus = make_outbox_bus()
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute(f"INSERT INTO {tables}.bus_outbox (message_id, api_name, event_name,"
                     " kwargs) VALUES ('m-bad', 'shop', 'bad name!', '{}')")
        conn.execute(f"INSERT INTO {tables}.bus_outbox (message_id, api_name, event_name,"
                     " kwargs) VALUES ('m-good', 'shop', 'order_placed', "
                     "'{\"order_id\": 1, \"position\": 1}')")
    relay = relay_once(bus)
    assert (relay.published, bus_outbox.stats_for(bus.client).failed) == (1, 1)
    rows = outbox_rows(dsn, tables)
    assert rows[0][0] == "m-bad" and rows[0][2] and "invalid names" in rows[0][3]
    assert rows[1][0] == "m-good" and rows[1][3] is None
    assert [f[b"id"] for _, f in raw.xrange(STREAM)] == [b"m-good"]


def test_django_mode_without_an_atomic_block_sends_at_once(make_outbox_bus, raw):
    pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure(DATABASES={})
    bus = make_outbox_bus(django=True)
    bus.shop.order_placed.fire(order_id=1, position=0)
    assert raw.xlen(STREAM) == 1


def test_two_threads_each_use_their_own_transaction(make_outbox_bus, dsn, tables):
    bus = make_outbox_bus()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(order_id: int, commit: bool) -> None:
        try:
            with psycopg.connect(dsn) as conn:
                try:
                    with bus_outbox.transaction(conn):
                        bus.shop.order_placed.fire(order_id=order_id, position=0)
                        barrier.wait(5)  # both inside their transactions at once
                        if not commit:
                            raise Boom
                except Boom:
                    pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(1, True)),
               threading.Thread(target=work, args=(2, False))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [row[1] for row in outbox_rows(dsn, tables)] == ['{"order_id":1,"position":0}']


def test_a_fire_without_outbox_tables_says_how_to_make_them(make_redis_bus, redis_url, dsn,
                                                            pg_schema, raw):
    bus = make_redis_bus(config=outbox_config(redis_config(redis_url), dsn, pg_schema),
                         service_name="shop")
    bus.client.register_api(ShopApi())
    with psycopg.connect(dsn) as conn:
        with pytest.raises(bus_outbox.OutboxError, match="run `bus outbox init`"), \
                bus_outbox.transaction(conn):
            bus.shop.order_placed.fire(order_id=1, position=0)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert raw.xlen(STREAM) == 0  # and it was not sent instead


def test_fire_many_and_using_an_open_transaction(make_outbox_bus, dsn, tables, raw):
    bus = make_outbox_bus()
    with psycopg.connect(dsn) as conn:  # not autocommit: psycopg opens a transaction
        with bus_outbox.using(conn):
            bus.client.fire_many("shop", "order_placed",
                                 [{"order_id": 1, "position": p} for p in range(3)])
        conn.rollback()  # `using` opened nothing and commits nothing: the caller decides
        assert outbox_rows(dsn, tables) == []
        with bus_outbox.using(conn):
            fired = bus.client.fire_many("shop", "order_placed",
                                         [{"order_id": 2, "position": p} for p in range(3)])
        assert outbox_rows(dsn, tables) == []  # not committed yet
        conn.commit()
    assert [row[0] for row in outbox_rows(dsn, tables)] == [m.id for m in fired]
    assert relay_once(bus).published == 3
    assert [f[b"id"].decode() for _, f in raw.xrange(STREAM)] == [m.id for m in fired]


def test_two_services_sharing_a_database_each_apply_the_event(make_outbox_bus, dsn, tables):
    buses = [make_outbox_bus(service_name=name) for name in ("billing", "shipping")]
    applied: list[str] = []
    lock = threading.Lock()
    for bus in buses:
        def apply(event: EventMessage, order_id: int, position: int,
                  service: str = bus.client.service_name) -> None:
            with lock:
                applied.append(service)

        # The same listener name in two services: two consumer groups, two inbox keys.
        bus.shop.order_placed.listen(apply, listener_name="apply", transactional=True)
        bus.client.start_worker()
    with psycopg.connect(dsn) as conn, bus_outbox.transaction(conn):
        buses[0].shop.order_placed.fire(order_id=1, position=0)
    relay_once(buses[0])
    wait_until(lambda: sorted(applied) == ["billing", "shipping"], "both services to apply it")


def test_the_commands_need_the_plugin_enabled(tmp_path, redis_url):
    from tests.outbox.test_outbox_ops import bus_cli

    result = bus_cli(tmp_path, redis_config(redis_url), "outbox", "status")
    assert result.returncode == 1
    assert "the outbox plugin is not enabled" in result.stderr


async def test_an_async_handler_that_raises_rolls_back_its_writes_and_mark_and_runs_again(
        make_outbox_bus, dsn, tables):
    bus = make_outbox_bus()
    attempts: list[str] = []
    done = asyncio.Event()

    async def record(event: EventMessage, order_id: int, position: int) -> None:
        conn = bus_outbox.current_connection()
        await conn.execute(f"INSERT INTO {tables}.handled (listener, message_id, order_id, "
                           "position) VALUES ('record', %s, %s, %s)",
                           (event.id, order_id, position))
        attempts.append(event.id)
        if len(attempts) == 1:
            raise Boom("the write and the inbox mark roll back together")
        done.set()

    await bus.shop.order_placed.listen_async(record, listener_name="record",
                                             transactional=True)
    worker = bus.client.worker()
    await worker.start()
    try:
        conn = await psycopg.AsyncConnection.connect(dsn)
        async with bus_outbox.transaction(conn):
            fired = await bus.shop.order_placed.fire_async(order_id=31, position=0)
        await conn.close()
        await Relay(bus.client).run(once=True)
        await asyncio.wait_for(done.wait(), 20)
    finally:
        await worker.stop()
        await bus.client.close_async()
    assert attempts == [fired.id, fired.id]  # redelivered: the first mark did not stay
    with psycopg.connect(dsn) as conn:
        assert conn.execute(f"SELECT message_id FROM {tables}.handled").fetchall() == [
            (fired.id,)]
        assert conn.execute(f"SELECT message_id FROM {tables}.bus_inbox").fetchall() == [
            (fired.id,)]


def test_a_savepoint_rolled_back_drops_its_events_only(make_outbox_bus, dsn, tables):
    bus = make_outbox_bus()
    with psycopg.connect(dsn) as conn, bus_outbox.transaction(conn):
        kept = bus.shop.order_placed.fire(order_id=1, position=0)
        with pytest.raises(Boom), bus_outbox.transaction(conn):  # a savepoint
            bus.shop.order_placed.fire(order_id=1, position=1)
            raise Boom
        last = bus.shop.order_placed.fire(order_id=1, position=2)
    assert [row[0] for row in outbox_rows(dsn, tables)] == [kept.id, last.id]


def test_using_an_autocommit_connection_without_a_transaction_is_refused(make_outbox_bus,
                                                                          dsn, tables, raw):
    # Each fire would commit alone, as its own transaction: not with the caller's work, and
    # two of them could be published in either order.
    bus = make_outbox_bus()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(bus_outbox.OutboxError, match="autocommit"), bus_outbox.using(conn):
            bus.shop.order_placed.fire(order_id=1, position=0)
        with conn.transaction(), bus_outbox.using(conn):  # a transaction opened by the caller
            fired = [bus.shop.order_placed.fire(order_id=2, position=p) for p in range(2)]
    assert [row[0] for row in outbox_rows(dsn, tables)] == [m.id for m in fired]
    assert raw.xlen(STREAM) == 0


async def test_two_relays_in_one_process_publish_each_event_once(make_outbox_bus, dsn,
                                                                 tables, raw):
    bus = make_outbox_bus(batch_size=3)
    conn = await psycopg.AsyncConnection.connect(dsn)
    try:
        for order_id in range(60):
            async with bus_outbox.transaction(conn):
                for position in range(2):
                    await bus.shop.order_placed.fire_async(order_id=order_id,
                                                           position=position)
    finally:
        await conn.close()
    first, second = Relay(bus.client), Relay(bus.client)
    running = asyncio.get_running_loop().create_task(first.run(once=True))
    await asyncio.sleep(0)  # let it start
    # The same relay twice would share its transaction, and its locks would not part them.
    with pytest.raises(RuntimeError, match="already running"):
        await first.run(once=True)
    # A `once` run stops when it finds fewer heads than batch_size free: the rest are in
    # the other's round, which that one finishes, so the two together publish everything.
    await asyncio.gather(running, second.run(once=True))
    ids = [fields[b"id"] for _, fields in raw.xrange(STREAM)]
    assert len(ids) == len(set(ids)) == 120
    assert first.published + second.published == 120
    await bus.client.close_async()
