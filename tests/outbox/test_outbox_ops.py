"""Running the outbox: the relay inside a worker, its NOTIFY wake-up and polling fallback,
`bus outbox init|status|prune`, pruning, metrics, and no password in any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import bus_outbox
import psycopg
import pytest
import yaml
from bus_outbox import inbox
from bus_outbox.relay import Relay
from bus_outbox.sql import ddl

import bus_core
from bus_core import Bus
from bus_core.errors import ConfigError
from tests.helpers import wait_until
from tests.outbox.conftest import outbox_config
from tests.outbox.shop import ShopApi
from tests.outbox.test_outbox import STREAM
from tests.redis.conftest import redis_config

BUS = [sys.executable, "-m", "bus_core.cli"]


def make(redis_url: str, dsn: str, schema: str, **options: Any) -> Bus:
    bus = bus_core.create(outbox_config(redis_config(redis_url), dsn, schema, **options),
                          service_name="shop")
    bus.client.register_api(ShopApi())
    return bus


def fire_in_transaction(bus: Bus, dsn: str, count: int = 1) -> list[str]:
    with psycopg.connect(dsn) as conn, bus_outbox.transaction(conn):
        return [bus.shop.order_placed.fire(order_id=i, position=0).id for i in range(count)]


def bus_cli(tmp_path: Path, config: dict[str, Any], *args: str,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bus.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([*BUS, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "BUS_CONFIG": str(path)})


def test_a_worker_creates_the_tables_and_relays_woken_by_notify(redis_url, dsn, pg_schema,
                                                                raw):
    # Poll and heartbeat intervals far longer than the test: only the NOTIFY can wake the
    # relay in time.
    bus = make(redis_url, dsn, pg_schema, relay=True, poll_interval=3600,
               heartbeat_interval=3600)
    try:
        bus.client.start_worker()  # creates the tables (create_tables defaults to true)
        ids = fire_in_transaction(bus, dsn, 3)
        wait_until(lambda: raw.xlen(STREAM) == 3, "the worker's relay to publish", timeout=10)
        assert [f[b"id"].decode() for _, f in raw.xrange(STREAM)] == ids
        with psycopg.connect(dsn) as conn:
            relays = conn.execute(f"SELECT relay_id FROM {pg_schema}.bus_outbox_relays"
                                  ).fetchall()
        assert len(relays) == 1
    finally:
        bus.client.close()
    with psycopg.connect(dsn) as conn:  # a relay that stops says so
        assert conn.execute(f"SELECT count(*) FROM {pg_schema}.bus_outbox_relays"
                            ).fetchone() == (0,)


def test_polling_picks_up_rows_when_the_listen_connection_is_lost(redis_url, dsn, pg_schema,
                                                                 raw):
    bus = make(redis_url, dsn, pg_schema, relay=True, poll_interval=0.2)
    try:
        bus.client.start_worker()
        fire_in_transaction(bus, dsn)
        wait_until(lambda: raw.xlen(STREAM) == 1, "the first event published")
        with psycopg.connect(dsn, autocommit=True) as conn:  # drop the relay's LISTEN
            killed = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE query LIKE 'LISTEN %%'").fetchall()
        assert killed == [(True,)]
        fire_in_transaction(bus, dsn)  # nobody hears this NOTIFY
        wait_until(lambda: raw.xlen(STREAM) == 2, "the poll to find the second")
    finally:
        bus.client.close()


def test_a_relay_without_a_dsn_is_a_config_error(redis_url, pg_schema):
    config = redis_config(redis_url)
    config["plugins"] = {"outbox": {"enabled": True, "relay": True}}
    bus = bus_core.create(config, service_name="shop")
    try:
        with pytest.raises(ConfigError, match="plugins.outbox.dsn"):
            bus.client.start_worker()
    finally:
        bus.client.close()


def test_init_status_and_prune_commands(tmp_path, redis_url, dsn, pg_schema, postgres):
    config = outbox_config(redis_config(redis_url), dsn, pg_schema, heartbeat_interval=1,
                           prune_sent_after=3600)
    missing = bus_cli(tmp_path, config, "outbox", "status")
    assert missing.returncode == 1
    assert "no outbox tables in schema" in missing.stderr and "bus outbox init" in missing.stderr
    init = bus_cli(tmp_path, config, "outbox", "init")
    assert init.returncode == 0, init.stderr
    assert f"outbox tables ready in schema '{pg_schema}'" in init.stdout
    assert bus_cli(tmp_path, config, "outbox", "init").returncode == 0  # idempotent
    printed = bus_cli(tmp_path, config, "outbox", "init", "--print")
    assert printed.stdout == ddl(pg_schema)

    bus = make(redis_url, dsn, pg_schema)
    try:
        fire_in_transaction(bus, dsn, 4)
        status = bus_cli(tmp_path, config, "outbox", "status", "--json")
        report = json.loads(status.stdout)
        assert (report["backlog"], report["relays_alive"]) == (4, 0)
        assert report["oldest_unsent_age"] >= 0
        # A health check: no relay alive -> exit 1.
        assert bus_cli(tmp_path, config, "outbox", "status", "--max-age", "60").returncode == 1
        relay = Relay(bus.client)
        bus.client.run_sync(relay.run(once=True))
        bus.client.run_sync(_heartbeat(relay))
        report = json.loads(bus_cli(tmp_path, config, "outbox", "status", "--json").stdout)
        assert (report["backlog"], report["sent_kept"], report["relays_alive"]) == (0, 4, 1)
        text = bus_cli(tmp_path, config, "outbox", "status")
        assert "backlog             0 unsent" in text.stdout
        assert relay.relay_id in text.stdout and "alive" in text.stdout
    finally:
        bus.client.close()

    # Prune: rows sent more than prune_sent_after ago go; newer ones stay.
    with psycopg.connect(dsn) as conn:
        conn.execute(f"UPDATE {pg_schema}.bus_outbox SET sent_at = now() - interval '2 hours' "
                     "WHERE seq IN (SELECT seq FROM " + pg_schema + ".bus_outbox ORDER BY seq "
                     "LIMIT 3)")
        # An unsent row and a failed one, as old: pruning never touches either.
        conn.execute(f"INSERT INTO {pg_schema}.bus_outbox (message_id, api_name, event_name, "
                     "kwargs, created_at, sent_at, error) VALUES "
                     "('unsent', 'shop', 'order_placed', '{}', now() - interval '3 days', "
                     "NULL, NULL), ('failed', 'shop', 'order_placed', '{}', "
                     "now() - interval '3 days', now() - interval '2 days', 'refused')")
        conn.execute(f"INSERT INTO {pg_schema}.bus_inbox (service_name, listener_name, "
                     "message_id, api_name, event_name, processed_at) VALUES "
                     "('s', 'l', 'old', 'shop', 'order_placed', now() - interval '30 days'), "
                     "('s', 'l', 'new', 'shop', 'order_placed', now())")
    pruned = bus_cli(tmp_path, config, "outbox", "prune")
    assert pruned.stdout.strip() == "pruned 3 sent outbox rows and 1 inbox marks", pruned.stderr
    with psycopg.connect(dsn) as conn:
        left = conn.execute(f"SELECT message_id, sent_at IS NULL, error FROM {pg_schema}."
                            "bus_outbox ORDER BY seq").fetchall()
        assert [row[1:] for row in left] == [(False, None), (True, None), (False, "refused")]
        assert conn.execute(f"SELECT message_id FROM {pg_schema}.bus_inbox").fetchall() == [
            ("new",)]

    # The password never shows, not even when the server refuses it.
    wrong = dsn.replace(postgres.password, "not-the-" + postgres.password)
    refused = bus_cli(tmp_path, outbox_config(redis_config(redis_url), wrong, pg_schema),
                      "outbox", "status")
    assert refused.returncode == 1 and "cannot connect to the outbox database" in refused.stderr
    for result in (missing, init, printed, status, text, pruned, refused):
        assert postgres.password not in result.stdout + result.stderr


async def _heartbeat(relay: Relay) -> None:
    import psycopg as pg

    relay._conn = await pg.AsyncConnection.connect(relay.dsn, autocommit=True)
    try:
        await relay.heartbeat()
    finally:
        await relay._conn.close()


def test_the_relay_waits_out_a_database_outage_without_showing_the_password(
        redis_url, dsn, pg_schema, postgres, caplog):
    bus = make(redis_url, dsn, pg_schema)
    wrong = dsn.replace(postgres.password, "Wrong-Secret-42")
    try:
        relay = Relay(bus.client, relay_id="r1")
        relay.dsn = wrong
        relay.options = relay.options.__class__(**{**relay.options.__dict__,
                                                   "retry_delay": 0.01})

        async def run_a_little() -> None:
            import asyncio

            task = asyncio.get_running_loop().create_task(relay.run())
            while "database error" not in caplog.text:
                await asyncio.sleep(0.01)
            relay.stop()
            await task

        with caplog.at_level("WARNING", logger="bus.outbox"):
            bus.client.run_sync(run_a_little())
        assert "password authentication failed" in caplog.text
        assert postgres.password not in caplog.text
        assert "Wrong-Secret-42" not in caplog.text
    finally:
        bus.client.close()


def test_metrics_show_the_backlog_and_the_inbox(redis_url, dsn, pg_schema):
    config = outbox_config(redis_config(redis_url), dsn, pg_schema, relay=True,
                           heartbeat_interval=0.1, poll_interval=0.1)
    config["plugins"]["metrics"] = {"enabled": True, "port": 0, "lag_interval": 0}
    bus = bus_core.create(config, service_name="shop")
    bus.client.register_api(ShopApi())
    bus.shop.order_placed.listen(lambda event, **kw: None, listener_name="count",
                                 transactional=True)
    try:
        bus.client.start_worker()
        from bus_metrics.plugin import metrics_for

        url = metrics_for(bus.client).url
        assert url is not None
        fire_in_transaction(bus, dsn, 2)

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()

        wait_until(lambda: 'bus_inbox_processed_total{listener_name="count",'
                           'service_name="shop"} 2.0' in scrape(), "the inbox counter")
        text = scrape()
        assert 'bus_outbox_published_total{service_name="shop"} 2.0' in text
        assert 'bus_outbox_backlog{service_name="shop"}' in text
        assert 'bus_outbox_relays_alive{service_name="shop"}' in text
    finally:
        bus.client.close()


def test_relay_once_publishes_the_backlog_and_exits(tmp_path, redis_url, dsn, pg_schema,
                                                    raw, postgres):
    config = outbox_config(redis_config(redis_url), dsn, pg_schema)
    bus = make(redis_url, dsn, pg_schema)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            from bus_outbox.relay import create_tables

            create_tables(conn, pg_schema)
        ids = fire_in_transaction(bus, dsn, 5)
    finally:
        bus.client.close()
    result = bus_cli(tmp_path, config, "outbox", "relay", "--once", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert "stopped (5 events published)" in result.stderr
    assert postgres.password not in result.stdout + result.stderr
    assert [f[b"id"].decode() for _, f in raw.xrange(STREAM)] == ids


@pytest.mark.parametrize("password", ["Pw%zzSecret", "Pw Secret 42"])
def test_a_malformed_dsn_is_reported_without_its_password(tmp_path, redis_url, pg_schema,
                                                          password):
    # libpq quotes the token it cannot parse ("invalid percent-encoded token", "unexpected
    # spaces found in"): here that token is the password, outside any user:password@ form.
    wrong = f"postgresql://shop:{password}@127.0.0.1:1/shop"  # never reached
    config = outbox_config(redis_config(redis_url), wrong, pg_schema)
    result = bus_cli(tmp_path, config, "outbox", "status")
    assert result.returncode == 1
    assert "cannot connect to the outbox database" in result.stderr
    assert "Secret" not in result.stdout + result.stderr

    # A relay refuses it at once (not an outage to retry for ever), in the same words.
    bus = make(redis_url, wrong, pg_schema)
    try:
        with pytest.raises(ConfigError, match="not a connection string PostgreSQL can read"
                           ) as refused:
            Relay(bus.client)
        assert "Secret" not in str(refused.value)
    finally:
        bus.client.close()

    # A transactional listener's connection error is logged by the worker: redacted too.
    with pytest.raises(bus_outbox.OutboxError, match="cannot connect") as caught:
        inbox.Connections(wrong).sync()
    assert "Secret" not in str(caught.value)


def test_a_schema_name_of_the_longest_kind_still_notifies(redis_url, dsn, pg_schema, raw):
    # A channel name is at most 63 bytes: "bus_outbox_" + a 63-character schema is not.
    schema = (pg_schema + "_" + "s" * 63)[:63]
    bus = make(redis_url, dsn, schema, relay=True, poll_interval=3600)
    try:
        bus.client.start_worker()
        ids = fire_in_transaction(bus, dsn, 2)
        wait_until(lambda: raw.xlen(STREAM) == 2, "the NOTIFY to wake the relay", timeout=10)
        assert [f[b"id"].decode() for _, f in raw.xrange(STREAM)] == ids
    finally:
        bus.client.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_an_idle_relay_keeps_its_heartbeat(redis_url, dsn, pg_schema):
    # NOTIFY wakes the relay, so a long poll_interval is reasonable; it must not make an idle
    # relay look gone to `bus outbox status` (seen within three heartbeats).
    bus = make(redis_url, dsn, pg_schema, relay=True, poll_interval=3600,
               heartbeat_interval=0.1)

    def seen() -> list[Any]:
        with psycopg.connect(dsn) as conn:
            return [row[0] for row in conn.execute(
                f"SELECT seen_at FROM {pg_schema}.bus_outbox_relays").fetchall()]

    try:
        bus.client.start_worker()
        wait_until(lambda: len(seen()) == 1, "the relay's first heartbeat")
        first = seen()[0]
        wait_until(lambda: seen()[0] > first, "a heartbeat while idle", timeout=5)
    finally:
        bus.client.close()


DJANGO_FIRE = """
import sys
import django
from django.conf import settings
from urllib.parse import urlsplit

url = urlsplit(sys.argv[1])
settings.configure(DATABASES={"default": {
    "ENGINE": "django.db.backends.postgresql", "NAME": url.path.lstrip("/"),
    "USER": url.username, "PASSWORD": url.password, "HOST": url.hostname,
    "PORT": str(url.port)}})
django.setup()
from django.db import transaction
import bus_core, bus_outbox
from tests.outbox.shop import ShopApi

bus = bus_core.create({"plugins": {"outbox": {"enabled": True, "django": True,
                                              "schema": sys.argv[2]}}}, service_name="shop")
bus.client.register_api(ShopApi())
try:
    with transaction.atomic():
        bus.shop.order_placed.fire(order_id=1, position=0)
except bus_outbox.OutboxError as exc:
    print("OutboxError:", exc)
finally:
    bus.client.close()
"""


def test_a_django_fire_without_outbox_tables_says_how_to_make_them(tmp_path, dsn, pg_schema):
    pytest.importorskip("django")
    result = subprocess.run([sys.executable, "-c", DJANGO_FIRE, dsn, pg_schema],
                            capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert "OutboxError: no outbox table" in result.stdout, result.stdout + result.stderr
    assert "run `bus outbox init`" in result.stdout
