"""The Redis event consumer and connections: no duplicate work after a restart or for a slow
handler, no pool starvation by blocked reads, only wanted entries handled, secrets hidden."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading

from bus_redis import RedisEventTransport
from bus_redis.connection import redact

import bus_core
from bus_core import EventMessage
from bus_core.default_plugins.json_serializer import JsonSerializer
from tests.apis import AuthApi
from tests.redis.conftest import RedisServer, free_port, redis_config
from tests.redis.test_redis_reliability import STREAM, config, entry, pending, wait_until


def _transport(url: str, **options: object) -> RedisEventTransport:
    return RedisEventTransport(url=url, serializer=JsonSerializer(), service_name="svc",
                               process_name="proc", **options)


async def test_a_restarted_consumer_gets_each_of_its_pending_entries_once(redis_url, raw):
    transport = _transport(redis_url)
    await transport.open()
    try:
        first = await transport.open_consumer([("auth", "user_registered")], "welcome")
        for n in range(5):
            raw.xadd(STREAM, entry(username=f"u{n}"))
        taken = await first.receive(10)
        assert len(taken) == 5
        await first.close()  # "crashed": nothing acknowledged
        again = await transport.open_consumer([("auth", "user_registered")], "welcome")
        seen = []
        for _ in range(4):  # keep asking while the first batch is still being handled
            seen += [d.native_id for d in await asyncio.wait_for(again.receive(2), 5)
                     if d.delivery_count > 1]
            if len(seen) >= 5:
                break
        assert sorted(seen) == sorted(d.native_id for d in taken)
        assert len(set(seen)) == len(seen) == 5  # each once, though none is settled yet
        await again.close()
    finally:
        await transport.close()


def test_a_slow_handler_is_not_reclaimed_and_run_again(make_redis_bus, raw, redis_url):
    runs: collections.Counter[str] = collections.Counter()
    release = threading.Event()

    def slow(event: EventMessage, username: str, email: str) -> None:
        runs[username] += 1
        release.wait(5)

    bus = make_redis_bus(config=config(redis_url, event={"claim_idle": 0.3,
                                                         "reclaim_interval": 0.1}))
    bus.client.register_api(AuthApi())
    bus.auth.user_registered.listen(slow, listener_name="slow")
    bus.client.start_worker()
    bus.auth.user_registered.fire(username="patient", email="p@x")
    wait_until(lambda: runs["patient"], "the handler to start")
    # Several claim_idle periods pass while the handler runs: the heartbeat keeps its entry
    # fresh, so neither this process nor another reclaims it.
    other = make_redis_bus(config=config(redis_url, event={"claim_idle": 0.3,
                                                           "reclaim_interval": 0.1}),
                           process_name="other-process")
    other.client.register_api(AuthApi())
    other.auth.user_registered.listen(slow, listener_name="slow")
    other.client.start_worker()
    threading.Event().wait(1.2)
    release.set()
    wait_until(lambda: pending(raw, STREAM, "svc-slow") == 0, "the entry to be acknowledged")
    assert runs["patient"] == 1


def test_blocked_reads_do_not_starve_a_small_pool(make_redis_bus, redis_url):
    small = config(redis_url)
    for kind in ("rpc_transport", "result_transport", "event_transport"):
        small["apis"]["default"][kind]["redis"]["max_connections"] = 2
    server = make_redis_bus(config=small)
    server.client.register_api(AuthApi())
    heard = threading.Event()
    server.auth.user_registered.listen(lambda e, **kw: heard.set(), listener_name="a")
    server.auth.user_deleted.listen(lambda e, **kw: None, listener_name="b")
    server.client.start_worker()
    caller = make_redis_bus(config=small, service_name="caller")
    assert caller.auth.check_password(username="admin", password="secret") is True
    server.auth.user_registered.fire(username="x", email="y")
    assert heard.wait(5)


def test_another_events_malformed_entry_is_not_dead_lettered_by_every_listener(
        make_redis_bus, raw):
    bus = make_redis_bus()
    bus.client.register_api(AuthApi())
    handled = threading.Event()
    bus.auth.user_registered.listen(lambda e, **kw: handled.set(), listener_name="welcome")
    bus.client.start_worker()
    # A broken user_deleted entry on the shared per-API stream: not welcome's business.
    broken = entry(event="user_deleted", username="x")
    broken[":username"] = "{not json"
    raw.xadd(STREAM, broken)
    bus.auth.user_registered.fire(username="fine", email="f")
    assert handled.wait(5)
    wait_until(lambda: pending(raw, STREAM, "svc-welcome") == 0, "acknowledgements")
    assert raw.exists(STREAM + ":dead") == 0


def test_redact_hides_passwords_wherever_they_are():
    assert redact("redis://u:s3cret@host:1/0") == "redis://u:***@host:1/0"
    assert redact("redis://:s3cret@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert "s3cret" not in redact("redis://host/0?password=s3cret&db=1")
    assert redact("redis://host/0?db=1") == "redis://host/0?db=1"


async def test_a_worker_started_before_its_redis_waits_for_it(tmp_path):
    server = RedisServer(free_port(), tmp_path)  # not running yet
    bus = bus_core.create(redis_config(server.url), service_name="early")
    bus.client.register_api(AuthApi())
    bus.auth.user_registered.listen(lambda e, **kw: None, listener_name="welcome")
    stop = asyncio.Event()
    serving = asyncio.create_task(bus.client.serve(stop=stop))
    try:
        for _ in range(20):  # it keeps trying, and does not give up
            await asyncio.sleep(0.02)
            assert not serving.done() and not bus.client.running_workers
        await asyncio.to_thread(server.start)
        while not bus.client.running_workers:
            assert not serving.done()
            await asyncio.sleep(0.02)
        result = await bus.auth.check_password.call_async(username="admin", password="secret")
        assert result is True
    finally:
        stop.set()
        await asyncio.wait_for(serving, 10)
        await bus.client.close_async()
        server.stop()


async def test_stopping_a_worker_that_still_waits_for_redis(tmp_path):
    server = RedisServer(free_port(), tmp_path)  # never started
    bus = bus_core.create(redis_config(server.url), service_name="never")
    bus.auth.user_registered.listen(lambda e, **kw: None, listener_name="welcome")
    stop = asyncio.Event()
    serving = asyncio.create_task(bus.client.serve(stop=stop))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(serving, 5)  # returns, rather than waiting for Redis forever
    await bus.client.close_async()


async def test_idle_consumers_of_gone_processes_are_forgotten_but_never_one_holding_entries(
        redis_url, raw):
    group = "svc-welcome"
    raw.xgroup_create(STREAM, group, id="$", mkstream=True)
    raw.xadd(STREAM, entry(username="held"))
    raw.xadd(STREAM, entry(username="done"))
    raw.xreadgroup(group, "gone-holding", {STREAM: ">"}, count=1)  # dies holding one entry
    (_, [(done_id, _)]), = raw.xreadgroup(group, "gone-idle", {STREAM: ">"}, count=1)
    raw.xack(STREAM, group, done_id)  # dies holding nothing
    kept = _transport(redis_url, forget_consumers_after=3600)  # nobody is that old yet
    forgetful = _transport(redis_url, forget_consumers_after=0)
    for transport in (kept, forgetful):
        await transport.open()
    try:
        await (await kept.open_consumer([("auth", "user_registered")], "welcome")).close()
        names = {c["name"].decode() for c in raw.xinfo_consumers(STREAM, group)}
        assert {"gone-holding", "gone-idle"} <= names
        await (await forgetful.open_consumer([("auth", "user_registered")], "welcome")).close()
        names = {c["name"].decode() for c in raw.xinfo_consumers(STREAM, group)}
        assert "gone-idle" not in names  # held nothing: forgotten
        assert "gone-holding" in names  # its entry stays claimable by the others
        assert pending(raw, STREAM, group) == 1
    finally:
        for transport in (kept, forgetful):
            await transport.close()


async def test_a_running_consumer_keeps_forgetting_idle_consumers_that_hold_nothing(
        redis_url, raw):
    group = "svc-welcome"
    transport = _transport(redis_url, forget_consumers_after=0.2, claim_idle=60,
                           reclaim_interval=0.05, blocking_timeout=0.05)
    await transport.open()
    try:
        consumer = await transport.open_consumer([("auth", "user_registered")], "welcome")
        # Processes that come and go while this one runs: one dies holding an entry.
        raw.xadd(STREAM, entry(username="held"))
        raw.xadd(STREAM, entry(username="done"))
        raw.xreadgroup(group, "gone-holding", {STREAM: ">"}, count=1)
        (_, [(done_id, _)]), = raw.xreadgroup(group, "gone-idle", {STREAM: ">"}, count=1)
        raw.xack(STREAM, group, done_id)

        def names() -> set[str]:
            return {c["name"].decode() for c in raw.xinfo_consumers(STREAM, group)}

        assert {"gone-holding", "gone-idle"} <= names()
        for _ in range(100):  # receive() runs the periodic upkeep while it waits
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(consumer.receive(10), 0.05)
            if "gone-idle" not in names():
                break
        assert "gone-idle" not in names()
        assert "gone-holding" in names()  # never one holding entries
        assert {g["name"].decode() for g in raw.xinfo_groups(STREAM)} == {group}
        await consumer.close()
    finally:
        await transport.close()
