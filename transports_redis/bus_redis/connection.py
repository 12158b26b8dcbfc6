"""Connections: one lazily-connecting pool per (event loop, URL, pool size), shared by every
Redis transport on that loop, with retries and backoff for a Redis that goes away."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import os
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

from bus_core.errors import ConfigError, TransportError, TransportUnavailable
from bus_core.redaction import redact_url as redact

T = TypeVar("T")
DEFAULT_URL = "redis://127.0.0.1:6379/0"

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


# -- URLs ---------------------------------------------------------------------------------
#
# Checked when the config is loaded (`bus config check`, create()) and again when a pool is
# made, so a URL redis-py would misread (`/abc` silently meaning db 0) or refuse only at the
# first command (TypeError, ValueError) is a clear error naming the setting instead.

DATABASES_ENV = "BUS_REDIS_DATABASES"  # how many databases the servers have (default 16)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _seconds(text: str) -> str | None:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        return f"{text!r} is not a positive number of seconds"
    return None


def _whole_seconds(text: str) -> str | None:
    if not text.isdigit():
        return f"{text!r} is not a whole number of seconds"
    return None


def _boolean(text: str) -> str | None:
    if text.lower() not in _TRUE + _FALSE:
        return f"{text!r} is not true or false"
    return None


def _database(text: str) -> str | None:
    limit = os.environ.get(DATABASES_ENV, "")
    databases = int(limit) if limit.isdigit() and int(limit) > 0 else 16
    if not text.isdigit():
        return f"{text!r} is not a database number (0 to {databases - 1})"
    if int(text) >= databases:
        return (f"database {int(text)} is out of range 0-{databases - 1} (redis-server has 16 "
                f"unless its `databases` setting says more; then set {DATABASES_ENV})")
    return None


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        return None if text in choices else f"{text!r} is not one of {', '.join(choices)}"
    return check


def _anything(text: str) -> str | None:
    return None


# Query options by scheme: what redis-py takes from a URL and Bus lets through, with checks.
_OPTIONS: dict[str, Callable[[str], str | None]] = {
    "db": _database, "username": _anything, "password": _anything, "client_name": _anything,
    "socket_timeout": _seconds, "socket_connect_timeout": _seconds,
    "health_check_interval": _whole_seconds,
}
_TCP_OPTIONS = {"socket_keepalive": _boolean}
_TLS_OPTIONS = {
    "ssl_cert_reqs": _one_of("none", "optional", "required"),
    "ssl_check_hostname": _boolean,
    "ssl_ca_certs": _anything, "ssl_certfile": _anything, "ssl_keyfile": _anything,
}
URL_OPTIONS = {
    "redis": {**_OPTIONS, **_TCP_OPTIONS},
    "rediss": {**_OPTIONS, **_TCP_OPTIONS, **_TLS_OPTIONS},
    "unix": dict(_OPTIONS),
}


def url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL (None when nothing): the scheme, a malformed or
    missing host, a port outside 1-65535, a path that is not a database number, an unknown
    or malformed query option. The answer never quotes the password."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in URL_OPTIONS:
        return "use redis://, rediss:// (TLS) or unix:// (a socket file)"
    if "#" in rest:
        return "a Redis URL has no #fragment"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "malformed host: '[' without its ']' (IPv6 addresses are written [::1])"
    host = parts.netloc.rsplit("@", 1)[-1]
    if scheme == "unix":
        if host:
            return "write unix:///path/to/redis.sock (three slashes: no host)"
        if not parts.path.startswith("/") or parts.path.endswith("/"):
            return "name the socket file by its absolute path: unix:///path/to/redis.sock"
        database = None
    else:
        problem = _host_problem(host)
        if problem:
            return problem
        database = parts.path[1:] if parts.path not in ("", "/") else None
        if database is not None and not database.isdigit():
            return f"the path /{database} is not a database number (write /0 for database 0)"
    options = URL_OPTIONS[scheme]
    seen: set[str] = set()
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if name not in options:
            return (f"unknown option {name!r} for {scheme}:// (known: "
                    f"{', '.join(sorted(options))})")
        problem = options[name](value)
        if problem:
            return f"option {name}: {problem}"
        if name in seen or (name == "db" and database is not None):
            return f"option {name!r} is given twice (or as both the path and ?db=)"
        seen.add(name)
    if database is not None:
        problem = _database(database)
        if problem:
            return problem
    return None


def _host_problem(host: str) -> str | None:
    if host.startswith("["):
        name, _, port = host[1:].partition("]")
        if port and not port.startswith(":"):
            return f"malformed host [{name}]{port}"
        port = port[1:]
    else:
        if "[" in host or "]" in host:
            return "malformed host: brackets go around an IPv6 address only ([::1])"
        name, _, port = host.partition(":")
    if not name:
        return "no host: write redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0"
    if port or host.endswith(":"):
        if not port.isdigit():
            return f"port {port!r} is not a number"
        if not 1 <= int(port) <= 65535:
            return f"port {int(port)} is out of range 1-65535"
    return None


def check_url(url: str) -> None:
    """Raise ConfigError when `url` is not a usable Redis URL (password masked)."""
    problem = url_problem(url)
    if problem:
        raise ConfigError(f"Redis URL {redact(url)}: {problem}")


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
        check_url(url)
        self.url = url
        options: dict[str, Any] = {}
        if not url.lower().startswith("unix://"):
            # TCP only: redis-py's unix socket connection refuses it (a TypeError per command).
            options["socket_keepalive"] = True
        self.pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,
            socket_connect_timeout=2,
            socket_timeout=socket_timeout,
            health_check_interval=30,
            retry=_RETRY(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            **options,
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
