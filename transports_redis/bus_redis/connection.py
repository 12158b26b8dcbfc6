"""Connections: one lazily-connecting pool per (event loop, URL, pool size), shared by every
Redis transport on that loop, with retries and backoff for a Redis that goes away.

Three kinds of URL: one server (`redis://`, `rediss://`, `unix://`), the master of a Sentinel
set (`redis+sentinel://`, followed through failovers by redis-py's own Sentinel pool), and a
Redis Cluster (`redis+cluster://`, redis-py's RedisCluster)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import urllib.parse
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterError,
    NoPermissionError,
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bus_core.errors import TransportError, TransportUnavailable
from bus_core.redaction import redact_url as redact
from bus_redis.urls import (
    _TRUE,
    CLUSTER_PORT,
    SENTINEL_PORT,
    _split_multi_node,
    check_url,
)

# Re-exported: the URL rules live in bus_redis.urls, free of redis-py.
from bus_redis.urls import DEFAULT_URL as DEFAULT_URL
from bus_redis.urls import URL_OPTIONS as URL_OPTIONS
from bus_redis.urls import hash_tagged as hash_tagged
from bus_redis.urls import is_cluster_url as is_cluster_url
from bus_redis.urls import url_problem as url_problem

T = TypeVar("T")
# Cluster: seconds a command split by a slot migration is retried before it fails.
SLOT_MIGRATION_PATIENCE = 5.0

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def slot_of(key: str | bytes) -> int:
    """The cluster hash slot of `key` (its `{tag}` when it has one)."""
    return key_slot(key.encode() if isinstance(key, str) else key)


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


# -- Sentinel and Cluster URLs, parsed -------------------------------------------------------

_FLOAT_OPTIONS = ("socket_timeout", "socket_connect_timeout")
_BOOL_OPTIONS = ("socket_keepalive", "ssl_check_hostname")


@dataclass(frozen=True)
class MultiNodeUrl:
    """What a `redis+sentinel://` or `redis+cluster://` URL says (a valid one)."""

    mode: str  # "sentinel" or "cluster"
    tls: bool
    nodes: tuple[tuple[str, int], ...]
    master_name: str | None
    db: int
    options: dict[str, Any]  # redis-py keyword arguments for the data nodes
    sentinel_options: dict[str, Any]  # for the sentinels' own connections

    @classmethod
    def parse(cls, url: str) -> MultiNodeUrl:
        check_url(url)
        scheme, _, rest = url.partition("://")
        scheme = scheme.lower()
        mode = scheme.partition("+")[2]
        userinfo, hosts, path, query = _split_multi_node(rest)
        default_port = SENTINEL_PORT if mode == "sentinel" else CLUSTER_PORT
        nodes = tuple(_host_and_port(host, default_port) for host in hosts.split(","))
        options: dict[str, Any] = {}
        if userinfo:
            user, colon, password = userinfo.partition(":")
            if user:
                options["username"] = urllib.parse.unquote(user)
            if colon:
                options["password"] = urllib.parse.unquote(password)
        sentinel_options: dict[str, Any] = {}
        for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            typed: Any = value
            if name in _FLOAT_OPTIONS:
                typed = float(value)
            elif name == "health_check_interval":
                typed = int(value)
            elif name in _BOOL_OPTIONS:
                typed = value.lower() in _TRUE
            if name.startswith("sentinel_"):
                sentinel_options[name[len("sentinel_"):]] = typed
            else:
                options[name] = typed
        master_name, _, database = path.partition("/")
        db = int(options.pop("db", None) or database or 0)
        if scheme.startswith("rediss"):
            options["ssl"] = True
        return cls(mode=mode, tls=scheme.startswith("rediss"), nodes=nodes,
                   master_name=urllib.parse.unquote(master_name) if mode == "sentinel"
                   else None, db=db, options=options, sentinel_options=sentinel_options)


def _host_and_port(host: str, default_port: int) -> tuple[str, int]:
    if host.startswith("["):
        name, _, port = host[1:].partition("]")
        port = port[1:]
    else:
        name, _, port = host.partition(":")
    return name, int(port) if port else default_port


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's pool behind Sentinel that waits for a free connection when all
    `max_connections` are busy (as the single-server pool does) instead of failing."""


_holding_permit: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "bus_redis_cluster_permit", default=False)


class WaitingCluster(RedisCluster):
    """redis-py's RedisCluster, but a command (or pipeline) finding `max_connections` of
    them in flight waits for one to end instead of failing with MaxConnectionsError, as
    the single-server and Sentinel pools do. At most `max_connections` commands run at
    once, so no node is ever asked for more connections than that."""

    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, max_connections=max_connections, **kwargs)
        self._permits = asyncio.Semaphore(max_connections)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if _holding_permit.get():  # a command run by one that already holds a permit
            return await super().execute_command(*args, **kwargs)
        delay, deadline = 0.02, None
        while True:
            try:
                async with self._permits:
                    token = _holding_permit.set(True)
                    try:
                        return await super().execute_command(*args, **kwargs)
                    finally:
                        _holding_permit.reset(token)
            except (TryAgainError, ClusterError) as exc:
                # The command's slot is being migrated: its keys are split between two
                # nodes (TRYAGAIN), or the redirections ran out (redis-py sends ASKING
                # and the redirected command on two pooled connections, so the importing
                # node may answer MOVED back). Neither ran the command; once the slot's
                # move ends, MOVED leads to its new node. Try again until then.
                if isinstance(exc, ClusterError) and "TTL exhausted" not in str(exc):
                    raise
                now = asyncio.get_running_loop().time()
                deadline = deadline or now + SLOT_MIGRATION_PATIENCE
                if now >= deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute
        permits = self._permits

        async def waiting_execute(*args: Any, **kwargs: Any) -> Any:
            if _holding_permit.get():
                return await execute(*args, **kwargs)
            async with permits:
                token = _holding_permit.set(True)
                try:
                    return await execute(*args, **kwargs)
                finally:
                    _holding_permit.reset(token)

        pipe.execute = waiting_execute
        return pipe


class SharedClient:
    """A redis-py client and its pool, counted by the transports using it.

    `mode` is "server" (one Redis), "sentinel" (the master a Sentinel set names, followed
    through failovers by redis-py's Sentinel pool) or "cluster" (redis-py's RedisCluster)."""

    def __init__(self, url: str, max_connections: int, socket_timeout: float | None) -> None:
        check_url(url)
        self.url = url
        self.max_connections = max_connections
        scheme = url.partition("://")[0].lower()
        self.mode = scheme.partition("+")[2] or "server"
        self.sentinel: Sentinel | None = None
        self.pool: redis.ConnectionPool | None = None
        self.target: MultiNodeUrl | None = None
        defaults: dict[str, Any] = {
            "socket_connect_timeout": 2,
            "socket_timeout": socket_timeout,
            "health_check_interval": 30,
            "retry": _RETRY(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        }
        if scheme != "unix":
            # TCP only: redis-py's unix socket connection refuses it (a TypeError per command).
            defaults["socket_keepalive"] = True
        self.client: Any
        if self.mode == "server":
            self.pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=None, **defaults)
            self.client = redis.Redis(connection_pool=self.pool)
        elif self.mode == "sentinel":
            self.target = MultiNodeUrl.parse(url)
            self.connection_kwargs = {**defaults, "db": self.target.db,
                                      **self.target.options}
            self.sentinel = Sentinel(list(self.target.nodes),
                                     sentinel_kwargs=self._sentinel_kwargs(),
                                     **self.connection_kwargs)
            assert self.target.master_name is not None
            self.client = self.sentinel.master_for(
                self.target.master_name, connection_pool_class=_BlockingSentinelPool,
                max_connections=max_connections, timeout=None)
            self.pool = self.client.connection_pool
        else:
            self.target = MultiNodeUrl.parse(url)
            defaults.pop("retry_on_error")  # the cluster client retries by its own rules
            self.connection_kwargs = {**defaults, **self.target.options}
            self.client = self._cluster(max_connections, waiting=True,
                                        **self.connection_kwargs)
        self.users = 0

    def _sentinel_kwargs(self) -> dict[str, Any]:
        """How to reach the sentinels: their own credentials (`sentinel_username`,
        `sentinel_password`), the URL's timeouts and TLS settings, and a finite socket
        timeout, so a sentinel that stops answering cannot hold up master discovery."""
        assert self.target is not None
        data = self.target.options
        kwargs = {name: value for name, value in data.items()
                  if name.startswith(("socket_", "ssl"))}
        kwargs.setdefault("socket_connect_timeout", 2)
        kwargs.setdefault("socket_timeout", 2)
        kwargs.update(self.target.sentinel_options)
        return kwargs

    def _cluster(self, max_connections: int, waiting: bool = False, **kwargs: Any
                 ) -> RedisCluster:
        assert self.target is not None
        kind = WaitingCluster if waiting else RedisCluster
        return kind(startup_nodes=[ClusterNode(host, port)
                                           for host, port in self.target.nodes],
                            max_connections=max_connections, **kwargs)

    def blocking_client(self) -> Any:
        """A client with a connection of its own, outside the shared pool, for blocking
        reads (BLMPOP, XREADGROUP BLOCK), with no socket timeout (a long wait is not a
        stalled server). On Sentinel it asks the sentinels for the master whenever it
        connects, so after a failover it follows the new master; on a cluster it is a
        cluster client of its own whose commands go to the node owning their key."""
        if self.mode == "server":
            assert self.pool is not None
            kwargs = dict(self.pool.connection_kwargs)
            kwargs["socket_timeout"] = None
            own = redis.ConnectionPool(connection_class=self.pool.connection_class,
                                       max_connections=1, **kwargs)
            return redis.Redis(connection_pool=own, single_connection_client=True)
        if self.mode == "sentinel":
            assert self.sentinel is not None and self.target is not None
            assert self.target.master_name is not None
            pool = SentinelConnectionPool(self.target.master_name, self.sentinel,
                                          **{**self.connection_kwargs, "socket_timeout": None,
                                             "max_connections": 1})
            return redis.Redis(connection_pool=pool, single_connection_client=True)
        # One connection per node is enough for one reader's sequential commands; a
        # second one covers a topology refresh while the read waits.
        return self._cluster(2, **{**self.connection_kwargs, "socket_timeout": None})

    async def node_for_key(self, key: str) -> ClusterNode:
        """Cluster only: the master that owns `key`'s slot now (as this client knows it),
        e.g. to send WAIT to the node that took a write."""
        cluster: RedisCluster = self.client
        if not cluster.get_nodes():
            await cluster.initialize()
        return cluster.get_node_from_key(key)

    async def node_client_for_key(self, key: str) -> redis.Redis:
        """Cluster only: a plain client with one connection of its own to the master that
        owns `key`'s slot now, for a blocking read of several keys of one slot on one
        node. It does not follow MOVED: after a resharding or failover, drop it and ask
        again (the cluster client learns the new owner from its own errors)."""
        if self.mode != "cluster":
            raise TypeError("node_client_for_key is for redis+cluster:// URLs")
        cluster: RedisCluster = self.client
        if not cluster.get_nodes():
            await cluster.initialize()
        node = cluster.get_node_from_key(key)
        kwargs = {**self.connection_kwargs, "socket_timeout": None}
        kwargs.pop("health_check_interval", None)
        return redis.Redis(host=node.host, port=node.port, single_connection_client=True,
                           **kwargs)

    async def close(self) -> None:
        await self.client.aclose()
        if self.pool is not None:
            await self.pool.disconnect()
        if self.sentinel is not None:
            await self.sentinel.aclose()
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
    except (RedisConnectionError, RedisTimeoutError, RedisClusterUnreachableError,
            OSError) as exc:
        raise TransportUnavailable(f"{what}: Redis at {redact(url)} is unreachable ({exc})") \
            from None
    except (RedisError, RedisClusterException) as exc:  # the latter: cross-slot keys, etc.
        raise TransportError(f"{what}: Redis at {redact(url)} refused: {exc}") from None


class BlockingClient:
    """A client bound to one connection of the pool for a consumer's blocking reads
    (BLPOP, XREADGROUP BLOCK), made on first use and kept until `close()`."""

    def __init__(self, shared: SharedClient) -> None:
        self.shared = shared
        self._client: redis.Redis | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            # A connection of its own, outside the shared pool: a blocked read never takes a
            # pooled connection away from the commands that need one (max_connections).
            self._client = self.shared.blocking_client()
        return self._client

    async def reset(self) -> None:
        """Drop the connection (after an error or a cancelled read left it unusable, or a
        failover moved the master: the next one asks the sentinels again)."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
                pool = getattr(client, "connection_pool", None)  # a cluster client has none
                if pool is not None:
                    await pool.disconnect()

    async def close(self) -> None:
        await self.reset()


# -- what `bus config check --connect` asks of a server ---------------------------------------

OLDEST_VERSION = (6, 2)  # XAUTOCLAIM, LPOP with a count
BLMPOP_VERSION = (7, 0)  # BLMPOP (older servers: BLPOP then LPOP), ACL DRYRUN, selectors
CHECK_WAIT = 3.0  # seconds one sentinel or node may take to answer the check


@dataclass
class ServerFacts:
    """What a check learnt of the server behind a URL: problems (the transport cannot work),
    notes (information), and what the permission probes need."""

    problems: list[str]
    notes: list[str]
    version: tuple[int, ...] | None = None
    user: str = "default"


def _version(text: Any) -> tuple[int, ...] | None:
    text = text.decode() if isinstance(text, bytes) else str(text)
    parts = text.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def _field(reply: Any, name: str) -> Any:
    """A field of a HELLO reply (a map with RESP3, a flat list with RESP2)."""
    if isinstance(reply, list):
        reply = dict(zip(reply[::2], reply[1::2], strict=False))
    if not isinstance(reply, dict):
        return None
    value = reply.get(name, reply.get(name.encode()))
    return value.decode() if isinstance(value, bytes) else value


def _where(client: Any) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


async def _sentinels_problem(shared: SharedClient, facts: ServerFacts) -> bool:
    """Ask each sentinel where the master is; a problem when none knows it."""
    assert shared.sentinel is not None and shared.target is not None
    name = shared.target.master_name
    answers: list[str] = []
    known: set[str] = set()
    for sentinel in shared.sentinel.sentinels:
        where = _where(sentinel)
        try:
            address = await asyncio.wait_for(sentinel.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", name), CHECK_WAIT)
        except AuthenticationError:
            answers.append(f"sentinel {where} refused the credentials (sentinel_username, "
                           "sentinel_password)")
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            answers.append(f"sentinel {where} is unreachable ({type(exc).__name__})")
        else:
            if address:
                host, port = (p.decode() if isinstance(p, bytes) else str(p) for p in address)
                known.add(f"{host}:{port}")
            else:
                answers.append(f"sentinel {where} does not know master {name!r}")
    if not known:
        facts.problems.append(f"no sentinel knows master {name!r}: " + "; ".join(answers))
        return True
    where = ", ".join(sorted(known))
    facts.notes.append(f"{len(shared.sentinel.sentinels) - len(answers)} of "
                       f"{len(shared.sentinel.sentinels)} sentinels know master {name!r} "
                       f"at {where}" + (f" ({'; '.join(answers)})" if answers else ""))
    if len(known) > 1:
        facts.notes.append(f"the sentinels disagree on where master {name!r} is (a "
                           "failover in progress?)")
    return False


async def node_clients(shared: SharedClient) -> list[tuple[str | None, Any]]:
    """Clients to ask each master something of its own (ACL rules and cluster state are
    per node on a cluster): (the node, a client of its own, to close) per cluster master,
    or (None, the shared client) for one server or Sentinel's master."""
    if shared.mode != "cluster":
        return [(None, shared.client)]
    cluster: RedisCluster = shared.client
    if not cluster.get_nodes():
        await cluster.initialize()
    kwargs = {**shared.connection_kwargs, "socket_timeout": CHECK_WAIT}
    kwargs.pop("health_check_interval", None)
    return [(f"{node.host}:{node.port}", redis.Redis(host=node.host, port=node.port,
                                                    single_connection_client=True, **kwargs))
            for node in cluster.get_primaries()]


async def _cluster_problems(shared: SharedClient, facts: ServerFacts) -> None:
    """Every master of the cluster says `cluster_state:ok` (when the user may ask)."""
    clients = await node_clients(shared)
    try:
        for where, client in clients:
            try:
                info = await client.execute_command("CLUSTER INFO")
            except NoPermissionError:
                facts.notes.append("the cluster's state was not checked: the user may not "
                                   "run CLUSTER INFO")
                return
            except (RedisError, OSError) as exc:
                facts.problems.append(f"cluster node {where} is unreachable ({exc})")
                continue
            state = info.get("cluster_state") if isinstance(info, dict) else None
            if state != "ok":
                facts.problems.append(f"cluster node {where} reports cluster_state:{state}")
        if not facts.problems:
            facts.notes.append(f"cluster state ok on all {len(clients)} masters")
    finally:
        for _, client in clients:
            await client.aclose()


async def server_facts(shared: SharedClient) -> ServerFacts:
    """Reachability, credentials, version, role and topology of the server(s) behind a
    URL, with no key touched. Problems name no secret."""
    facts = ServerFacts(problems=[], notes=[])
    url = shared.url
    if shared.mode == "sentinel" and await _sentinels_problem(shared, facts):
        return facts
    try:
        hello = await redis_call(url, "cannot connect", lambda: shared.client.execute_command(
            "HELLO"))
    except TransportError as exc:
        facts.problems.append(str(exc))
        return facts
    facts.version = _version(_field(hello, "version") or "")
    mode, role = _field(hello, "mode"), _field(hello, "role")
    shown = ".".join(map(str, facts.version or ())) or "of unknown version"
    if facts.version is not None and facts.version < OLDEST_VERSION:
        facts.problems.append(f"Redis {shown} is older than 6.2, which Bus needs (XAUTOCLAIM, "
                              "LPOP with a count)")
    elif facts.version is not None and facts.version < BLMPOP_VERSION:
        facts.notes.append(f"Redis {shown} has no BLMPOP: RPC workers and result readers pop "
                           "with BLPOP then LPOP (one more round trip per batch)")
    if mode == "cluster" and shared.mode != "cluster":
        facts.problems.append(f"Redis at {redact(url)} is a cluster node: use "
                              "redis+cluster://HOST:PORT,.../")
    if role in ("replica", "slave") and shared.mode == "server":
        facts.problems.append(f"Redis at {redact(url)} is a replica (read-only): point the "
                              "URL at the master, or use redis+sentinel://")
    # The URL's user (HELLO authenticated as it). Not ACL WHOAMI: a refusal of it would
    # land in ACL LOG, where operators look for what their services miss.
    options = shared.target.options if shared.target is not None else (
        shared.pool.connection_kwargs if shared.pool is not None else {})
    facts.user = options.get("username") or "default"
    facts.notes.insert(0, f"Redis {shown} ({mode or shared.mode}"
                          f"{', ' + role if role and mode != 'cluster' else ''}), "
                          f"user {facts.user}")
    if shared.mode == "cluster":
        try:
            await _cluster_problems(shared, facts)
        except (RedisError, RedisClusterException, OSError) as exc:
            facts.problems.append(f"cannot look at the cluster's nodes: {exc}")
    return facts
