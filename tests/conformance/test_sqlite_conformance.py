"""The conformance kit against the example third-party transport, examples/sqlite_transport
(one database file per test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bus_sqlite.plugin
import pytest
from bus_sqlite import (
    SqliteEventTransport,
    SqliteResultTransport,
    SqliteRpcTransport,
    SqliteSchemaTransport,
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
    "rpc": SqliteRpcTransport, "result": SqliteResultTransport,
    "event": SqliteEventTransport, "schema": SqliteSchemaTransport,
}


@pytest.fixture
def bus_transport_factory(tmp_path: Path) -> Any:
    path = str(tmp_path / "bus.sqlite3")

    def make(kind: str, **context: Any) -> Transport:
        return CLASSES[kind](path=path, poll_interval=0.02, **context)

    return make


class TestSqliteEvents(EventTransportSuite):
    reclaim_after = 1.0  # a closed consumer gives its deliveries back at once


class TestSqliteRpcs(RpcTransportSuite):
    pass


class TestSqliteResults(ResultTransportSuite):
    pass


class TestSqliteSchemas(SchemaTransportSuite):
    schema_ttl = 0.3


@pytest.fixture
def bus_transport_selection(tmp_path: Path) -> dict[str, Any]:
    choice = {"sqlite": {"path": str(tmp_path / "bus.sqlite3"), "poll_interval": 0.02}}
    return {"rpc": choice, "result": choice, "event": choice, "schema": choice}


class TestSqliteBus(BusSuite):
    plugins = (bus_sqlite.plugin,)  # not installed: registered by hand
