"""The conformance kit against the Redis transports, on the suite's own redis-server (the
fixtures of tests/redis/conftest.py: a server started on a free port, flushed per test)."""

from __future__ import annotations

from typing import Any

import pytest
from bus_redis import (
    RedisEventTransport,
    RedisResultTransport,
    RedisRpcTransport,
    RedisSchemaTransport,
)

from bus_core.conformance import (
    BusSuite,
    EventTransportSuite,
    ResultTransportSuite,
    RpcTransportSuite,
    SchemaTransportSuite,
)
from bus_core.transports import Transport
from tests.redis.conftest import redis_server, redis_url  # noqa: F401  (fixtures)

CLAIM_IDLE = 0.5  # a closed consumer's deliveries move on after this long

CLASSES: dict[str, type[Transport]] = {
    "rpc": RedisRpcTransport, "result": RedisResultTransport,
    "event": RedisEventTransport, "schema": RedisSchemaTransport,
}
OPTIONS: dict[str, dict[str, Any]] = {
    "event": {"claim_idle": CLAIM_IDLE, "reclaim_interval": 0.1},
}


@pytest.fixture
def bus_transport_factory(redis_url: str) -> Any:  # noqa: F811
    def make(kind: str, **context: Any) -> Transport:
        return CLASSES[kind](url=redis_url, **OPTIONS.get(kind, {}), **context)

    return make


class TestRedisEvents(EventTransportSuite):
    reclaim_after = CLAIM_IDLE * 2


class TestRedisRpcs(RpcTransportSuite):
    reports_lost_workers = True


class TestRedisResults(ResultTransportSuite):
    pass


class TestRedisSchemas(SchemaTransportSuite):
    schema_ttl = 1.0  # Redis expires whole seconds


@pytest.fixture
def bus_transport_selection(redis_url: str) -> dict[str, Any]:  # noqa: F811
    choice = {"redis": {"url": redis_url}}
    return {"rpc": choice, "result": choice, "schema": choice,
            "event": {"redis": {"url": redis_url, **OPTIONS["event"]}}}


class TestRedisBus(BusSuite):
    pass
