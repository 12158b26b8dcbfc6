"""Every feature on a real 3-master Redis Cluster, and the same tests through a Sentinel set
(a master, a replica, three sentinels): RPCs of two APIs whose queues live on different
nodes, both kinds of reply list, events per API and per event with streams on different
nodes, reclaim, dead letters, replay and history, schema sharing, a single-runner task's
lock, state pings and the CLI (`bus state`, `bus inspect`), worker-death detection.

The cluster's slots are split by `redis-cli --cluster create` as 0-5460, 5461-10922 and
10923-16383; the names below were chosen so that the keys that matter land on different
nodes (asserted in `test_the_keys_of_these_tests_are_spread_over_nodes`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.sentinel
from bus_schema.plugin import store_for
from redis.crc import key_slot

import bus_core
from bus_core import Api, Bus, Event, EventMessage, RpcWorkerLost
from tests.apis import AuthApi
from tests.helpers import eventually, serving
from tests.redis.conftest import redis_config
from tests.redis.topology import RedisClusterSet, SentinelSet

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


@pytest.fixture(scope="module", params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[RedisClusterSet | SentinelSet]:
    folder = tmp_path_factory.mktemp(request.param)
    started = (RedisClusterSet(folder) if request.param == "cluster"
               else SentinelSet(folder)).start()
    yield started
    started.stop()


@pytest.fixture
def url(topology: RedisClusterSet | SentinelSet) -> str:
    """The topology's URL, every master emptied for this test."""
    if isinstance(topology, SentinelSet):
        assert topology.master is not None
        with topology.master.client() as client:
            client.flushall()
        return topology.url()
    for node in topology.nodes:
        with node.client() as client:
            if client.info("replication")["role"] == "master":
                client.flushall()
    return topology.url


def on_cluster(url: str) -> bool:
    return url.startswith("redis+cluster://")


class Raw:
    """A plain redis-py client on what Bus wrote: the cluster, or Sentinel's master.
    `all_keys` is KEYS on every node."""

    def __init__(self, url: str) -> None:
        hosts = [entry.split(":") for entry in
                 url.split("://", 1)[1].split("/", 1)[0].split(",")]
        if on_cluster(url):
            self.client: Any = redis.RedisCluster(startup_nodes=[
                redis.cluster.ClusterNode(host, int(port)) for host, port in hosts])
        else:
            master_name = url.split("/")[3]
            self.client = redis.sentinel.Sentinel(
                [(host, int(port)) for host, port in hosts]).master_for(master_name)
        self.cluster = on_cluster(url)

    def all_keys(self, pattern: str) -> list[bytes]:
        if self.cluster:
            return list(self.client.keys(pattern, target_nodes=redis.RedisCluster.ALL_NODES))
        return list(self.client.keys(pattern))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.client.close()


def raw_cluster(url: str) -> Raw:
    return Raw(url)


def make_bus(url: str, service: str, process: str | None = None, *,
             plugins: dict[str, Any] | None = None, **api_default: Any) -> Bus:
    config = redis_config(url, **api_default)
    if plugins:
        config["plugins"] = plugins
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
            assert raw.all_keys("rpc_expiry_key:*") == []
            assert raw.all_keys("bus:claim:*") == []
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
            if on_cluster(url):
                expiry = f"rpc_expiry_key:{{shop:rpc_queue}}:{blob['metadata']['id']}"
                assert key_slot(expiry.encode()) == key_slot(b"shop:rpc_queue")
            else:  # Sentinel: the Lightbus key names, byte for byte
                expiry = f"rpc_expiry_key:{blob['metadata']['id']}"
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


# -- events ----------------------------------------------------------------------------------

class Heard:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, event: EventMessage, **kwargs: Any) -> None:
        self.events.append((event.event_name, str(kwargs.get("username") or kwargs["item"])))


@pytest.mark.parametrize("stream_use", ["per_api", "per_event"])
async def test_a_listener_reads_streams_on_different_nodes(url: str, stream_use: str) -> None:
    config = redis_config(url)
    config["apis"]["default"]["event_transport"] = {
        "redis": {"url": url, "stream_use": stream_use}}
    bus = bus_core.create(config, service_name="listening")
    bus.client.register_api(AuthApi())
    bus.client.register_api(ShopApi())
    heard = Heard()
    bus.client.listen([("auth", "user_registered"), ("auth", "user_deleted"),
                           ("shop", "ordered")], heard, listener_name="all")
    try:
        async with serving(bus, rpcs=False):
            await asyncio.sleep(0.1)  # every read is blocked on its node
            started = time.monotonic()
            await bus.auth.user_deleted.fire_async(username="bob")
            await eventually(lambda: len(heard.events) == 1)
            assert time.monotonic() - started < 1.0  # not a blocking_timeout later
            for n in range(30):
                await bus.auth.user_registered.fire_async(username=f"u{n}", email="e")
                await bus.shop.ordered.fire_async(item=f"i{n}")
            await eventually(lambda: len(heard.events) == 61)
        assert sorted(heard.events) == sorted(
            [("user_deleted", "bob")] + [("user_registered", f"u{n}") for n in range(30)]
            + [("ordered", f"i{n}") for n in range(30)])
    finally:
        await bus.client.close_async()


async def test_replay_since_zero_history_and_lag(url: str) -> None:
    bus = make_bus(url, "replaying")
    bus.client.register_api(AuthApi())
    bus.client.register_api(ShopApi())
    try:
        for n in range(5):
            await bus.auth.user_registered.fire_async(username=f"old{n}", email="e")
            await bus.shop.ordered.fire_async(item=f"old{n}")
        transport = await (await bus.client.state()).transport("event", "shop")
        history = [m.kwargs["item"] async for m in transport.history("shop", "ordered")]
        assert history == [f"old{n}" for n in reversed(range(5))]
        heard = Heard()
        bus.client.listen([("auth", "user_registered"), ("shop", "ordered")], heard,
                              listener_name="replay", since="0")
        assert await transport.lag("shop", "ordered", "replay") in (0, 5)
        async with serving(bus, rpcs=False):
            await eventually(lambda: len(heard.events) == 10)
        assert await transport.lag("shop", "ordered", "replay") == 0
    finally:
        await bus.client.close_async()


async def test_entries_of_a_dead_consumer_are_reclaimed(url: str) -> None:
    config = redis_config(url)
    config["apis"]["default"]["event_transport"] = {
        "redis": {"url": url, "claim_idle": 0.3, "reclaim_interval": 0.1}}
    bus = bus_core.create(config, service_name="claims", process_name="survivor")
    bus.client.register_api(ShopApi())
    bus.client.register_api(AuthApi())
    heard = Heard()
    bus.client.listen([("shop", "ordered"), ("auth", "user_registered")], heard,
                          listener_name="l")
    try:
        async with serving(bus, rpcs=False):
            pass  # the group exists now
        for n in range(3):
            await bus.shop.ordered.fire_async(item=f"i{n}")
            await bus.auth.user_registered.fire_async(username=f"u{n}", email="e")
        with raw_cluster(url) as raw:  # a consumer takes them all, then dies
            for stream in ("shop.*:stream", "auth.*:stream"):
                taken = raw.xreadgroup("claims-l", "ghost", {stream: ">"}, count=10)
                assert len(taken[0][1]) == 3
        async with serving(bus, rpcs=False):
            await eventually(lambda: len(heard.events) == 6)
        with raw_cluster(url) as raw:
            for stream in ("shop.*:stream", "auth.*:stream"):
                assert raw.xpending(stream, "claims-l")["pending"] == 0
    finally:
        await bus.client.close_async()


async def test_failing_events_are_dead_lettered(url: str) -> None:
    bus = make_bus(url, "dying", max_deliveries=2)
    bus.client.register_api(ShopApi())
    attempts: list[str] = []

    def fail(event: EventMessage, item: str) -> None:
        attempts.append(item)
        raise ValueError(f"cannot ship {item}")

    bus.shop.ordered.listen(fail, listener_name="ship")
    try:
        async with serving(bus, rpcs=False):
            await bus.shop.ordered.fire_async(item="vase")
            with raw_cluster(url) as raw:
                await eventually(lambda: raw.xlen("shop.*:stream:dead") == 1)
                ((_, fields),) = raw.xrange("shop.*:stream:dead")
                assert fields[b"bus_dead_group"] == b"dying-ship"
                assert b"cannot ship vase" in fields[b"bus_dead_reason"]
                await eventually(lambda: raw.xpending("shop.*:stream",
                                                      "dying-ship")["pending"] == 0)
        assert attempts == ["vase", "vase"]
    finally:
        await bus.client.close_async()


# -- schema, locks, state, CLI ---------------------------------------------------------------

async def test_schemas_are_shared_between_services(url: str) -> None:
    plugins = {"schema": {"enabled": True}}
    auth_side = make_bus(url, "auth_service", plugins=plugins)
    auth_side.client.register_api(AuthApi())
    shop_side = make_bus(url, "shop_service", plugins=plugins)
    shop_side.client.register_api(ShopApi())
    reader = make_bus(url, "reader", plugins=plugins)
    try:
        async with serving(auth_side, events=False), serving(shop_side, events=False):
            store = store_for(reader.client)  # what a service learns of the others
            await store.ensure_loaded()
            assert set(store.remote) == {"auth", "shop"}  # schema:auth, schema:shop: 2 nodes
            assert "price" in store.remote["shop"]["rpcs"]
    finally:
        for bus in (auth_side, shop_side, reader):
            await bus.client.close_async()


async def test_a_single_task_runs_in_one_process_at_a_time(url: str) -> None:
    runs: list[str] = []
    buses = [make_bus(url, "ticker", process=f"p{n}") for n in range(2)]
    for bus in buses:
        async def tick(name: str = bus.client.process_name) -> None:
            runs.append(name)
            await asyncio.sleep(0.3)
        bus.client.every(seconds=0.05, single=True)(tick)
    try:
        async with serving(buses[0]), serving(buses[1]):
            await asyncio.sleep(1.0)
        assert runs and len(set(runs)) == 1  # the lock holder keeps it while it runs
    finally:
        for bus in buses:
            await bus.client.close_async()


def write_project(folder: Path, url: str) -> Path:
    transport = f"{{redis: {{url: '{url}'}}}}"
    (folder / "bus.py").write_text(
        "import bus_core\nfrom tests.redis.test_redis_cluster_features import ShopApi\n"
        "bus = bus_core.create(service_name='shop_service')\n"
        "bus.client.register_api(ShopApi())\n")
    (folder / "bus.yaml").write_text(
        f"bus:\n  schema: {{transport: {transport}}}\n"
        f"apis:\n  default:\n    rpc_transport: {transport}\n"
        f"    result_transport: {transport}\n    event_transport: {transport}\n"
        "plugins:\n  state: {enabled: true, ping_interval: 2, grace: 1}\n")
    return folder


def run_bus(folder: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bus_core.cli", *args, "-c", "bus.yaml"],
                          cwd=folder,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


async def test_state_pings_and_the_cli(url: str, tmp_path: Path) -> None:
    folder = write_project(tmp_path, url)
    worker = subprocess.Popen([sys.executable, "-m", "bus_core.cli", "run", "-c", "bus.yaml"],
                              cwd=folder,
                              env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def alive() -> bool:
            listed = run_bus(folder, "state", "--json")
            rows = json.loads(listed.stdout or "[]")
            return any(row["service_name"] == "shop_service" and row["status"] == "alive"
                       for row in rows)

        deadline = time.monotonic() + 20
        while not await asyncio.to_thread(alive):
            assert time.monotonic() < deadline and worker.poll() is None, \
                worker.stderr.read() if worker.poll() is not None else "no state"
            await asyncio.sleep(0.2)
        called = await asyncio.to_thread(run_bus, folder, "call", "shop.price", "item=abc",
                                         "--json")
        assert called.returncode == 0 and json.loads(called.stdout) == 3, called.stderr
        fired = await asyncio.to_thread(run_bus, folder, "fire", "shop.ordered", "item=lamp")
        assert fired.returncode == 0, fired.stderr
        listed = await asyncio.to_thread(run_bus, folder, "inspect", "-e", "shop.ordered",
                                         "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [row["kwargs"]["item"] for row in rows] == ["lamp"], rows
        pings = await asyncio.to_thread(run_bus, folder, "inspect", "-e",
                                        "internal.state.worker_ping", "--json")
        assert pings.returncode == 0 and pings.stdout.strip(), pings.stderr
    finally:
        worker.terminate()
        worker.wait(15)
    stopped = await asyncio.to_thread(run_bus, folder, "state", "--all", "--json")
    assert [row["status"] for row in json.loads(stopped.stdout)] == ["stopped"]


# -- a worker that dies ----------------------------------------------------------------------

SLOW_WORKER = """
import asyncio, sys
import bus_core
from tests.apis import AuthApi
from tests.redis.conftest import redis_config
from tests.redis.test_redis_cluster_features import ShopApi


async def main() -> None:
    bus = bus_core.create(redis_config(sys.argv[1], rpc_timeout=30), service_name="slow",
                          process_name="doomed")
    bus.client.register_api(AuthApi())
    bus.client.register_api(ShopApi())
    await bus.client.worker(events=False).start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_callers_learn_fast_that_their_worker_died(url: str, tmp_path: Path) -> None:
    script = tmp_path / "slow_worker.py"
    script.write_text(SLOW_WORKER)
    worker = subprocess.Popen([sys.executable, str(script), url], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    caller = make_bus(url, "caller", rpc_timeout=30)
    try:
        assert worker.stdout is not None
        line = await asyncio.to_thread(worker.stdout.readline)
        assert line.strip() == "ready", line + worker.stdout.read()
        calls = [asyncio.ensure_future(caller.client.call_rpc_async(
            "shop", "price", {"item": "x", "delay": 60})) for _ in range(5)]
        calls += [asyncio.ensure_future(caller.client.call_rpc_async(
            "auth", "slow_echo", {"value": "x", "delay": 60})) for _ in range(5)]
        with raw_cluster(url) as raw:
            await eventually(lambda: len(raw.all_keys("bus:claim:*")) == 10)
            workers = raw.all_keys("bus:worker:*")
            if on_cluster(url):  # a liveness key per queue, tagged like the queue
                assert sorted(workers) == sorted([w for w in workers if w.startswith((
                    b"bus:worker:{shop:rpc_queue}:doomed:",
                    b"bus:worker:{auth:rpc_queue}:doomed:"))])
                assert len(workers) == 2
            else:  # one for the worker
                assert len(workers) == 1 and workers[0].startswith(b"bus:worker:doomed:")
        worker.kill()
        killed = time.monotonic()
        outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        assert all(isinstance(outcome, RpcWorkerLost) for outcome in outcomes), outcomes
        assert time.monotonic() - killed < 2.0
    finally:
        worker.kill()
        worker.wait(10)
        await caller.client.close_async()
