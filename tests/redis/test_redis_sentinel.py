"""Redis Sentinel: RPCs and events through `redis+sentinel://`, and a failover (the master
SIGKILLed) under steady traffic: producers, listeners, RPC callers and workers carry on with
the promoted replica, without a restart. With `min_replicas: 1`, no fire that returned is
lost; without it, the loss is measured and printed (see docs/howto/high-availability.md)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import bus_core
from bus_core import BusError, EventMessage, TransportError
from bus_core.redaction import redact_url
from tests.apis import AuthApi
from tests.helpers import serving
from tests.redis.conftest import assert_round_trip, redis_config
from tests.redis.topology import SentinelSet

DATA_SECRET = "data-s3cret"
SENTINEL_SECRET = "sentinel-s3cret"


@pytest.fixture(scope="module")
def guarded_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A master, a replica and three sentinels, with passwords on both sides."""
    sentinels = SentinelSet(tmp_path_factory.mktemp("sentinel"), password=DATA_SECRET,
                            sentinel_password=SENTINEL_SECRET).start()
    yield sentinels
    sentinels.stop()


def test_rpcs_and_events_through_sentinel(guarded_set: SentinelSet) -> None:
    url = guarded_set.url(db=2)
    assert_round_trip(url)
    assert guarded_set.master is not None
    with guarded_set.data_client(guarded_set.master, db=2) as raw:
        assert raw.exists("auth.*:stream")  # on the master, in the URL's database


def test_a_wrong_sentinel_password_is_a_clear_error_without_secrets(
        guarded_set: SentinelSet) -> None:
    url = guarded_set.url().replace(SENTINEL_SECRET, "wrong-" + SENTINEL_SECRET)
    bus = bus_core.create(redis_config(url), service_name="refused")
    bus.client.register_api(AuthApi())
    try:
        with pytest.raises(TransportError) as caught:
            bus.auth.user_registered.fire(username="ada", email="a@b")
    finally:
        bus.client.close()
    text = str(caught.value)
    assert "No master found for 'mymaster'" in text, text
    assert SENTINEL_SECRET not in text and DATA_SECRET not in text, text


def test_sentinel_urls_are_masked() -> None:
    url = (f"redis+sentinel://app:{DATA_SECRET}@h1:26379,h2:26379/mymaster/0"
           f"?sentinel_username=watch&sentinel_password={SENTINEL_SECRET}")
    shown = redact_url(url)
    assert DATA_SECRET not in shown and SENTINEL_SECRET not in shown
    assert shown == ("redis+sentinel://app:***@h1:26379,h2:26379/mymaster/0"
                     "?sentinel_username=watch&sentinel_password=***")


# -- a failover under load ----------------------------------------------------------------

FIRERS = 2
FIRE_PAUSE = 0.002  # seconds between one firer's fires: steady traffic, not a flood


@dataclass
class Traffic:
    """What producers and callers saw, in monotonic seconds."""

    fired: dict[str, float] = field(default_factory=dict)  # username -> when it returned
    failed: list[tuple[float, float, str]] = field(default_factory=list)  # start, took, type
    longest_fire: float = 0.0
    calls_ok: list[float] = field(default_factory=list)
    calls_failed: list[tuple[float, str]] = field(default_factory=list)
    longest_call: float = 0.0
    heard: set[str] = field(default_factory=set)
    handled: collections.Counter[str] = field(default_factory=collections.Counter)


async def fire_steadily(bus: bus_core.Bus, who: int, traffic: Traffic,
                        stop: asyncio.Event) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        username = f"p{who}-{number}"
        started = time.monotonic()
        try:
            await bus.auth.user_registered.fire_async(username=username, email="a@b")
        except BusError as exc:
            traffic.failed.append((started, time.monotonic() - started, type(exc).__name__))
        else:
            traffic.fired[username] = time.monotonic()
        traffic.longest_fire = max(traffic.longest_fire, time.monotonic() - started)
        await asyncio.sleep(FIRE_PAUSE)


async def call_steadily(bus: bus_core.Bus, traffic: Traffic, stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            answer = await bus.auth.check_password.call_async(username="admin",
                                                              password="secret")
            assert answer is True
            traffic.calls_ok.append(time.monotonic())
        except BusError as exc:
            traffic.calls_failed.append((started, type(exc).__name__))
        traffic.longest_call = max(traffic.longest_call, time.monotonic() - started)
        await asyncio.sleep(0.01)


async def until(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
def failover_set(tmp_path: Any) -> Iterator[SentinelSet]:
    """A set of this test alone (its master gets killed): two replicas, so that after the
    failover the new master still has one to confirm `min_replicas: 1`."""
    sentinels = SentinelSet(tmp_path, replica_count=2).start()
    yield sentinels
    sentinels.stop()


@pytest.mark.parametrize("min_replicas", [0, 1])
async def test_a_failover_under_load(failover_set: SentinelSet, min_replicas: int) -> None:
    started = time.monotonic()
    url = failover_set.url()
    config = redis_config(url, rpc_timeout=2, event_fire_timeout=5)
    config["apis"]["default"]["event_transport"] = {"redis": {
        "url": url, "claim_idle": 1.0, "reclaim_interval": 0.2,
        "min_replicas": min_replicas, "min_replicas_timeout": 0.5}}
    server = bus_core.create(config, service_name="ha_server")
    producer = bus_core.create(config, service_name="ha_producer")
    caller = bus_core.create(config, service_name="ha_caller")
    traffic = Traffic()

    def welcome(event: EventMessage, username: str, email: str) -> None:
        traffic.heard.add(username)
        traffic.handled[username] += 1

    server.client.register_api(AuthApi())
    producer.client.register_api(AuthApi())
    server.auth.user_registered.listen(welcome, listener_name="welcome")
    stop = asyncio.Event()
    try:
        async with serving(server):
            tasks = [asyncio.create_task(fire_steadily(producer, n, traffic, stop))
                     for n in range(FIRERS)]
            tasks.append(asyncio.create_task(call_steadily(caller, traffic, stop)))
            await until(lambda: len(traffic.fired) >= 200 and len(traffic.calls_ok) >= 5,
                        "traffic before the failover", 10)
            fired_before = len(traffic.fired)
            victim = await asyncio.to_thread(failover_set.kill_master)
            killed = time.monotonic()
            assert victim.port is not None
            await asyncio.to_thread(failover_set.wait_failover, victim.port)
            promoted = time.monotonic()
            # Everyone carries on: new fires return, new calls are answered and new events
            # are handled, with nothing restarted.
            await until(lambda: sum(at > promoted for at in traffic.fired.values()) >= 200
                        and sum(at > promoted for at in traffic.calls_ok) >= 5,
                        "fires and calls after the failover", 15)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            after = [name for name, at in traffic.fired.items() if at > promoted]
            await until(lambda: traffic.heard.issuperset(after),
                        "the events fired after the failover to be handled", 10)
            if min_replicas:
                await until(lambda: traffic.heard.issuperset(traffic.fired),
                            "every confirmed fire to be handled", 10)
            lost = sorted(set(traffic.fired) - traffic.heard, key=traffic.fired.__getitem__)
    finally:
        stop.set()
        for bus in (caller, producer, server):
            await bus.client.close_async()

    failures = collections.Counter(kind for _, _, kind in traffic.failed)
    window = [start for start, _, _ in traffic.failed]
    first_after = min((at for at in traffic.fired.values() if at > killed), default=None)
    lost_before_kill = [killed - traffic.fired[name] for name in lost]
    print(f"\nfailover with min_replicas={min_replicas}: "
          f"{len(traffic.fired)} fires returned ({fired_before} before the kill), "
          f"{len(traffic.failed)} failed {dict(failures)}, "
          f"lost {len(lost)} returned fire(s)"
          + (f" returned {min(lost_before_kill) * 1000:.1f}-{max(lost_before_kill) * 1000:.1f}"
             " ms before the kill" if lost else "")
          + f"; promoted {promoted - killed:.2f}s after the kill; first fire returned "
          f"{(first_after or killed) - killed:.2f}s after the kill; fires failed from "
          f"{(min(window, default=killed) - killed):+.2f}s to "
          f"{(max(window, default=killed) - killed):+.2f}s; longest fire "
          f"{traffic.longest_fire:.2f}s; calls: {len(traffic.calls_ok)} answered, "
          f"{len(traffic.calls_failed)} failed "
          f"{dict(collections.Counter(kind for _, kind in traffic.calls_failed))}, "
          f"longest {traffic.longest_call:.2f}s; "
          f"handled twice: {sum(n > 1 for n in traffic.handled.values())}; "
          f"test took {time.monotonic() - started:.1f}s")
    allowed = {"TransportUnavailable", "ReplicationNotConfirmed"} if min_replicas \
        else {"TransportUnavailable"}
    assert set(failures) <= allowed, failures
    assert traffic.longest_fire < 5.5  # nothing hangs: at most the fire timeout
    assert traffic.longest_call < 5.0
    if min_replicas:
        assert lost == []  # every fire that returned was handled
