"""Redis consumer behaviours a user relies on that no other test pinned down: one consumer
serving several APIs takes from each in turn; reclaim never hands back an entry this consumer
is still handling; a failed event is redelivered promptly while other handlers run; a fire
that times out on a slow Redis says the event may have been written all the same."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from bus_redis import RedisEventTransport
from bus_redis.rpc import RedisRpcTransport

import bus_core
from bus_core import BusError, EventMessage
from bus_core.default_plugins.json_serializer import JsonSerializer
from bus_core.messages import RpcMessage
from tests.apis import AuthApi
from tests.redis.conftest import RedisServer, free_port, redis_config
from tests.redis.test_redis_reliability import STREAM, config, entry

REPLY = "redis+key://bus:reply:proc:0123456789abcdef0123456789abcdef"


def _options(url: str) -> dict[str, Any]:
    return {"url": url, "serializer": JsonSerializer(), "service_name": "svc",
            "process_name": "proc"}


async def test_one_rpc_consumer_takes_from_every_api_queue_in_turn(redis_url: str) -> None:
    transport = RedisRpcTransport(batch_size=10, blocking_timeout=1, **_options(redis_url))
    await transport.open()
    try:
        for n in range(200):  # a flood on one API ...
            await transport.call_rpc(RpcMessage(api_name="busy", procedure_name="work",
                                                kwargs={"n": n}, return_path=REPLY), timeout=30)
        for n in range(3):  # ... must not starve the other
            await transport.call_rpc(RpcMessage(api_name="quiet", procedure_name="ping",
                                                kwargs={"n": n}, return_path=REPLY), timeout=30)
        consumer = await transport.open_consumer(["busy", "quiet"])
        taken: list[list[str]] = []
        for _ in range(2):
            batch = await asyncio.wait_for(consumer.receive(10), 5)
            taken.append([getattr(item, "api_name", "?") for item in batch])
        await consumer.close()
    finally:
        await transport.close()
    assert "quiet" in taken[0] + taken[1], taken  # within two batches, not after 200 calls


async def test_reclaim_never_hands_back_an_entry_this_consumer_still_handles(
        redis_url: str, raw: Any) -> None:
    transport = RedisEventTransport(claim_idle=0.1, reclaim_interval=0.05,
                                    blocking_timeout=0.2, **_options(redis_url))
    await transport.open()
    try:
        consumer = await transport.open_consumer([("auth", "user_registered")], "welcome")
        raw.xadd(STREAM, entry(**{":username": json.dumps("held")}))
        (held,) = await asyncio.wait_for(consumer.receive(10), 5)
        # A stalled loop: the heartbeat does not refresh the entry, so it goes idle past
        # claim_idle while its handler still runs here.
        consumer._heartbeat.cancel()  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
        raw.xadd(STREAM, entry(**{":username": json.dumps("next"), "id": "other-id"}))
        seen: list[str] = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # several reclaim rounds
            try:
                batch = await asyncio.wait_for(consumer.receive(10), 0.3)
            except asyncio.TimeoutError:
                continue
            seen += [json.loads(d.raw[b":username"]) for d in batch]
        assert seen == ["next"]  # the held entry was not handed out a second time
        await consumer.acknowledge([held])
        await consumer.close()
    finally:
        await transport.close()


async def test_a_failed_event_is_redelivered_promptly_while_another_handler_runs(
        make_redis_bus: Any, redis_url: str) -> None:
    # blocking_timeout is long: a redelivery that waited for the blocked read to end would
    # take 10 s; it must come while the slow handler still holds its event.
    bus = make_redis_bus(config=config(redis_url, event={"blocking_timeout": 10},
                                       redelivery_delay=0))
    bus.client.register_api(AuthApi())
    release = asyncio.Event()
    attempts: list[str] = []
    redelivered = asyncio.Event()

    async def handler(event: EventMessage, username: str, email: str) -> None:
        attempts.append(username)
        if username == "slow":
            await release.wait()
        elif attempts.count("flaky") == 1:
            raise ValueError("first delivery fails")
        else:
            redelivered.set()

    bus.auth.user_registered.listen(handler, listener_name="welcome")
    worker = bus.client.worker()
    await worker.start()
    try:
        await bus.auth.user_registered.fire_async(username="slow", email="e")
        while "slow" not in attempts:
            await asyncio.sleep(0.01)
        await bus.auth.user_registered.fire_async(username="flaky", email="e")
        await asyncio.wait_for(redelivered.wait(), 3)  # well before blocking_timeout
        assert not release.is_set()
    finally:
        release.set()
        await worker.stop()
    assert attempts == ["slow", "flaky", "flaky"]


async def test_a_fire_that_times_out_on_a_slow_redis_says_it_may_have_been_written(
        tmp_path: Any) -> None:
    server = RedisServer(free_port(), tmp_path, extra=("--enable-debug-command", "yes"))
    server.start()
    bus = bus_core.create(redis_config(server.url, event_fire_timeout=0.3),
                          service_name="slow")
    try:
        bus.client.register_api(AuthApi())
        await bus.auth.user_registered.fire_async(username="warm", email="e")  # connected
        admin = server.client()
        sleeper = threading.Thread(target=admin.execute_command, args=("DEBUG", "SLEEP", "1"))
        sleeper.start()
        await asyncio.sleep(0.1)  # Redis is asleep now; it writes the event when it wakes
        with pytest.raises(BusError, match="may still have been written") as caught:
            await bus.auth.user_registered.fire_async(username="late", email="e")
        assert "0.3s" in str(caught.value)
        sleeper.join()
        # Whether the late XADD reached Redis before the fire gave up is a race (usually it
        # did, and Redis writes it on waking): that is why the error says "may".
        names = [json.loads(f[b":username"]) for _, f in admin.xrange(STREAM)]
        assert names in (["warm"], ["warm", "late"])
        admin.close()
    finally:
        await bus.client.close_async()
        server.stop()
