"""Locks on the Redis RPC transport, and single=True tasks across two workers on Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bus_core import Bus
from tests.helpers import count_single_task_runs, eventually, serving, wait_for_runs
from tests.redis.conftest import redis_config


async def rpc_transport(bus: Bus) -> Any:
    return await (await bus.client.state()).transport("rpc", "default")


async def test_a_lock_is_taken_extended_and_released_by_its_owner(
        make_redis_bus: Callable[..., Bus], raw: Any) -> None:
    transport = await rpc_transport(make_redis_bus(service_name="shop"))
    assert await transport.try_lock("nightly", "a", 10)
    assert raw.get("bus:lock:shop:nightly") == b"a"
    assert 0 < raw.pttl("bus:lock:shop:nightly") <= 10_000
    assert not await transport.try_lock("nightly", "b", 10)
    assert await transport.try_lock("nightly", "a", 60)  # the owner re-acquires: PEXPIRE
    assert raw.pttl("bus:lock:shop:nightly") > 10_000
    await transport.unlock("nightly", "b")  # compare-and-delete: not b's
    assert raw.get("bus:lock:shop:nightly") == b"a"
    await transport.unlock("nightly", "a")
    assert raw.get("bus:lock:shop:nightly") is None
    assert await transport.try_lock("nightly", "b", 10)


async def test_a_lock_expires(make_redis_bus: Callable[..., Bus], raw: Any) -> None:
    transport = await rpc_transport(make_redis_bus())
    assert await transport.try_lock("job", "a", 0.01)
    await eventually(lambda: raw.get("bus:lock:svc:job") is None)
    assert await transport.try_lock("job", "b", 10)


async def test_a_single_task_runs_in_one_of_two_workers(
        make_redis_bus: Callable[..., Bus]) -> None:
    buses = [make_redis_bus(process_name=f"p{i}") for i in range(2)]
    runs = count_single_task_runs(buses)
    async with serving(buses[0]), serving(buses[1]):
        await wait_for_runs(runs, 6)
    assert len(set(runs)) == 1, runs


async def test_the_lock_lives_as_long_as_the_config_says(make_redis_bus: Callable[..., Bus],
                                                         raw: Any, redis_url: str) -> None:
    config = redis_config(redis_url)
    config["bus"]["single_task_lock_ttl"] = 120
    bus = make_redis_bus(config=config)
    runs = count_single_task_runs([bus], seconds=60)  # one run at start-up, then a minute
    bus.client.scheduled[0].also_run_immediately = True
    async with serving(bus):
        await wait_for_runs(runs, 1)
        (key,) = raw.keys("bus:lock:svc:*")
        assert 60_000 < raw.pttl(key) <= 120_000  # the default would be 15 s
