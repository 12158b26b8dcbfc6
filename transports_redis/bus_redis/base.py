"""What the four Redis transports share: options, the shared connection, and batching."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from redis.exceptions import NoScriptError

from bus_core.logs import detached
from bus_core.transports import Transport
from bus_redis.connection import (
    DEFAULT_URL,
    SharedClient,
    acquire,
    is_cluster_url,
    redact,
    release,
    slot_of,
)

T = TypeVar("T")
R = TypeVar("R")

OPTIONS_SCHEMA: dict[str, Any] = {
    "url": {"type": "string", "pattern": "^(rediss?(\\+(sentinel|cluster))?|unix)://",
            "description": "redis://[user:password@]host:port/db, rediss:// for TLS, "
                           "redis+sentinel://host:26379,.../master-name/db for Sentinel, "
                           "redis+cluster://host:port,.../ for a Redis Cluster"},
    "max_connections": {"type": "integer", "minimum": 2},
    "socket_timeout": {"type": ["number", "null"], "exclusiveMinimum": 0},
}


class Scripts:
    """Lua scripts by name, run with EVALSHA (loading them with EVAL the first time a
    server has not seen them, e.g. after a restart)."""

    def __init__(self, **sources: str) -> None:
        self.sources = sources
        self.shas = {name: hashlib.sha1(src.encode()).hexdigest()
                     for name, src in sources.items()}

    async def run(self, client: Any, name: str, keys: Sequence[Any], args: Sequence[Any]
                  ) -> Any:
        try:
            return await client.evalsha(self.shas[name], len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.sources[name], len(keys), *keys, *args)


class RedisTransport(Transport):
    """Holds the URL and the per-loop shared client; opens lazily."""

    def __init__(self, *, url: str = DEFAULT_URL, max_connections: int = 64,
                 socket_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.max_connections = max_connections
        self.socket_timeout = socket_timeout
        # On a Redis Cluster every script and multi-key command keeps to one hash slot (the
        # cluster-only key forms of docs/protocol); elsewhere the Lightbus forms, unchanged.
        self.cluster = is_cluster_url(url)
        self._shared: SharedClient | None = None

    scripts = Scripts()

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


def by_slot(keys: Sequence[str]) -> dict[int, list[int]]:
    """Positions of `keys` grouped by cluster hash slot (first-seen order kept)."""
    groups: dict[int, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(slot_of(key), []).append(position)
    return groups


async def settle_each(runs: Sequence[Awaitable[Any]]) -> list[Any]:
    """Await `runs` together; each one's result, or the exception it raised (so one failed
    slot group fails only its own messages)."""
    return list(await asyncio.gather(*runs, return_exceptions=True))


def raise_if_error(value: Any) -> Any:
    """`value`, unless it is an exception (a failed slot group's outcome): then raise it."""
    if isinstance(value, BaseException):
        raise value
    return value


class Batcher(Generic[T, R]):
    """One round trip for many messages, without a task per batch.

    The first submitter while nothing is in flight leads: it lets the rest of the current
    loop turn add their items (one `sleep(0)`), then sends them all with its own in one
    `flush(items)` and hands out the replies. Items submitted while a send is in flight
    queue up and go together next. A failed flush fails everyone in that batch."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[R]]],
                 max_batch: int = 500) -> None:
        self.flush = flush
        self.max_batch = max_batch
        self._queued: list[tuple[T, asyncio.Future[R]]] = []
        self._busy = False

    async def submit(self, item: T) -> R:
        if self._busy:
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._queued.append((item, future))
            return await future
        self._busy = True
        try:
            await asyncio.sleep(0)  # whoever else submits in this loop turn joins the batch
            others = self._queued[:self.max_batch - 1]
            del self._queued[:len(others)]
            try:
                replies = await self.flush([item, *(other for other, _ in others)])
            except BaseException as exc:
                for _, future in others:
                    if not future.done():
                        future.set_exception(exc)
                raise
            for (_, future), reply in zip(others, replies[1:], strict=True):
                if not future.done():
                    future.set_result(reply)
            return replies[0]
        finally:
            if self._queued:  # what queued meanwhile goes next, without holding us up
                asyncio.get_running_loop().create_task(detached(self._drain()))
            else:
                self._busy = False

    async def _drain(self) -> None:
        try:
            while self._queued:
                batch = self._queued[:self.max_batch]
                del self._queued[:self.max_batch]
                try:
                    replies = await self.flush([item for item, _ in batch])
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), reply in zip(batch, replies, strict=True):
                    if not future.done():
                        future.set_result(reply)
        finally:
            self._busy = False
