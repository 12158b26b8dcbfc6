"""The conformance kit against the memory transports (one fresh broker per test)."""

from __future__ import annotations

from typing import Any

import pytest
from bus_memory import (
    MemoryEventTransport,
    MemoryResultTransport,
    MemoryRpcTransport,
    MemorySchemaTransport,
)

from bus_core.conformance import (
    BusSuite,
    EventTransportSuite,
    ResultTransportSuite,
    RpcTransportSuite,
    SchemaTransportSuite,
)
from bus_core.transports import Transport

CLASSES: dict[str, type[Transport]] = {
    "rpc": MemoryRpcTransport, "result": MemoryResultTransport,
    "event": MemoryEventTransport, "schema": MemorySchemaTransport,
}


@pytest.fixture
def bus_transport_factory(broker_name: str) -> Any:
    def make(kind: str, **context: Any) -> Transport:
        return CLASSES[kind](broker=broker_name, **context)

    return make


class TestMemoryEvents(EventTransportSuite):
    quiet = 0.1
    reclaim_after = 0.5  # a closed memory consumer hands its deliveries back at once


class TestMemoryRpcs(RpcTransportSuite):
    quiet = 0.1
    reports_lost_workers = True


class TestMemoryResults(ResultTransportSuite):
    quiet = 0.1


class TestMemorySchemas(SchemaTransportSuite):
    schema_ttl = 0.3


@pytest.fixture
def bus_transport_selection(broker_name: str) -> dict[str, Any]:
    choice = {"memory": {"broker": broker_name}}
    return {"rpc": choice, "result": choice, "event": choice, "schema": choice}


class TestMemoryBus(BusSuite):
    pass
