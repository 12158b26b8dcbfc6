"""Every feature on a real 3-master Redis Cluster: RPCs of two APIs whose queues live on
different nodes, both kinds of reply list, events per API and per event with streams on
different nodes, reclaim, dead letters, replay and history, schema sharing, a single-runner
task's lock, state pings and the CLI (`bus state`, `bus inspect`), worker-death detection.

The cluster's slots are split by `redis-cli --cluster create` as 0-5460, 5461-10922 and
10923-16383; the names below were chosen so that the keys that matter land on different
nodes (asserted in `test_the_keys_of_these_tests_are_spread_over_nodes`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

import bus_core
from bus_core import Api, Bus, Event
from tests.apis import AuthApi
from tests.helpers import serving
from tests.redis.conftest import redis_config
from tests.redis.topology import RedisClusterSet

ROOT = Path(__file__).resolve().parents[2]


class ShopApi(Api):
    """An API whose queue (`shop:rpc_queue`) and stream are on other nodes than auth's."""

    ordered = Event(parameters=("item",))

    class Meta:
        name = "shop"

    async def price(self, item: str, delay: float = 0.0) -> int:
        await asyncio.sleep(delay)
        return len(item)


def node_of(key: str) -> int:
    """Which of the three masters owns `key` (by the create command's even split)."""
    return min(key_slot(key.encode()) // 5462, 2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    nodes = RedisClusterSet(tmp_path_factory.mktemp("cluster")).start()
    yield nodes
    nodes.stop()


@pytest.fixture
def url(cluster: RedisClusterSet) -> str:
    """The cluster's URL, every master emptied for this test."""
    for node in cluster.nodes:
        with node.client() as client:
            if client.info("replication")["role"] == "master":
                client.flushall()
    return cluster.url


def raw_cluster(url: str) -> redis.RedisCluster:
    first = url[len("redis+cluster://"):].split(",")[0]
    host, port = first.split(":")
    return redis.RedisCluster(host=host, port=int(port))


def make_bus(url: str, service: str, process: str | None = None, **api_default: Any) -> Bus:
    config = redis_config(url, **api_default)
    return bus_core.create(config, service_name=service, process_name=process)


def test_the_keys_of_these_tests_are_spread_over_nodes() -> None:
    assert node_of("auth:rpc_queue") != node_of("shop:rpc_queue")
    assert node_of("auth.*:stream") != node_of("shop.*:stream")
    assert node_of("auth.user_registered:stream") != node_of("auth.user_deleted:stream")


# -- RPC and results -------------------------------------------------------------------------

@pytest.mark.parametrize("reply_list", ["shared", "per_call"])
async def test_one_worker_serves_two_apis_on_different_nodes(url: str, reply_list: str
                                                             ) -> None:
    server = make_bus(url, "server")
    server.client.register_api(AuthApi())
    server.client.register_api(ShopApi())
    config = redis_config(url)
    config["apis"]["default"]["result_transport"] = {
        "redis": {"url": url, "reply_list": reply_list}}
    caller = bus_core.create(config, service_name="caller")
    try:
        async with serving(server, events=False):
            calls = [caller.client.call_rpc_async("shop", "price", {"item": "x" * n})
                     for n in range(40)]
            calls += [caller.client.call_rpc_async("auth", "check_password",
                                               {"username": "admin", "password": "secret"})
                      for _ in range(40)]
            results = await asyncio.wait_for(asyncio.gather(*calls), 10)
        assert results[:40] == list(range(40)) and all(results[40:])
        with raw_cluster(url) as raw:  # every expiry key was claimed, every record removed
            assert raw.keys("rpc_expiry_key:*", target_nodes=redis.RedisCluster.ALL_NODES) \
                == []
            assert raw.keys("bus:claim:*", target_nodes=redis.RedisCluster.ALL_NODES) == []
    finally:
        await caller.client.close_async()
        await server.client.close_async()


async def test_cluster_keys_are_hash_tagged_by_queue(url: str) -> None:
    caller = make_bus(url, "caller")
    try:
        with pytest.raises(bus_core.RpcTimeout):
            await caller.client.call_rpc_async("shop", "price", {"item": "a"}, {"timeout": 0.3})
        with raw_cluster(url) as raw:
            assert raw.llen("shop:rpc_queue") == 1  # the Lightbus queue name, unchanged
            blob = json.loads(raw.lpop("shop:rpc_queue"))
            expiry = f"rpc_expiry_key:{{shop:rpc_queue}}:{blob['metadata']['id']}"
            assert key_slot(expiry.encode()) == key_slot(b"shop:rpc_queue")
            assert raw.exists(expiry) == 0  # expired with the caller's timeout
    finally:
        await caller.client.close_async()


async def test_an_expired_call_is_not_run(url: str) -> None:
    server = make_bus(url, "server")
    runs: list[str] = []

    class Counting(ShopApi):
        async def price(self, item: str, delay: float = 0.0) -> int:
            runs.append(item)
            return 1

    server.client.register_api(Counting())
    caller = make_bus(url, "caller")
    try:
        with pytest.raises(bus_core.RpcTimeout):
            await caller.client.call_rpc_async("shop", "price", {"item": "late"}, {"timeout": 0.2})
        async with serving(server, events=False):
            assert await caller.client.call_rpc_async("shop", "price", {"item": "now"}) == 1
        assert runs == ["now"]
    finally:
        await caller.client.close_async()
        await server.client.close_async()


async def test_a_quiet_queue_does_not_delay_a_busy_one(url: str) -> None:
    """The worker pops each queue on its own: a call on either is taken at once."""
    server = make_bus(url, "server")
    server.client.register_api(AuthApi())
    server.client.register_api(ShopApi())
    caller = make_bus(url, "caller")
    try:
        async with serving(server, events=False):
            await asyncio.sleep(0.2)  # both pops are blocked now
            for api, name, kwargs in [("shop", "price", {"item": "ab"}),
                                      ("auth", "check_password",
                                       {"username": "admin", "password": "secret"})] * 3:
                started = time.monotonic()
                await caller.client.call_rpc_async(api, name, kwargs)
                assert time.monotonic() - started < 1.0  # never a blocking_timeout (5 s)
    finally:
        await caller.client.close_async()
        await server.client.close_async()
