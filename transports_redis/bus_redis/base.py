"""What the four Redis transports share: options, the shared connection, and batching."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bus_core.transports import Transport
from bus_redis.connection import DEFAULT_URL, SharedClient, acquire, redact, release

OPTIONS_SCHEMA: dict[str, Any] = {
    "url": {"type": "string", "pattern": "^(redis|rediss|unix)://",
            "description": "redis://[user:password@]host:port/db, rediss:// for TLS"},
    "max_connections": {"type": "integer", "minimum": 2},
    "socket_timeout": {"type": ["number", "null"], "exclusiveMinimum": 0},
}


class RedisTransport(Transport):
    """Holds the URL and the per-loop shared client; opens lazily."""

    def __init__(self, *, url: str = DEFAULT_URL, max_connections: int = 64,
                 socket_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.max_connections = max_connections
        self.socket_timeout = socket_timeout
        self._shared: SharedClient | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact(self.url)}>"

    async def open(self) -> None:
        if self._shared is None:
            self._shared = await acquire(self.url, self.max_connections, self.socket_timeout)

    async def close(self) -> None:
        shared, self._shared = self._shared, None
        if shared is not None:
            await release(shared)

    @property
    def shared(self) -> SharedClient:
        if self._shared is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._shared

    @property
    def redis(self) -> Any:
        return self.shared.client


class Batcher:
    """Coalesces writes issued in the same loop turn into one pipeline round trip.

    Each `submit(add)` queues `add(pipeline)` (which queues commands) and waits for the
    pipeline's execution; the first failure fails everyone in that batch."""

    def __init__(self, transport: RedisTransport, transaction: bool = False) -> None:
        self.transport = transport
        self.transaction = transaction
        self._queued: list[tuple[Callable[[Any], int], asyncio.Future[list[Any]]]] = []
        self._flushing: asyncio.Task[None] | None = None

    def submit(self, add: Callable[[Any], int]) -> Awaitable[list[Any]]:
        """`add(pipe)` queues commands and returns how many; await the list of replies."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queued.append((add, future))
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        return future

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)
            while self._queued:
                batch, self._queued = self._queued, []
                pipe = self.transport.redis.pipeline(transaction=self.transaction)
                counts = [add(pipe) for add, _ in batch]
                try:
                    replies = await pipe.execute(raise_on_error=True)
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                start = 0
                for (_, future), count in zip(batch, counts, strict=True):
                    if not future.done():
                        future.set_result(replies[start:start + count])
                    start += count
        finally:
            self._flushing = None
