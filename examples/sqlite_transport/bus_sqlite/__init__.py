"""bus-sqlite: an example Bus transport keeping RPCs, results, events and schemas in one
SQLite file, so that processes on one machine share a bus without a server.

It is written to show the four transport contracts of `bus_core.transports`, and it passes
the conformance kit (`bus_core.conformance`). Waiting is done by polling the file every
`poll_interval` seconds: SQLite tells nobody when a row arrives.
"""

from bus_sqlite.transports import (
    SqliteEventTransport,
    SqliteResultTransport,
    SqliteRpcTransport,
    SqliteSchemaTransport,
)

__all__ = [
    "SqliteEventTransport",
    "SqliteResultTransport",
    "SqliteRpcTransport",
    "SqliteSchemaTransport",
]
