"""bus-memory: RPC, result, event and schema transports inside one process.

Real semantics, not a mock: calls expire, results are waited for, every listener name gets
every event, consumers sharing a listener name share the load, events are acknowledged after
their handler succeeds, failed and abandoned deliveries are redelivered, and dead letters are
kept. Brokers are named (option `broker`, default "default"); clients in one process that name
the same broker talk to each other, from any thread.
"""

from bus_memory.broker import MemoryBroker, get_broker, reset_brokers
from bus_memory.transports import (
    MemoryEventTransport,
    MemoryResultTransport,
    MemoryRpcTransport,
    MemorySchemaTransport,
)

__all__ = [
    "MemoryBroker",
    "MemoryEventTransport",
    "MemoryResultTransport",
    "MemoryRpcTransport",
    "MemorySchemaTransport",
    "get_broker",
    "reset_brokers",
]
