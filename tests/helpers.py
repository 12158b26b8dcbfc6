"""Helpers the worker and memory-bus tests share."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from bus_memory import MemoryEventTransport

from bus_core import Bus
from bus_core.worker import Worker

WAIT = 5.0  # upper bound for what must happen; never reached when it does


@contextlib.asynccontextmanager
async def serving(bus: Bus, **flags: bool) -> AsyncIterator[Worker]:
    """A worker of `bus` on the current loop for the duration of the block."""
    worker = bus.client.worker(**flags)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


async def eventually(predicate: Callable[[], Any], timeout: float = WAIT) -> None:
    """Wait until `predicate()` is true (for outcomes with nothing to await)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


async def event_transport(bus: Bus, api_name: str = "auth") -> MemoryEventTransport:
    """The memory event transport `bus` uses for `api_name` on this loop."""
    state = await bus.client.state()
    transport: MemoryEventTransport = await state.transport("event", api_name)
    return transport
