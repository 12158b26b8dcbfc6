"""Dead letters on Redis: listed from `<stream>:dead`, replayed to the failing listener's
group only (once), purged; on per-API and per-event streams."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import bus_core
from bus_core import Bus
from tests.core.dead_letter_scenario import run_scenario
from tests.redis.conftest import redis_config
from tests.redis.topology import RedisClusterSet


@pytest.mark.parametrize("stream_use", ["per_api", "per_event"])
async def test_dead_letters_are_listed_replayed_once_to_their_group_and_purged(
        make_redis_bus: Callable[..., Bus], redis_url: str, raw: Any, stream_use: str) -> None:
    config = redis_config(redis_url, max_deliveries=1)
    config["apis"]["default"]["event_transport"] = {
        "redis": {"url": redis_url, "stream_use": stream_use}}
    await run_scenario(make_redis_bus(config=config))
    stream = "auth.*:stream" if stream_use == "per_api" else "auth.user_registered:stream"
    assert raw.xlen(stream + ":dead") == 0
    # The replay is an ordinary Lightbus-shaped entry: no bus_dead_* field, and the
    # replay marks in the empty-named headers field a Lightbus consumer skips.
    replays = [fields for _, fields in raw.xrange(stream) if b"" in fields]
    (replay,) = replays
    assert not any(name.startswith(b"bus_dead") for name in replay)
    headers = json.loads(replay[b""])
    assert headers["bus-replay-group"] == "svc-welcome"
    assert json.loads(replay[b":username"]) == "ada"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    started = RedisClusterSet(tmp_path_factory.mktemp("cluster")).start()
    yield started
    started.stop()


@pytest.mark.slow
@pytest.mark.parametrize("stream_use", ["per_api", "per_event"])
async def test_dead_letters_on_a_cluster(cluster: RedisClusterSet, stream_use: str) -> None:
    """The dead-letter stream hashes apart from its stream: the replay is XDEL then XADD,
    still delivered once; per-event dead-letter streams are found on every node."""
    for node in cluster.nodes:
        with node.client() as client:
            if client.info("replication")["role"] == "master":
                client.flushall()
    config = redis_config(cluster.url, max_deliveries=1)
    config["apis"]["default"]["event_transport"] = {
        "redis": {"url": cluster.url, "stream_use": stream_use}}
    bus = bus_core.create(config, service_name="svc")
    try:
        await run_scenario(bus)
    finally:
        await bus.client.close_async()
