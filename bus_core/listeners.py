"""Listeners: a handler subscribed to events under a `listener_name`, checked once when it is
added (`bus.auth.user_registered.listen(...)`), with its arguments compiled for the worker."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
import typing
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bus_core.errors import InvalidArguments
from bus_core.message_path import HandlerArguments
from bus_core.runtime import is_async_callable

if TYPE_CHECKING:
    from bus_core.client import BusClient

# What listen(since=...) takes as text: "$" (new only), "0", "beginning", or an entry id.
_STREAM_POSITION = re.compile(r"^(\$|beginning|\d+(-\d+)?)$")
ON_ERROR_POLICIES = (None, "redeliver", "acknowledge", "stop")


@dataclasses.dataclass
class Listener:
    """A handler subscribed to one or more events under a `listener_name`."""

    name: str
    handler: Callable[..., Any]
    listen_for: tuple[tuple[str, str], ...]
    since: str | datetime | None
    on_error: str | None
    max_concurrency: int | None
    ordered: bool | None
    is_async: bool
    hints: dict[str, Any]
    parameter_names: frozenset[str]
    required: frozenset[str]
    accepts_extra: bool
    transactional: bool = False  # run inside a database transaction (a plugin wraps it)
    arguments: HandlerArguments = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.arguments = HandlerArguments(self.hints, self.parameter_names, self.required,
                                          self.accepts_extra)

    def wants(self, api_name: str, event_name: str) -> bool:
        return (api_name, event_name) in self.listen_for


def handler_signature(handler: Callable[..., Any]) -> tuple[dict[str, Any], frozenset[str],
                                                            frozenset[str], bool]:
    """(hints, parameter names, required names, accepts **kwargs) of an event handler,
    whose first positional parameter receives the EventMessage."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return {}, frozenset(), frozenset(), True
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional and not any(p.kind is p.VAR_POSITIONAL for p in params):
        raise InvalidArguments(
            f"event handler {getattr(handler, '__qualname__', handler)!r} must take the event "
            "as its first argument, e.g. def handler(event, username, email): ..."
        )
    rest = params[1:] if positional else params
    try:
        hints = typing.get_type_hints(handler)
    except Exception:
        hints = {}
    names = frozenset(p.name for p in rest if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    required = frozenset(
        p.name for p in rest
        if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    )
    accepts_extra = any(p.kind is p.VAR_KEYWORD for p in params)
    hints = {k: v for k, v in hints.items() if k in names}
    return hints, names, required, accepts_extra


def new_listener(client: BusClient, events: Any, handler: Callable[..., Any],
                 listener_name: str, since: str | datetime | None, on_error: str | None,
                 max_concurrency: int | None, ordered: bool | None,
                 transactional: bool = False) -> Listener:
    """A checked listener of `client` (not yet added): every mistake is refused here, at
    `listen()`, rather than when the worker starts."""
    if not isinstance(listener_name, str) or not listener_name.strip():
        raise InvalidArguments(
            "listen() needs listener_name='...': a stable name for this listener, used to "
            "remember its position on the stream across restarts"
        )
    if not callable(handler):
        raise InvalidArguments(f"listen() handler must be callable, got {handler!r}")
    if since is not None and not (isinstance(since, datetime) or (
            isinstance(since, str) and _STREAM_POSITION.match(since))):
        raise InvalidArguments(
            f"since={since!r}: use None (new events only), '0' (the beginning), a "
            "datetime, or a stream entry id such as '1700000000000-0'"
        )
    if on_error not in ON_ERROR_POLICIES:
        raise InvalidArguments(
            f"on_error={on_error!r}: use 'redeliver', 'acknowledge' or 'stop'"
        )
    pairs = tuple(dict.fromkeys(event_pairs(client, events)))
    if not pairs:
        raise InvalidArguments("listen() needs at least one event")
    if listener_name in client.listeners:
        raise InvalidArguments(
            f"listener_name {listener_name!r} is already used in this process by "
            f"{getattr(client.listeners[listener_name].handler, '__qualname__', '?')}; "
            "pick a different name per handler"
        )
    hints, names, required, accepts_extra = handler_signature(handler)
    listener = Listener(
        name=listener_name, handler=handler, listen_for=pairs, since=since, on_error=on_error,
        max_concurrency=max_concurrency, ordered=ordered, is_async=is_async_callable(handler),
        hints=hints, parameter_names=names, required=required, accepts_extra=accepts_extra,
        transactional=bool(transactional),
    )
    if client.hooks.wrap_listener_handler(client, listener):
        listener.is_async = is_async_callable(listener.handler)
    elif listener.transactional:
        raise InvalidArguments(
            f"listener {listener_name!r} is transactional, but no enabled plugin runs "
            "listeners in database transactions: install and enable one (bus-outbox: "
            "`plugins: {outbox: {dsn: ...}}`), or drop transactional=True"
        )
    return listener


def start_in_running_workers(client: BusClient, listener: Listener) -> None:
    """Add `listener` to `client`; workers already running start it at once (blocking until
    it consumes, unless called on a worker's own loop, where it starts soon after)."""
    client.listeners[listener.name] = listener
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for worker in list(client.running_workers):
        if worker.loop is None:
            continue
        if running is worker.loop:
            worker.loop.create_task(worker.add_listener(listener))
        else:
            asyncio.run_coroutine_threadsafe(worker.add_listener(listener),
                                             worker.loop).result()


async def started_in_running_workers(client: BusClient, listener: Listener) -> None:
    """Add `listener` to `client`, and wait until every running worker consumes for it."""
    client.listeners[listener.name] = listener
    loop = asyncio.get_running_loop()
    for worker in list(client.running_workers):
        if worker.loop is loop:
            await worker.add_listener(listener)
        elif worker.loop is not None:
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(worker.add_listener(listener), worker.loop))


def event_pairs(client: BusClient, events: Any) -> Iterable[tuple[str, str]]:
    """(api, event) pairs from what listen() takes: a path, "api.event", a pair, or a list of
    those; an event the client knows the API of must exist in it."""
    from bus_core.paths import BusPath

    if isinstance(events, (BusPath, str)) or (
        isinstance(events, tuple) and len(events) == 2 and all(isinstance(e, str)
                                                                for e in events)
    ):
        events = [events]
    for item in events:
        if isinstance(item, BusPath):
            api_name, event_name = item.api_name, item.member_name
        elif isinstance(item, str):
            api_name, _, event_name = item.rpartition(".")
        else:
            api_name, event_name = item
        if not api_name or not event_name:
            raise InvalidArguments(f"{item!r} does not name an event: use 'api.event'")
        client.event_definition(api_name, event_name, required=False)
        yield api_name, event_name
