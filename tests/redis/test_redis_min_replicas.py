"""`min_replicas` on the Redis event transport: a fire returns once N replicas have the entry
(XADD + WAIT on one connection), and fails clearly, within `min_replicas_timeout`, when they
do not confirm; `min_replicas_for_acks` waits the same way after acknowledgements."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bus_redis.event import ReplicationNotConfirmed

import bus_core
from bus_core import ConfigError, EventMessage, TransportError
from tests.apis import AuthApi
from tests.helpers import eventually, serving
from tests.redis.conftest import RedisServer, redis_config
from tests.redis.topology import SentinelSet

STREAM = "auth.*:stream"


def event_config(url: str, **event_options: Any) -> dict[str, Any]:
    config = redis_config(url)
    config["apis"]["default"]["event_transport"] = {"redis": {"url": url, **event_options}}
    return config


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A master with one replica (no sentinels: nothing fails over here)."""
    pair = SentinelSet(tmp_path_factory.mktemp("replicated"), replica_count=1,
                       sentinel_count=0).start()
    yield pair
    pair.stop()


async def test_a_fire_with_no_replica_fails_clearly_within_the_timeout(
        own_redis_server: RedisServer) -> None:
    bus = bus_core.create(event_config(own_redis_server.url, min_replicas=1,
                                       min_replicas_timeout=0.3), service_name="lonely")
    bus.client.register_api(AuthApi())
    try:
        started = time.monotonic()
        with pytest.raises(ReplicationNotConfirmed) as caught:
            await bus.auth.user_registered.fire_async(username="ada", email="a@b")
        took = time.monotonic() - started
        assert 0.25 <= took < 2.0, took
        text = str(caught.value)
        assert "written on the master" in text and "0 of the 1 replica(s)" in text, text
        assert "within 0.3s" in text and "a failover now may lose it" in text
        assert isinstance(caught.value, TransportError)
        with own_redis_server.client() as raw:
            assert raw.xlen(STREAM) == 1  # it is there, only not replicated
    finally:
        await bus.client.close_async()


async def test_a_confirmed_fire_is_on_the_replica_when_it_returns(
        replicated: SentinelSet) -> None:
    assert replicated.master is not None
    url = replicated.master.url
    bus = bus_core.create(event_config(url, min_replicas=1, min_replicas_timeout=2),
                          service_name="careful")
    bus.client.register_api(AuthApi())
    replica = replicated.replicas[0].client()
    try:
        before = replica.xlen(STREAM)
        # One at a time, then a batch (one pipeline: the XADDs, then one WAIT).
        message = await bus.auth.user_registered.fire_async(username="ada", email="a@b")
        assert replica.xlen(STREAM) == before + 1
        assert message.native_id and replica.xrange(STREAM, message.native_id,
                                                    message.native_id)
        await asyncio.gather(*(bus.auth.user_registered.fire_async(username=f"u{n}",
                                                                   email="a@b")
                               for n in range(20)))
        assert replica.xlen(STREAM) == before + 21
    finally:
        replica.close()
        await bus.client.close_async()


async def test_acknowledgements_can_wait_for_replicas_too(
        own_redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """No replica: the handled event is acknowledged on the master, and the missing
    confirmation is a warning (a failover may only bring it back), never a failure."""
    bus = bus_core.create(event_config(own_redis_server.url, min_replicas=1,
                                       min_replicas_timeout=0.1, min_replicas_for_acks=True),
                          service_name="acks")
    heard: list[str] = []

    def welcome(event: EventMessage, username: str, email: str) -> None:
        heard.append(username)

    bus.client.register_api(AuthApi())
    bus.auth.user_registered.listen(welcome, listener_name="welcome")
    try:
        async with serving(bus):
            with pytest.raises(ReplicationNotConfirmed):
                await bus.auth.user_registered.fire_async(username="ada", email="a@b")
            await eventually(lambda: heard == ["ada"])
            with own_redis_server.client() as raw:
                await eventually(lambda: raw.xpending(STREAM, "acks-welcome")["pending"] == 0)
            await eventually(lambda: any("after a failover they may be delivered again"
                                         in r.getMessage() for r in caplog.records
                                         if r.levelno == logging.WARNING))
    finally:
        await bus.client.close_async()


def test_the_options_are_checked(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="min_replicas"):
        bus_core.create(event_config(url, min_replicas=-1), service_name="x")
    with pytest.raises(ConfigError, match="min_replicas_timeout"):
        bus_core.create(event_config(url, min_replicas=1, min_replicas_timeout=0),
                        service_name="x")
    with pytest.raises(ConfigError, match="min_replicas_for_acks"):
        bus_core.create(event_config(url, min_replicas_for_acks="yes"), service_name="x")


async def test_a_socket_timeout_shorter_than_the_wait_is_refused() -> None:
    bus = bus_core.create(event_config("redis://127.0.0.1:1/0", min_replicas=1,
                                       min_replicas_timeout=2, socket_timeout=1),
                          service_name="x")
    bus.client.register_api(AuthApi())
    try:
        with pytest.raises(ConfigError, match=r"socket_timeout \(1s\) must be longer than "
                                              r"min_replicas_timeout \(2s\)"):
            await bus.auth.user_registered.fire_async(username="ada", email="a@b")
    finally:
        await bus.client.close_async()
