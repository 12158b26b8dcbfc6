"""Connections: one lazily-connecting pool per (event loop, URL, pool size), shared by every
Redis transport on that loop, with retries and backoff for a Redis that goes away."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import urllib.parse
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bus_core.errors import TransportError, TransportUnavailable

T = TypeVar("T")
DEFAULT_URL = "redis://127.0.0.1:6379/0"

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def redact(url: str) -> str:
    """`url` with its password (in the user part or a `password=` query) replaced by ***:
    what logs and errors may show."""
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
    if "password" in parts.query.lower():
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        parts = parts._replace(query="&".join(
            f"{k}=***" if k.lower() == "password" else f"{k}={v}" for k, v in query))
    return urllib.parse.urlunsplit(parts)


class RetryUnlessRefused(Retry):
    """redis-py's retry of connection errors, except refused credentials: redis-py counts
    those as connection errors too, and retrying them only delays the answer."""

    async def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None,
                              with_failure_count: bool = False) -> Any:
        def retryable(error: Exception) -> bool:
            if isinstance(error, (AuthenticationError, AuthorizationError)):
                return False
            return is_retryable(error) if is_retryable is not None else True

        return await super().call_with_retry(do, fail, retryable, with_failure_count)


# redis-py before 6 has no is_retryable: it keeps retrying refused credentials.
_RETRY = RetryUnlessRefused if "is_retryable" in inspect.signature(
    Retry.call_with_retry).parameters else Retry


class SharedClient:
    """A redis-py client and its pool, counted by the transports using it."""

    def __init__(self, url: str, max_connections: int, socket_timeout: float | None) -> None:
        self.url = url
        self.pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,
            socket_connect_timeout=2,
            socket_timeout=socket_timeout,
            socket_keepalive=True,
            health_check_interval=30,
            retry=_RETRY(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self.client = redis.Redis(connection_pool=self.pool)
        self.users = 0

    async def close(self) -> None:
        await self.client.aclose()
        await self.pool.disconnect()


async def acquire(url: str, max_connections: int = 64,
                  socket_timeout: float | None = None) -> SharedClient:
    loop = asyncio.get_running_loop()
    pools = _pools.setdefault(loop, {})
    key = (url, max_connections, socket_timeout)
    shared = pools.get(key)
    if shared is None:
        shared = pools[key] = SharedClient(url, max_connections, socket_timeout)
    shared.users += 1
    return shared


async def release(shared: SharedClient) -> None:
    shared.users -= 1
    if shared.users > 0:
        return
    loop = asyncio.get_running_loop()
    pools = _pools.get(loop, {})
    for key, value in list(pools.items()):
        if value is shared:
            del pools[key]
    await shared.close()


async def redis_call(url: str, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run `call`, turning redis-py's connection errors into a TransportError that says what
    could not be done and where (password hidden)."""
    try:
        return await call()
    except AuthenticationError as exc:  # a ConnectionError to redis-py, but not "unreachable"
        raise TransportError(f"{what}: Redis at {redact(url)} refused the credentials ({exc}); "
                             "check the user and password in the URL") from None
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise TransportUnavailable(f"{what}: Redis at {redact(url)} is unreachable ({exc})") \
            from None
    except RedisError as exc:
        raise TransportError(f"{what}: Redis at {redact(url)} refused: {exc}") from None


class BlockingClient:
    """A client bound to one connection of the pool for a consumer's blocking reads
    (BLPOP, XREADGROUP BLOCK), made on first use and kept until `close()`."""

    def __init__(self, shared: SharedClient) -> None:
        self.shared = shared
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            # A connection of its own, outside the shared pool: a blocked read never takes a
            # pooled connection away from the commands that need one (max_connections).
            pool = self.shared.pool
            kwargs = dict(pool.connection_kwargs)
            kwargs["socket_timeout"] = None  # a blocked read is not a stalled server
            own = redis.ConnectionPool(connection_class=pool.connection_class,
                                       max_connections=1, **kwargs)
            self._client = redis.Redis(connection_pool=own, single_connection_client=True)
        return self._client

    async def reset(self) -> None:
        """Drop the connection (after an error or a cancelled read left it unusable)."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
                await client.connection_pool.disconnect()

    async def close(self) -> None:
        await self.reset()
