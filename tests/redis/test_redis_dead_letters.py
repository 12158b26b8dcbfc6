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


async def test_a_malformed_dead_letter_is_listed_not_replayed_and_purged(
        make_redis_bus: Callable[..., Bus], raw: Any) -> None:
    from bus_core import dead_letters as engine
    from bus_core.dead_letters import Selection
    from tests.apis import AuthApi
    from tests.core.dead_letter_scenario import Flaky
    from tests.helpers import eventually, serving

    bus = make_redis_bus()
    bus.client.register_api(AuthApi())
    bus.auth.user_registered.listen(Flaky(), listener_name="welcome")
    async with serving(bus):
        raw.xadd("auth.*:stream", {"id": "2e35fc7f-aede-4305-b211-e46e05e836cf",
                                   "api_name": "auth", "event_name": "user_registered",
                                   "version": "one", ":username": '"x"'})
        await eventually(lambda: raw.xlen("auth.*:stream:dead") == 1)
        (letter,) = await engine.list_dead_letters(bus.client, Selection(api="auth"))
        assert letter.message is None and letter.problem == "version 'one' is not an integer"
        assert letter.reason == "malformed: version 'one' is not an integer"
        (outcome,) = await engine.replay(bus.client, [letter], who="tester")
        assert not outcome.done and "cannot be replayed" in outcome.error
        assert raw.xlen("auth.*:stream:dead") == 1  # nothing lost
        (purged,) = await engine.purge(bus.client, [letter], who="tester")
        assert purged.done and raw.xlen("auth.*:stream:dead") == 0
