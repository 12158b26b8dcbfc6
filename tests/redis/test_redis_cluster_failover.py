"""A Redis Cluster changing under load: the slot of a call queue and stream migrated to
another master while calls and events flow (MOVED / ASK / TRYAGAIN, followed by redis-py's
cluster client), and a master SIGKILLed so that its replica takes over (cluster failover):
callers, producers, the worker's pops and the listener's reads carry on."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

import bus_core
from bus_core import Bus, EventMessage
from tests.apis import AuthApi
from tests.helpers import eventually, serving
from tests.redis.conftest import RedisServer, redis_config
from tests.redis.test_redis_cluster_features import ShopApi, raw_cluster
from tests.redis.topology import RedisClusterSet, wait_for


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    nodes = RedisClusterSet(tmp_path_factory.mktemp("cluster"), replicas_per_master=1).start()
    yield nodes
    nodes.stop()


def node_owning(cluster: RedisClusterSet, key: str) -> RedisServer:
    with raw_cluster(cluster.url) as raw:
        owner = raw.get_node_from_key(key)
    return next(node for node in cluster.nodes if node.port == owner.port)


def node_id(node: RedisServer) -> str:
    with node.client() as client:
        return client.execute_command("CLUSTER", "MYID").decode()


def migrate_slot(cluster: RedisClusterSet, slot: int, source: RedisServer,
                 target: RedisServer) -> None:
    """What `redis-cli --cluster reshard` does for one slot, key batch by key batch."""
    source_id, target_id = node_id(source), node_id(target)
    with source.client() as src, target.client() as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while True:
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 2)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000,
                                "KEYS", *keys)
            time.sleep(0.05)  # calls flow meanwhile, half of the slot on each side
        # As redis-cli does: the target first, then the source, then the other masters
        # (the source first would send clients back and forth for a moment).
        others = [n for n in cluster.masters_now() if n.port not in (source.port,
                                                                      target.port)]
        for node in (target, source, *others):
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


class Load:
    """Callers and a producer running until stopped, counting what worked and failed."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.answered = 0
        self.fired: list[str] = []
        self.failures: list[BaseException] = []
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._call()) for _ in range(4)]
        self.tasks.append(loop.create_task(self._fire()))

    async def _call(self) -> None:
        while not self.stopping:
            try:
                assert await self.bus.client.call_rpc_async(
                    "shop", "price", {"item": "abc"}, {"timeout": 3}) == 3
                self.answered += 1
            except Exception as exc:
                self.failures.append(exc)
                await asyncio.sleep(0.05)

    async def _fire(self) -> None:
        n = 0
        while not self.stopping:
            try:
                await self.bus.shop.ordered.fire_async(item=f"i{n}")
                self.fired.append(f"i{n}")
                n += 1
            except Exception as exc:
                self.failures.append(exc)
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*self.tasks)


def make(url: str, service: str) -> Bus:
    bus = bus_core.create(redis_config(url), service_name=service)
    bus.client.register_api(ShopApi())
    bus.client.register_api(AuthApi())
    return bus


async def test_a_slot_migration_while_calls_and_events_flow(cluster: RedisClusterSet
                                                            ) -> None:
    server, caller = make(cluster.url, "server"), make(cluster.url, "caller")
    heard: set[str] = set()

    def on_order(event: EventMessage, item: str) -> None:
        heard.add(item)

    server.shop.ordered.listen(on_order, listener_name="orders")
    source = node_owning(cluster, "shop:rpc_queue")
    target = next(n for n in cluster.masters_now() if n.port != source.port)
    try:
        async with serving(server):
            load = Load(caller)
            load.start()
            await eventually(lambda: load.answered > 20 and len(heard) > 20)
            for key in ("shop:rpc_queue", "shop.*:stream"):
                await asyncio.to_thread(migrate_slot, cluster, key_slot(key.encode()),
                                        node_owning(cluster, key), target)
            before = load.answered, len(load.fired)
            await eventually(lambda: load.answered > before[0] + 20
                             and len(load.fired) > before[1] + 20, timeout=10)
            await load.stop()
            await eventually(lambda: heard >= set(load.fired), timeout=10)
        assert node_owning(cluster, "shop:rpc_queue").port == target.port
        assert load.failures == []  # redirections are followed, never seen by a caller
    finally:
        await caller.client.close_async()
        await server.client.close_async()


async def test_a_master_failover_is_survived(cluster: RedisClusterSet) -> None:
    server, caller = make(cluster.url, "server"), make(cluster.url, "caller")
    heard: set[str] = set()

    def on_order(event: EventMessage, item: str) -> None:
        heard.add(item)

    server.shop.ordered.listen(on_order, listener_name="orders")
    victim = node_owning(cluster, "shop:rpc_queue")
    try:
        async with serving(server):
            load = Load(caller)
            load.start()
            await eventually(lambda: load.answered > 20 and len(heard) > 20)
            assert victim.process is not None
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait()
            victim.process = None
            killed = time.monotonic()

            def promoted() -> Any:
                owner = node_owning(cluster, "shop:rpc_queue")
                return owner.port != victim.port

            await asyncio.to_thread(wait_for, promoted, "a replica to take over", 20)
            promoted_after = time.monotonic() - killed
            before = load.answered, len(load.fired), len(heard)
            await eventually(lambda: load.answered > before[0] + 20
                             and len(load.fired) > before[1] + 20
                             and len(heard) > before[2] + 20, timeout=15)
            await load.stop()
            after_kill = [item for item in load.fired if int(item[1:]) >= before[1]]
            await eventually(lambda: heard >= set(after_kill), timeout=10)
        print(f"\nreplica promoted {promoted_after:.2f}s after the kill; "
              f"{len(load.failures)} failed calls/fires during the switch")
        assert all(isinstance(f, (bus_core.TransportError, bus_core.RpcTimeout))
                   for f in load.failures), load.failures[:3]
    finally:
        await caller.client.close_async()
        await server.client.close_async()


def test_the_topology_helpers_see_replicas(cluster: RedisClusterSet) -> None:
    roles = []
    for node in cluster.nodes:
        with node.client() as client:
            roles.append(client.info("replication")["role"])
    assert sorted(roles) == ["master"] * 3 + ["slave"] * 3
    with raw_cluster(cluster.url) as raw:
        assert isinstance(raw.client, redis.RedisCluster)


async def test_min_replicas_waits_on_the_nodes_that_took_the_writes(
        cluster: RedisClusterSet) -> None:
    """WAIT has no key: it must reach the node of each stream, after its XADDs. With the
    replica of shop's stream node frozen, shop's fires are not confirmed and auth's are
    (on another node, whose replica is fine)."""
    from bus_redis.event import ReplicationNotConfirmed

    config = redis_config(cluster.url)
    config["apis"]["default"]["event_transport"] = {"redis": {
        "url": cluster.url, "min_replicas": 1, "min_replicas_timeout": 0.5}}
    bus = bus_core.create(config, service_name="replicated")
    bus.client.register_api(ShopApi())
    bus.client.register_api(AuthApi())
    owner = node_owning(cluster, "shop.*:stream")
    assert owner.port != node_owning(cluster, "auth.*:stream").port
    replica = None
    for node in cluster.nodes:
        with node.client() as client:
            info = client.info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == owner.port:
                replica = node
    assert replica is not None and replica.process is not None
    try:
        # Before freezing: the client has learnt the topology (a frozen node among the
        # startup nodes would stall that), and both replicas confirm writes (a replica
        # still finishing its first sync does not, for a moment after the cluster starts).
        for _ in range(100):
            warm = await asyncio.gather(
                bus.shop.ordered.fire_async(item="warm"),
                bus.auth.user_registered.fire_async(username="warm", email="e"),
                return_exceptions=True)
            if all(isinstance(o, EventMessage) for o in warm):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the replicas never confirmed a write: {warm}")
        replica.process.send_signal(signal.SIGSTOP)
        fires = [bus.shop.ordered.fire_async(item=f"i{n}") for n in range(3)]
        fires += [bus.auth.user_registered.fire_async(username=f"u{n}", email="e")
                  for n in range(3)]
        outcomes = await asyncio.gather(*fires, return_exceptions=True)
        assert all(isinstance(o, ReplicationNotConfirmed) for o in outcomes[:3]), outcomes
        assert all(isinstance(o, EventMessage) for o in outcomes[3:]), outcomes
    finally:
        replica.process.send_signal(signal.SIGCONT)
        await bus.client.close_async()
