"""The `outbox` plugin: transactional events on PostgreSQL.

    plugins:
      outbox:
        enabled: true
        dsn: ${DATABASE_URL}        # the database of the outbox tables
        schema: public              # their PostgreSQL schema
        relay: true                 # run the relay inside `bus run`
        create_tables: true         # a worker creates missing tables at start
        django: false               # true: transaction.atomic() blocks take fires
        transactional_listeners: [] # listener names run with the inbox (or transactional=True)

Hooks: `bus_take_event` writes fires made inside a transaction into `bus_outbox`;
`bus_wrap_listener_handler` runs transactional listeners with the inbox; a worker starts the
relay (`bus_worker_started`) and stops it after its round (`bus_worker_stopping`); the CLI gets
`bus outbox init|relay|status|prune`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bus_core import hookimpl
from bus_core.errors import ConfigError, PluginError
from bus_outbox import inbox, outbox
from bus_outbox.commands import register_commands
from bus_outbox.options import CONFIG_SCHEMA, options_for, redact
from bus_outbox.relay import Relay, create_tables_async
from bus_outbox.stats import OutboxCollector, stats_for

if TYPE_CHECKING:
    from bus_core.client import BusClient, Listener
    from bus_core.messages import EventMessage
    from bus_core.worker import Worker

logger = logging.getLogger("bus.outbox")

_relays: weakref.WeakKeyDictionary[Any, tuple[Relay, asyncio.Task[None]]] = (
    weakref.WeakKeyDictionary())
_collected: weakref.WeakSet[Any] = weakref.WeakSet()


@hookimpl
def bus_plugin_config_schema() -> dict[str, Any]:
    return CONFIG_SCHEMA


@hookimpl
def bus_register_commands(register: Any) -> None:
    register_commands(register)


@hookimpl
def bus_take_event(client: BusClient, message: EventMessage
                   ) -> bool | Awaitable[bool] | None:
    return outbox.take_event(client, message)


@hookimpl
def bus_wrap_listener_handler(client: BusClient, listener: Listener
                              ) -> Callable[..., Any] | None:
    return inbox.wrap(client, listener)


def _export_metrics(client: BusClient) -> None:
    """Put the outbox's numbers in bus-metrics' registry of `client`, once."""
    if "metrics" not in client.plugins.enabled or client in _collected:
        return
    try:
        from bus_metrics.plugin import registry_for
    except ImportError:
        return
    prefix = client.config.plugin("metrics").get("prefix", "bus_")
    registry_for(client).register(OutboxCollector(stats_for(client), prefix,
                                                  client.service_name))
    _collected.add(client)


@hookimpl
async def bus_worker_started(client: BusClient, worker: Worker) -> None:
    options = options_for(client)
    missing = [name for name in sorted(options.transactional_listeners)
               if name not in client.listeners]
    if missing:
        logger.warning("plugins.outbox.transactional_listeners names listeners this worker "
                       "does not have: %s", ", ".join(missing))
    _export_metrics(client)
    if not options.dsn:
        if options.relay:
            raise ConfigError("plugins.outbox.relay is true but plugins.outbox.dsn is not "
                              "set: the relay needs the database of the outbox tables")
        return
    if options.create_tables:
        import psycopg

        try:
            conn = await psycopg.AsyncConnection.connect(options.dsn, autocommit=True)
            try:
                await create_tables_async(conn, options.schema)
            finally:
                await conn.close()
        except psycopg.Error as exc:
            raise PluginError(f"outbox: cannot create the outbox tables in schema "
                              f"{options.schema!r}: "
                              f"{redact(str(exc).strip(), options.dsn)}") from None
    if options.relay:
        relay = Relay(client, options)
        task = asyncio.get_running_loop().create_task(relay.run(), name="bus:outbox-relay")
        _relays[worker] = (relay, task)


@hookimpl
async def bus_worker_stopping(client: BusClient, worker: Worker) -> None:
    found = _relays.pop(worker, None)
    if found is not None:
        relay, task = found
        relay.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), 30)
        except (asyncio.TimeoutError, TimeoutError):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    inbox.close_connections(client)
