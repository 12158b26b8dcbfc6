"""Redis Cluster connections (`redis+cluster://`): the URL is accepted, a fire, a listener
and an RPC work, and the blocking client serves single-key blocking reads on the owning
node. Every feature, across nodes: test_redis_cluster_features.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bus_redis.connection import BlockingClient, SharedClient

import bus_core
from bus_core import EventMessage
from tests.apis import AuthApi
from tests.helpers import eventually, serving
from tests.redis.conftest import redis_config
from tests.redis.topology import RedisClusterSet

SECRET = "s3cret-pa55"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    nodes = RedisClusterSet(tmp_path_factory.mktemp("cluster")).start()
    yield nodes
    nodes.stop()


async def test_a_fire_and_a_listener_through_a_cluster(cluster: RedisClusterSet) -> None:
    bus = bus_core.create(redis_config(cluster.url), service_name="clustered")
    heard: list[str] = []

    def welcome(event: EventMessage, username: str, email: str) -> None:
        heard.append(username)

    bus.client.register_api(AuthApi())
    bus.auth.user_registered.listen(welcome, listener_name="welcome")
    try:
        fired = await bus.auth.user_registered.fire_async(username="before", email="a@b")
        assert fired.native_id
        async with serving(bus):
            await bus.auth.user_registered.fire_async(username="ada", email="a@b")
            await eventually(lambda: heard == ["ada"])
            # The cluster key forms keep the enqueue and claim scripts within one slot.
            assert await bus.auth.check_password.call_async(username="admin",
                                                            password="secret")
    finally:
        await bus.client.close_async()


async def test_the_blocking_client_reads_single_keys_on_their_node(
        cluster: RedisClusterSet) -> None:
    shared = SharedClient(cluster.url, 4, None)
    blocking, popper = BlockingClient(shared), BlockingClient(shared)
    try:
        await shared.client.delete("jobs", "events")
        await shared.client.xgroup_create("events", "g", id="$", mkstream=True)
        read = asyncio.create_task(blocking.client.xreadgroup("g", "c", {"events": ">"},
                                                               count=10, block=5000))
        popped = asyncio.create_task(popper.client.blmpop(5, 1, "jobs", direction="LEFT",
                                                          count=10))
        await asyncio.sleep(0.05)  # likely blocked on their nodes by now (either way they
        # get what follows: the group reads after "$", the pop takes what is there)
        await shared.client.xadd("events", {"x": "1"})
        await shared.client.rpush("jobs", "a", "b")
        ((stream, entries),) = await asyncio.wait_for(read, 5)
        assert stream == b"events" and entries[0][1] == {b"x": b"1"}
        assert await asyncio.wait_for(popped, 5) == [b"jobs", [b"a", b"b"]]
        node = await shared.node_client_for_key("jobs")
        try:
            await node.rpush("jobs", "c")
            assert await node.blmpop(1, 1, "jobs", direction="LEFT", count=5) == \
                [b"jobs", [b"c"]]
        finally:
            await node.aclose()
    finally:
        await blocking.close()
        await popper.close()
        await shared.close()


def config_check(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bus.yaml"
    path.write_text(f"apis:\n  default:\n    event_transport: {{redis: {{url: '{url}'}}}}\n")
    return subprocess.run([sys.executable, "-m", "bus_core.cli", "config", "check", str(path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("url", [
    "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/",
    f"rediss+cluster://app:{SECRET}@10.0.0.1:7000,10.0.0.2/?ssl_cert_reqs=none",
    f"redis+sentinel://:{SECRET}@10.0.0.1:26379,10.0.0.2/mymaster/2"
    f"?sentinel_password={SECRET}",
    "rediss+sentinel://[::1]:26379/mymaster",
])
def test_bus_config_check_accepts_sentinel_and_cluster_urls(tmp_path: Path, url: str) -> None:
    checked = config_check(tmp_path, url)
    assert checked.returncode == 0 and "valid" in checked.stdout, checked.stderr
    assert SECRET not in checked.stdout + checked.stderr


@pytest.mark.parametrize("url,expected", [
    ("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/", "no master name"),
    ("redis+sentinel://10.0.0.1:26379,,10.0.0.2/m", "entry 2 is empty"),
    ("redis+sentinel://10.0.0.1:26379,10.0.0.2:263799/m", "host 2 of the list: port 263799"),
    ("redis+sentinel://h1/m/16", "database 16 is out of range"),
    ("redis+sentinel://h1/m/x", "database 'x' (after the master name)"),
    ("redis+sentinel://h1/m/0?sentinel_colour=red", "unknown option 'sentinel_colour'"),
    ("redis+cluster://h1:7000/1", "a cluster has database 0 only"),
    ("redis+cluster://h1:7000/?db=1", "unknown option 'db' for redis+cluster://"),
    ("redis+cluster://h1:x/", "port 'x' is not a number"),
    ("redis+sentinel://h1:7000/m?ssl_cert_reqs=none", "unknown option 'ssl_cert_reqs'"),
])
def test_bus_config_check_explains_bad_sentinel_and_cluster_urls(tmp_path: Path, url: str,
                                                                  expected: Any) -> None:
    secret_url = url.replace("://", f"://app:{SECRET}@", 1)
    checked = config_check(tmp_path, secret_url)
    assert checked.returncode == 1
    assert expected in checked.stderr, checked.stderr
    assert SECRET not in checked.stdout + checked.stderr
