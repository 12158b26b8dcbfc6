"""Helpers the worker and memory-bus tests share."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from bus_memory import MemoryEventTransport

from bus_core import Bus, EventMessage, hookimpl
from bus_core.default_plugins.json_serializer import JsonSerializer
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


def wait_until(check: Callable[[], Any], what: str, timeout: float = WAIT,
               interval: float = 0.01) -> Any:
    """Poll `check()` from sync code until it returns something truthy (for state in another
    process or in Redis); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}; last value: {value!r}")
        time.sleep(interval)


class EventRecorder:
    """An async event handler that records events and lets a test wait for a count."""

    def __init__(self) -> None:
        self.seen: list[EventMessage] = []
        self._changed = asyncio.Event()

    async def __call__(self, event: EventMessage, **kwargs: Any) -> None:
        self.seen.append(event)
        self._changed.set()

    async def wait_for(self, count: int) -> list[EventMessage]:
        async def wait() -> None:
            while len(self.seen) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), WAIT)
        return self.seen


def count_single_task_runs(buses: list[Bus], seconds: float = 0.01) -> list[str]:
    """Give each bus the same `every(single=True)` task; return the list its runs append
    the running process's name to (for checking that only one process runs it)."""
    runs: list[str] = []
    for bus in buses:
        @bus.client.every(seconds=seconds, single=True)
        async def tick(name: str = bus.client.process_name) -> None:
            runs.append(name)
    return runs


async def wait_for_runs(runs: list[str], count: int) -> None:
    await eventually(lambda: len(runs) >= count)


class ExplodingSerializer(JsonSerializer):
    """JSON, except that it raises KeyError (not a TypeError/ValueError, not a BusError) on
    anything holding the word `explode`: a third-party serializer's own failure mode."""

    name = "exploding-json"

    def loads(self, data: bytes | str) -> Any:
        if (b"explode" if isinstance(data, bytes) else "explode") in data:
            raise KeyError("explode")
        return super().loads(data)


class ExplodingPlugin:
    """Registers ExplodingSerializer as the serializer `exploding-json`."""

    @hookimpl
    def bus_register_serializers(self, register: Any) -> None:
        register("exploding-json", ExplodingSerializer)


@contextlib.contextmanager
def recording_http_server(body: bytes = b'{"type": "string"}',
                          content_type: str = "application/json"
                          ) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server answering every GET with `body`: (its base URL, the paths
    requested so far). For tests that something is never fetched."""
    import http.server
    import threading

    requested: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()
