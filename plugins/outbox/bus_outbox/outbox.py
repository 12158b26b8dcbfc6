"""The producer side: events fired inside a database transaction are written to `bus_outbox`
in that transaction instead of being sent, so they exist exactly when the transaction commits.

Which transaction? The innermost `bus_outbox.transaction(conn)` (or `using(conn)`) block of the
firing thread or task, for psycopg 3 sync and async connections; failing that, with
`plugins.outbox.django: true`, Django's `transaction.atomic()` block on the firing thread.
Outside both, a fire is sent to the event transport as usual.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import weakref
from collections.abc import Awaitable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from bus_core.errors import BusError, WireError
from bus_outbox.options import options_for
from bus_outbox.sql import Statements

if TYPE_CHECKING:
    from bus_core.client import BusClient
    from bus_core.messages import EventMessage


class OutboxError(BusError):
    """The outbox cannot take an event (wrong kind of connection, tables missing, ...)."""


class Transaction:
    """`with transaction(conn):` / `async with transaction(aconn):` -- see `transaction()`."""

    __slots__ = ("_inner", "_open", "_token", "connection", "is_async")

    def __init__(self, connection: Any, open_transaction: bool) -> None:
        self.connection = connection
        self.is_async = _is_async_connection(connection)
        self._open = open_transaction
        self._inner: Any = None
        self._token: contextvars.Token[Transaction | None] | None = None

    def __enter__(self) -> Any:
        if self.is_async:
            raise OutboxError("an async psycopg connection needs `async with "
                              "bus_outbox.transaction(conn):`")
        if self._open:
            self._inner = self.connection.transaction()
            self._inner.__enter__()
        self._token = _current.set(self)
        return self.connection

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> bool | None:
        assert self._token is not None
        _current.reset(self._token)
        if self._inner is not None:
            return self._inner.__exit__(kind, error, trace)  # type: ignore[no-any-return]
        return None

    async def __aenter__(self) -> Any:
        if not self.is_async:
            raise OutboxError("a sync psycopg connection needs `with "
                              "bus_outbox.transaction(conn):` (not async with)")
        if self._open:
            self._inner = self.connection.transaction()
            await self._inner.__aenter__()
        self._token = _current.set(self)
        return self.connection

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> bool | None:
        assert self._token is not None
        _current.reset(self._token)
        if self._inner is not None:
            return await self._inner.__aexit__(kind, error, trace)  # type: ignore[no-any-return]
        return None


_current: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar(
    "bus_outbox_transaction", default=None)


def _is_async_connection(connection: Any) -> bool:
    import psycopg

    if isinstance(connection, psycopg.AsyncConnection):
        return True
    if isinstance(connection, psycopg.Connection):
        return False
    raise OutboxError(f"bus_outbox.transaction() takes a psycopg 3 Connection or "
                      f"AsyncConnection, not {type(connection).__name__} (for Django, set "
                      "plugins.outbox.django: true and use transaction.atomic())")


def transaction(connection: Any) -> Transaction:
    """Open a transaction on a psycopg 3 connection (a savepoint if one is open) in which every
    fire of this thread or task is written to the outbox; commit at the end of the block,
    roll back (and fire nothing) on an exception:

        with bus_outbox.transaction(conn):
            conn.execute("INSERT INTO orders ...")
            bus.shop.order_placed.fire(order_id=42)

    With an AsyncConnection use `async with` and `await ....fire_async(...)`."""
    return Transaction(connection, open_transaction=True)


def using(connection: Any) -> Transaction:
    """Like `transaction()`, but opens nothing: fires go into whatever transaction
    `connection` has open (a psycopg connection not in autocommit starts one), and committing
    it is up to you."""
    return Transaction(connection, open_transaction=False)


def current_connection() -> Any:
    """The connection of the innermost `transaction()`/`using()` block of this thread or task
    (inside a transactional listener: the connection of its transaction), or None."""
    current = _current.get()
    return None if current is None else current.connection


# -- writing ------------------------------------------------------------------------------

_statements: dict[int, tuple[str, Statements]] = {}


def statements_for(client: BusClient) -> Statements:
    """The statements of `client`'s outbox schema (made once per schema name)."""
    schema = options_for(client).schema
    found = _statements.get(id(client))
    if found is None or found[0] != schema:
        if found is None:
            weakref.finalize(client, _statements.pop, id(client), None)
        found = (schema, Statements(schema))
        _statements[id(client)] = found
    return found[1]


def row_of(message: EventMessage) -> tuple[Any, ...]:
    """The insert parameters of `message`."""
    try:
        kwargs = json.dumps(message.kwargs, separators=(",", ":"), ensure_ascii=False,
                            allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise WireError(f"cannot write {message.canonical_name} to the outbox: its arguments "
                        f"are not JSON ({exc})") from None
    headers = None if message.headers is None else json.dumps(message.headers)
    return (message.id, message.api_name, message.event_name, message.version, kwargs, headers)


def take_event(client: BusClient, message: EventMessage) -> bool | Awaitable[bool] | None:
    """The `bus_take_event` implementation: write `message` into the caller's transaction."""
    current = _current.get()
    if current is not None:
        if not current._open:
            _check_open(current.connection, message)
        if current.is_async:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise OutboxError(
                    f"firing {message.canonical_name} with fire() inside `async with "
                    "bus_outbox.transaction(...)` on an async connection: use "
                    "`await ....fire_async(...)` there") from None
            return _write_async(current.connection, statements_for(client), row_of(message))
        statements = statements_for(client)
        try:
            current.connection.execute(statements.insert, row_of(message))
        except Exception as exc:
            _explain(exc, statements)
            raise
        return True
    options = options_for(client)
    if options.django:
        from django.db import connections

        connection = connections[options.django_database]
        if connection.in_atomic_block:
            statements = statements_for(client)
            try:
                with connection.cursor() as cursor:
                    cursor.execute(statements.insert, row_of(message))
            except Exception as exc:
                _explain(exc.__cause__ or exc, statements)  # Django wraps psycopg's error
                raise
            return True
    return None


def _check_open(connection: Any, message: EventMessage) -> None:
    """Refuse a fire inside `using(conn)` when `conn` is in autocommit with no transaction
    open: each event would commit on its own, not with the caller's work, and two of them
    would be two transactions, which a relay may publish in either order."""
    import psycopg

    if (connection.autocommit
            and connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE):
        raise OutboxError(f"firing {message.canonical_name} inside bus_outbox.using(conn): "
                          "conn is in autocommit mode with no transaction open, so the event "
                          "would not belong to one; use `bus_outbox.transaction(conn)` (or "
                          "open `conn.transaction()` around the block)")


async def _write_async(connection: Any, statements: Statements, row: tuple[Any, ...]) -> bool:
    try:
        await connection.execute(statements.insert, row)
    except Exception as exc:
        _explain(exc, statements)
        raise
    return True


def _explain(exc: BaseException, statements: Statements) -> None:
    """Raise an OutboxError that says what to do when the outbox table is missing."""
    import psycopg

    if isinstance(exc, psycopg.errors.UndefinedTable):
        raise OutboxError(f"no outbox table {statements.schema}.bus_outbox in this database: "
                          "run `bus outbox init` (or start a worker with create_tables: "
                          "true); the transaction is aborted") from None
