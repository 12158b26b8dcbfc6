"""The `schema` plugin: publishes each served API's schema, loads the others', validates
messages both ways, and adds `bus schema dump|load|show`.

    plugins:
      schema:
        enabled: true
        files: [schemas/]        # recorded schemas, for working without the live services

Per API: `apis.<name>.validate: true | false | {outgoing: .., incoming: ..}` and
`apis.<name>.strict_validation` (refuse an API whose schema is unknown, instead of warning).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from bus_core import hookimpl
from bus_core.errors import UnknownRpc
from bus_schema.commands import register_commands
from bus_schema.outline import definition_from_schema
from bus_schema.store import SchemaStore

if TYPE_CHECKING:
    from bus_core.api import ApiDefinition
    from bus_core.client import BusClient
    from bus_core.messages import EventMessage, RpcMessage
    from bus_core.worker import Worker

logger = logging.getLogger("bus.schema")
PLUGIN_NAME = "schema"
RELOAD_FOR_UNKNOWN_RPC = 1.0  # seconds: how stale the schema may be before an unknown RPC

_stores: weakref.WeakKeyDictionary[Any, SchemaStore] = weakref.WeakKeyDictionary()
_refreshers: weakref.WeakKeyDictionary[Any, asyncio.Task[None]] = weakref.WeakKeyDictionary()


def store_for(client: BusClient) -> SchemaStore:
    """The schema store of `client` (one per bus client)."""
    store = _stores.get(client)
    if store is None:
        store = _stores[client] = SchemaStore(client, client.config.plugin(PLUGIN_NAME))
    return store


def directions(setting: bool | dict[str, bool]) -> tuple[bool, bool]:
    """(outgoing, incoming) from an API's `validate` setting."""
    if isinstance(setting, dict):
        return setting.get("outgoing", True), setting.get("incoming", True)
    return bool(setting), bool(setting)


def _check(client: BusClient, api_name: str, kind: str, name: str, part: str,
           value: Any, outgoing: bool, where: str) -> Awaitable[None] | None:
    """Validate now, or return an awaitable when remote schemas must be (re)loaded first:
    the per-message path builds no coroutine when it can help it."""
    api_config = client.config.api(api_name)
    wanted_out, wanted_in = directions(api_config.validate)
    if not (wanted_out if outgoing else wanted_in):
        return None
    store = store_for(client)
    if api_name not in client.apis and api_name not in store.files and not store.fresh():
        return _check_after_loading(store, api_config.strict_validation, api_name, kind, name,
                                    part, value, where)
    _validate(store, api_config.strict_validation, api_name, kind, name, part, value, where)
    return None


async def _check_after_loading(store: SchemaStore, strict: bool, api_name: str, kind: str,
                               name: str, part: str, value: Any, where: str) -> None:
    await store.ensure_loaded()
    _validate(store, strict, api_name, kind, name, part, value, where)


def _validate(store: SchemaStore, strict: bool, api_name: str, kind: str, name: str,
              part: str, value: Any, where: str) -> None:
    validator = store.validator(api_name, kind, name, part, strict)
    if validator is not None:
        validator.check(value, where, parameters=part == "parameters")


@hookimpl
def bus_plugin_config_schema() -> dict[str, Any]:
    return {
        "properties": {
            "files": {"type": "array", "items": {"type": "string"}, "default": [],
                      "description": "schema files or folders (as `bus schema dump` "
                                     "writes them) to validate against"},
            "publish": {"type": "boolean", "default": True,
                        "description": "workers publish the schemas of the APIs they serve"},
            "refresh_interval": {"type": "number", "exclusiveMinimum": 0,
                                 "description": "seconds between schema refreshes "
                                                "(default: 0.8 x bus.schema.ttl)"},
        },
    }


@hookimpl
def bus_register_commands(register: Any) -> None:
    register_commands(register)


@hookimpl
async def bus_worker_started(client: BusClient, worker: Worker) -> None:
    store = store_for(client)
    if not client.config.plugin(PLUGIN_NAME).get("publish", True) or not worker.api_names:
        return
    await store.publish(worker.api_names)
    _refreshers[worker] = asyncio.get_running_loop().create_task(
        _keep_fresh(store, worker.api_names), name="bus:schema-refresh")


async def _keep_fresh(store: SchemaStore, api_names: list[str]) -> None:
    """Re-publish before the TTL runs out, and reload what others publish."""
    while True:
        await asyncio.sleep(store.refresh_interval)
        try:
            await store.publish(api_names)
            await store.load_remote()
        except Exception as exc:
            logger.warning("refreshing schemas failed (%s); trying again in %gs", exc,
                           store.refresh_interval)


@hookimpl
async def bus_worker_stopping(client: BusClient, worker: Worker) -> None:
    task = _refreshers.pop(worker, None)
    if task is not None:
        task.cancel()


@hookimpl
async def bus_describe_apis(client: BusClient) -> dict[str, ApiDefinition]:
    """The APIs of the shared schema (and schema files), read back for help and completion."""
    store = store_for(client)
    await store.ensure_loaded()
    return {name: definition_from_schema(name, document)
            for name, document in store.known().items() if name not in client.apis}


@hookimpl
def bus_before_rpc_call(client: BusClient, message: RpcMessage) -> Awaitable[None] | None:
    store = store_for(client)
    api_name, name = message.api_name, message.procedure_name
    if api_name not in client.apis and api_name not in store.files \
            and directions(client.config.api(api_name).validate)[0]:
        if not store.fresh():
            return _check_remote_call(client, store, message)
        published = store.published_rpcs(api_name)
        if published is not None and name not in published:
            return _check_remote_call(client, store, message)
    return _check(client, api_name, "rpcs", name, "parameters", message.kwargs, True,
                  f"{message.canonical_name}()")


async def _check_remote_call(client: BusClient, store: SchemaStore,
                             message: RpcMessage) -> None:
    """A call of an API known only from the live schema: an RPC the schema lacks is refused
    before sending (after one reload, in case its service has just published it)."""
    api_name, name = message.api_name, message.procedure_name
    await store.ensure_loaded()
    published = store.published_rpcs(api_name)
    if published is not None and name not in published:
        await store.ensure_loaded(max_age=RELOAD_FOR_UNKNOWN_RPC)
        published = store.published_rpcs(api_name)
    if published is not None and name not in published:
        raise UnknownRpc(f"API {api_name!r} has no RPC {name!r} in the schema its workers "
                         f"publish; its RPCs: {', '.join(sorted(published)) or 'none'}")
    pending = _check(client, api_name, "rpcs", name, "parameters", message.kwargs, True,
                     f"{message.canonical_name}()")
    if pending is not None:
        await pending


@hookimpl
def bus_before_rpc_execution(client: BusClient, message: RpcMessage) -> Awaitable[None] | None:
    return _check(client, message.api_name, "rpcs", message.procedure_name, "parameters",
                 message.kwargs, False, f"{message.canonical_name}()")


@hookimpl
def bus_before_rpc_result_sent(client: BusClient, message: RpcMessage,
                                     result: Any) -> Awaitable[None] | None:
    return _check(client, message.api_name, "rpcs", message.procedure_name, "response",
                 result, True, f"{message.canonical_name}()")


@hookimpl
def bus_on_rpc_result_received(client: BusClient, message: RpcMessage,
                                     result: Any) -> Awaitable[None] | None:
    return _check(client, message.api_name, "rpcs", message.procedure_name, "response",
                 result, False, f"{message.canonical_name}()")


@hookimpl
def bus_before_event_fire(client: BusClient, message: EventMessage) -> Awaitable[None] | None:
    return _check(client, message.api_name, "events", message.event_name, "parameters",
                 message.kwargs, True, f"event {message.canonical_name}")


@hookimpl
def bus_before_event_handling(client: BusClient, message: EventMessage,
                                    listener_name: str) -> Awaitable[None] | None:
    return _check(client, message.api_name, "events", message.event_name, "parameters",
                 message.kwargs, False, f"event {message.canonical_name}")
