"""The consumer side: a transactional listener's handler runs inside a database transaction
that first records (service, listener, message id) in `bus_inbox`. If the mark is already there
(a redelivery, or a relay's re-publish of an event the listener handled), the handler does not
run and the event is acknowledged. The handler's own writes (through
`bus_outbox.current_connection()`, or Django's ORM with `django: true`) and the mark commit or
roll back together; events it fires go to the outbox in the same transaction.

Two deliveries of one event at once: the second insert waits for the first transaction, then
finds the mark (skip) or, if the first rolled back, takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bus_outbox.options import Options, options_for, redact
from bus_outbox.outbox import OutboxError, Transaction, _current, statements_for
from bus_outbox.stats import OutboxStats, stats_for

if TYPE_CHECKING:
    from bus_core.client import BusClient, Listener
    from bus_core.messages import EventMessage


class Connections:
    """Database connections of one client's transactional listeners: one per handler thread
    for sync handlers, a free list per event loop for async ones. Closed by `close()`."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._local = threading.local()
        self._all: list[Any] = []
        self._idle: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        self._lock = threading.Lock()

    def sync(self) -> Any:
        """This thread's connection (a new one when it has none or it broke)."""
        import psycopg

        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            try:
                conn = psycopg.connect(self.dsn, autocommit=True)
            except psycopg.Error as exc:
                raise self._cannot_connect(exc) from None
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.asynccontextmanager
    async def async_connection(self) -> Any:
        import psycopg

        loop = asyncio.get_running_loop()
        idle = self._idle.setdefault(loop, [])
        conn = idle.pop() if idle else None
        if conn is None or conn.closed or conn.broken:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            except psycopg.Error as exc:
                raise self._cannot_connect(exc) from None
            with self._lock:
                self._all.append(conn)
        try:
            yield conn
        finally:
            if not (conn.closed or conn.broken):
                idle.append(conn)

    def _cannot_connect(self, exc: Exception) -> OutboxError:
        """The error a handler raises when its database is out of reach: the worker logs it
        (and retries the event), so it must not quote the DSN's password (libpq quotes the
        token of a DSN it cannot parse)."""
        return OutboxError(f"a transactional listener cannot connect to the outbox database: "
                           f"{redact(str(exc).strip(), self.dsn)}")

    def close(self) -> None:
        """Close every connection made (from any thread: the libpq connection is finished,
        which works for sync and async connections alike)."""
        with self._lock:
            made, self._all = self._all, []
        self._idle.clear()
        for conn in made:
            with contextlib.suppress(Exception):
                conn.pgconn.finish()


_connections: dict[int, Connections] = {}
_making = threading.Lock()


def connections_for(client: BusClient, options: Options) -> Connections:
    found = _connections.get(id(client))
    if found is None:
        with _making:
            found = _connections.get(id(client))
            if found is None:
                found = _connections[id(client)] = Connections(
                    options.require_dsn("a transactional listener"))
                weakref.finalize(client, _close_connections, id(client))
    return found


def _close_connections(key: int) -> None:
    found = _connections.pop(key, None)
    if found is not None:
        found.close()


def close_connections(client: BusClient) -> None:
    """Close the listener connections of `client` (at worker stop); the wrapped handlers
    keep their pool and open new connections if a worker starts again."""
    found = _connections.get(id(client))
    if found is not None:
        found.close()


def is_transactional(listener: Listener, options: Options) -> bool:
    return bool(listener.transactional) or listener.name in options.transactional_listeners


def wrap(client: BusClient, listener: Listener) -> Callable[..., Any] | None:
    """The `bus_wrap_listener_handler` implementation."""
    options = options_for(client)
    if not is_transactional(listener, options):
        return None
    listener.transactional = True
    handler, name = listener.handler, listener.name
    key = (client.service_name, name)
    insert = statements_for(client).inbox_mark
    stats = stats_for(client)
    if listener.is_async:
        return _async_wrapper(client, options, handler, name, key, insert, stats)
    if options.django:
        return _django_wrapper(options.django_database, handler, name, key, insert, stats)
    return _sync_wrapper(client, options, handler, name, key, insert, stats)


def _mark_row(key: tuple[str, str], event: EventMessage) -> tuple[str, ...]:
    """The inbox row of `event` for listener `key` = (service name, listener name)."""
    return (*key, event.id, event.api_name, event.event_name)


def _sync_wrapper(client: BusClient, options: Options, handler: Callable[..., Any], name: str,
                  key: tuple[str, str], insert: str, stats: OutboxStats) -> Callable[..., Any]:
    pool = connections_for(client, options)

    def transactional(event: EventMessage, **parameters: Any) -> Any:
        conn = pool.sync()
        with conn.transaction():
            if conn.execute(insert, _mark_row(key, event)).fetchone() is None:
                stats.handled(name, duplicate=True)
                return None
            token = _current.set(Transaction(conn, open_transaction=False))
            try:
                result = handler(event, **parameters)
            finally:
                _current.reset(token)
        stats.handled(name, duplicate=False)
        return result

    return _named(transactional, handler)


def _async_wrapper(client: BusClient, options: Options, handler: Callable[..., Any], name: str,
                   key: tuple[str, str], insert: str, stats: OutboxStats
                   ) -> Callable[..., Any]:
    pool = connections_for(client, options)

    async def transactional(event: EventMessage, **parameters: Any) -> Any:
        async with pool.async_connection() as conn, conn.transaction():
            cursor = await conn.execute(insert, _mark_row(key, event))
            if await cursor.fetchone() is None:
                stats.handled(name, duplicate=True)
                return None
            token = _current.set(Transaction(conn, open_transaction=False))
            try:
                result = await handler(event, **parameters)
            finally:
                _current.reset(token)
        stats.handled(name, duplicate=False)
        return result

    return _named(transactional, handler)


def _django_wrapper(alias: str, handler: Callable[..., Any], name: str, key: tuple[str, str],
                    insert: str, stats: OutboxStats) -> Callable[..., Any]:
    def transactional(event: EventMessage, **parameters: Any) -> Any:
        from django.db import close_old_connections, connections, transaction

        close_old_connections()  # as a request would: drop connections past CONN_MAX_AGE
        try:
            with transaction.atomic(using=alias):
                with connections[alias].cursor() as cursor:
                    cursor.execute(insert, _mark_row(key, event))
                    fresh = cursor.fetchone() is not None
                if not fresh:
                    stats.handled(name, duplicate=True)
                    return None
                result = handler(event, **parameters)
            stats.handled(name, duplicate=False)
            return result
        finally:
            close_old_connections()

    return _named(transactional, handler)


def _named(wrapper: Callable[..., Any], handler: Callable[..., Any]) -> Callable[..., Any]:
    """`wrapper` under the handler's name (for logs and errors)."""
    for attribute in ("__name__", "__qualname__", "__module__", "__doc__"):
        with contextlib.suppress(AttributeError, TypeError):
            setattr(wrapper, attribute, getattr(handler, attribute))
    wrapper.__wrapped__ = handler  # type: ignore[attr-defined]
    return wrapper
