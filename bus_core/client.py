"""The bus client and the `bus.<api>.<name>` paths, in sync and async forms.

    bus = bus_core.create()
    bus.client.register_api(AuthApi())
    bus.auth.check_password(username="a", password="b")            # sync, from any thread
    await bus.auth.check_password.call_async(username="a", ...)    # async, on your loop
    bus.auth.user_registered.fire(username="a", email="a@x")
    bus.auth.user_registered.listen(handler, listener_name="send_welcome")

Sync forms run on the client's own event loop in a background thread; async forms run on the
caller's loop. Transports are opened lazily, once per loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import inspect
import logging
import math
import os
import re
import sys
import threading
import traceback
import typing
import warnings
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Any, TypeVar

from bus_core.api import (
    Api,
    ApiDefinition,
    EventDefinition,
    Parameter,
    RpcDefinition,
    warn_about_wire_types,
)
from bus_core.config import Config
from bus_core.errors import (
    BusError,
    InvalidArguments,
    RemoteError,
    RpcTimeout,
    RpcWorkerLost,
    UnknownApi,
    UnknownEvent,
    UnknownRpc,
    WireError,
)
from bus_core.logs import about, current_message
from bus_core.messages import EventMessage, ResultMessage, RpcMessage
from bus_core.plugins import PluginManager, now
from bus_core.runtime import LoopThread, call_user_code, is_async_callable, run_in_fresh_loop
from bus_core.serialization import SizeLimitedSerializer
from bus_core.transports import EventTransport, ResultTransport, RpcTransport, Transport
from bus_core.values import from_wire, to_wire

if TYPE_CHECKING:
    from bus_core.worker import Worker

T = TypeVar("T")
Procedure = tuple[Callable[..., Any], bool, RpcDefinition, dict[str, Any]]
logger = logging.getLogger("bus.client")
_RESERVED_KWARGS = ("bus_options",)
_BUS_OPTIONS = ("timeout",)
# What listen(since=...) takes as text: "$" (new only), "0", "beginning", or an entry id.
_STREAM_POSITION = re.compile(r"^(\$|beginning|\d+(-\d+)?)$")
_CLIENTS: weakref.WeakSet[BusClient] = weakref.WeakSet()
# What clients had before a fork, kept alive in the child and never closed there: closing or
# collecting it would shut down sockets the parent still uses.
_INHERITED: list[Any] = []


def _forget_what_the_parent_had() -> None:
    for client in list(_CLIENTS):
        client._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_what_the_parent_had)


# -- listeners and scheduled tasks ---------------------------------------------------------


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

    def wants(self, api_name: str, event_name: str) -> bool:
        return (api_name, event_name) in self.listen_for


@dataclasses.dataclass
class ScheduledTask:
    """A function run while a worker runs: every `seconds`, or at the times of `cron`.

    `single` tasks run in one process of the service at a time (a lock on the transport)."""

    function: Callable[..., Any]
    seconds: float
    also_run_immediately: bool
    is_async: bool
    cron: str | None = None
    tz: str | None = None
    single: bool = False

    @property
    def name(self) -> str:
        return getattr(self.function, "__qualname__", repr(self.function))

    def next_delay(self, moment: datetime | None = None) -> float:
        """Seconds from `moment` (default: now) to the next run; the interval for every()."""
        if self.cron is None:
            return self.seconds
        moment = moment or datetime.now(timezone.utc)
        fire = next_cron_time(self.cron, self.tz, moment)
        return max(0.0, (fire - moment).total_seconds())


def _zone(tz: str | None) -> tzinfo:
    if tz is None or tz.upper() == "UTC":
        return timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArguments(f"schedule(tz={tz!r}): unknown time zone") from None


def next_cron_time(expression: str, tz: str | None, moment: datetime) -> datetime:
    """The first time strictly after `moment` that the cron `expression` names (in `tz`)."""
    from croniter import croniter

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    fire = croniter(expression, moment.astimezone(_zone(tz))).get_next(datetime)
    return typing.cast(datetime, fire)


def _check_cron(expression: str, tz: str | None) -> None:
    from croniter import croniter

    _zone(tz)
    if not isinstance(expression, str) or not croniter.is_valid(expression):
        why = ""
        if isinstance(expression, str):
            fields = expression.split()
            why = (f"it has {len(fields)} field(s); " if len(fields) != 5
                   else "a field is out of range or not understood; ")
        raise InvalidArguments(
            f"schedule({expression!r}): not a valid cron expression: {why}use five fields "
            "'minute hour day-of-month month day-of-week', e.g. '*/5 * * * *'"
        )


def _handler_signature(handler: Callable[..., Any]) -> tuple[dict[str, Any], frozenset[str],
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


# -- per-loop state --------------------------------------------------------------------------


class LoopState:
    """The transports one event loop uses; created on first use from that loop."""

    def __init__(self, client: BusClient) -> None:
        self.client = client
        self._instances: dict[tuple[Any, ...], Transport] = {}
        self._opening: dict[tuple[Any, ...], asyncio.Future[Transport]] = {}
        self._by_api: dict[tuple[str, str], Transport] = {}
        self.started: asyncio.Future[None] | None = None

    async def transport(self, kind: str, api_name: str) -> Any:
        found = self._by_api.get((kind, api_name))
        if found is not None:
            return found
        if kind == "schema":
            name, options = self.client.config.schema_transport()
        else:
            name, options = self.client.config.api(api_name).transport(kind)
        key = (kind, name, _freeze(options))
        instance = self._instances.get(key)
        if instance is None:
            opening = self._opening.get(key)
            if opening is None:
                opening = self._opening[key] = asyncio.get_running_loop().create_future()
                try:
                    instance = self.client.make_transport(kind, name, options)
                    await instance.open()
                except BaseException as exc:
                    del self._opening[key]
                    opening.set_exception(exc)
                    opening.exception()  # mark retrieved; waiters re-raise it
                    raise
                self._instances[key] = instance
                opening.set_result(instance)
            else:
                instance = await asyncio.shield(opening)
        self._by_api[(kind, api_name)] = instance
        return instance

    async def close(self) -> None:
        for instance in self._instances.values():
            try:
                await instance.close()
            except Exception:
                logger.exception("closing %s failed", type(instance).__name__)
        self._instances.clear()
        self._by_api.clear()


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


# -- the client ------------------------------------------------------------------------------


class BusClient:
    """One bus connection: its config, plugins, registered APIs, listeners and transports.

    Made by `bus_core.create()`; two clients in a process share nothing."""

    def __init__(self, config: Config, plugins: PluginManager) -> None:
        self.config = config
        self.plugins = plugins
        self.hooks = plugins.hooks
        self.serializer = SizeLimitedSerializer(
            plugins.serializer(config.bus["serializer"]), config.bus["max_message_size"]
        )
        self.apis: dict[str, Api] = {}
        self.described: dict[str, ApiDefinition] = {}  # remote APIs plugins told us of
        self._procedures: dict[tuple[str, str], Procedure] = {}
        self.listeners: dict[str, Listener] = {}
        self.start_functions: list[tuple[Callable[..., Any], bool]] = []
        self.stop_functions: list[tuple[Callable[..., Any], bool]] = []
        self.scheduled: list[ScheduledTask] = []
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._loop_thread: LoopThread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._background_worker: Worker | None = None
        self.running_workers: list[Worker] = []
        self._warned_blocking = False
        self.closed = False
        _CLIENTS.add(self)

    def _after_fork(self) -> None:
        """In a forked child (gunicorn --preload, multiprocessing): the parent's loop thread,
        thread pool and connections are not this process's; start afresh on first use."""
        _INHERITED.append((self._loop_thread, list(self._states.items()), self._executor,
                           self._background_worker, list(self.running_workers)))
        self._loop_thread = None
        self._states = weakref.WeakKeyDictionary()
        self._executor = None
        self._lock = threading.Lock()
        self._background_worker = None
        self.running_workers = []

    def __repr__(self) -> str:
        return (f"<BusClient service={self.config.service_name!r} "
                f"process={self.config.process_name!r} apis={sorted(self.apis)}>")

    @property
    def service_name(self) -> str:
        return self.config.service_name

    @property
    def process_name(self) -> str:
        return self.config.process_name

    # -- registration ------------------------------------------------------------------

    def register_api(self, api: Api) -> Api:
        """Serve (and be allowed to fire the events of) `api` on this client."""
        if isinstance(api, type) and issubclass(api, Api):
            raise InvalidArguments(
                f"register_api() takes an instance: register_api({api.__name__}())"
            )
        if not isinstance(api, Api) or not hasattr(type(api), "definition"):
            raise InvalidArguments(
                f"register_api() takes an instance of an Api subclass with a Meta.name, "
                f"got {api!r}"
            )
        definition = api.definition
        existing = self.apis.get(definition.name)
        if existing is not None and existing is not api:
            raise InvalidArguments(
                f"API {definition.name!r} is already registered on this client "
                f"({type(existing).__name__})"
            )
        warn_about_wire_types(definition)
        self.apis[definition.name] = api
        for rpc in definition.rpcs.values():
            method = getattr(api, rpc.name)
            hints = {p.name: p.type for p in rpc.parameters if p.type is not typing.Any}
            self._procedures[(definition.name, rpc.name)] = (
                method, is_async_callable(method), rpc, hints)
        return api

    def api_definition(self, api_name: str) -> ApiDefinition | None:
        api = self.apis.get(api_name)
        return api.definition if api is not None else None

    def known_definition(self, api_name: str) -> ApiDefinition | None:
        """The API as registered here, else as last described by a plugin: for help and
        completion only (arguments are checked against registered APIs alone)."""
        return self.api_definition(api_name) or self.described.get(api_name)

    async def describe_apis(self) -> dict[str, ApiDefinition]:
        """Every API this client knows of: those registered here and those enabled plugins
        describe (bus-schema: the shared schema). Remembered for `dir()` and completion."""
        described = await self.hooks.describe_apis(self)
        self.described = {name: d for name, d in described.items() if name not in self.apis}
        return {**self.described, **{name: a.definition for name, a in self.apis.items()}}

    def procedure(self, api_name: str, procedure_name: str) -> Procedure | None:
        """(bound method, is async, definition, hints) of a locally served RPC."""
        return self._procedures.get((api_name, procedure_name))

    def listen(self, events: Iterable[Any] | Any, handler: Callable[..., Any], *,
               listener_name: str, since: str | datetime | None = None,
               on_error: str | None = None, max_concurrency: int | None = None,
               ordered: bool | None = None, transactional: bool = False) -> Listener:
        """Run `handler(event, **parameters)` for each of `events` in the worker.

        `events` is an event path (`bus.auth.user_registered`), an "api.event" string, an
        (api, event) pair, or a list of those. Every listener name receives every event;
        processes sharing a `listener_name` share the work. Added while a worker runs, the
        listener starts in it at once. `transactional=True` runs the handler inside a database
        transaction that also records the event as processed (a plugin such as bus-outbox
        provides it)."""
        listener = self._add_listener(events, handler, listener_name, since, on_error,
                                      max_concurrency, ordered, transactional)
        self._join_running_workers(listener)
        return listener

    async def listen_async(self, events: Iterable[Any] | Any, handler: Callable[..., Any], *,
                           listener_name: str, since: str | datetime | None = None,
                           on_error: str | None = None, max_concurrency: int | None = None,
                           ordered: bool | None = None, transactional: bool = False
                           ) -> Listener:
        """`listen()`, and when a worker is already running, wait until the new listener
        consumes (so an event fired right after is seen)."""
        listener = self._add_listener(events, handler, listener_name, since, on_error,
                                      max_concurrency, ordered, transactional)
        loop = asyncio.get_running_loop()
        for worker in list(self.running_workers):
            if worker.loop is loop:
                await worker.add_listener(listener)
            elif worker.loop is not None:
                await asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(worker.add_listener(listener), worker.loop))
        return listener

    def _add_listener(self, events: Any, handler: Callable[..., Any], listener_name: str,
                      since: str | datetime | None, on_error: str | None,
                      max_concurrency: int | None, ordered: bool | None,
                      transactional: bool = False) -> Listener:
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
        if on_error not in (None, "redeliver", "acknowledge", "stop"):
            raise InvalidArguments(
                f"on_error={on_error!r}: use 'redeliver', 'acknowledge' or 'stop'"
            )
        pairs = tuple(dict.fromkeys(self._event_pairs(events)))
        if not pairs:
            raise InvalidArguments("listen() needs at least one event")
        if listener_name in self.listeners:
            raise InvalidArguments(
                f"listener_name {listener_name!r} is already used in this process by "
                f"{getattr(self.listeners[listener_name].handler, '__qualname__', '?')}; "
                "pick a different name per handler"
            )
        hints, names, required, accepts_extra = _handler_signature(handler)
        listener = Listener(
            name=listener_name, handler=handler, listen_for=pairs, since=since, on_error=on_error,
            max_concurrency=max_concurrency, ordered=ordered, is_async=is_async_callable(handler),
            hints=hints, parameter_names=names, required=required, accepts_extra=accepts_extra,
            transactional=bool(transactional),
        )
        if self.hooks.wrap_listener_handler(self, listener):
            listener.is_async = is_async_callable(listener.handler)
        elif listener.transactional:
            raise InvalidArguments(
                f"listener {listener_name!r} is transactional, but no enabled plugin runs "
                "listeners in database transactions: install and enable one (bus-outbox: "
                "`plugins: {outbox: {dsn: ...}}`), or drop transactional=True"
            )
        self.listeners[listener_name] = listener
        return listener

    def _join_running_workers(self, listener: Listener) -> None:
        """A listener added while workers run starts in them at once (blocking until it
        consumes, unless called on a worker's own loop, where it starts soon after)."""
        for worker in list(self.running_workers):
            if worker.loop is None:
                continue
            if _running_loop() is worker.loop:
                worker.loop.create_task(worker.add_listener(listener))
            else:
                asyncio.run_coroutine_threadsafe(worker.add_listener(listener),
                                                 worker.loop).result()

    def _event_pairs(self, events: Any) -> Iterable[tuple[str, str]]:
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
            self.event_definition(api_name, event_name, required=False)
            yield api_name, event_name

    def event_definition(self, api_name: str, event_name: str, *,
                         required: bool) -> EventDefinition | None:
        """The local definition of an event; raise when the API is local but the event is
        not, or (required=True) when the API is not registered here."""
        definition = self.api_definition(api_name)
        if definition is None:
            if required:
                raise UnknownApi(
                    f"cannot fire {api_name}.{event_name}: API {api_name!r} is not registered "
                    f"on this client (registered: {', '.join(sorted(self.apis)) or 'none'}). "
                    f"A service fires only its own events: bus.client.register_api(...) first"
                )
            return None
        event = definition.events.get(event_name)
        if event is None:
            raise UnknownEvent(
                f"API {api_name!r} has no event {event_name!r}; its events: "
                f"{', '.join(sorted(definition.events)) or 'none'}"
            )
        return event

    def on_start(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: run `function()` when a worker starts (sync or async)."""
        self.start_functions.append((function, is_async_callable(function)))
        return function

    def on_stop(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: run `function()` when a worker stops, after in-flight work drained."""
        self.stop_functions.append((function, is_async_callable(function)))
        return function

    def every(self, *, seconds: float = 0, minutes: float = 0, hours: float = 0,
              also_run_immediately: bool = False, single: bool = False
              ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: run the function every interval while a worker runs (with
        `single=True`, in only one process of the service at a time)."""
        interval = seconds + minutes * 60 + hours * 3600
        if interval <= 0:
            raise InvalidArguments("every() needs a positive interval, e.g. every(seconds=30)")

        def decorate(function: Callable[..., T]) -> Callable[..., T]:
            self.scheduled.append(ScheduledTask(function, interval, also_run_immediately,
                                                is_async_callable(function), single=single))
            return function

        return decorate

    def schedule(self, cron: str, *, tz: str | None = None, single: bool = False
                 ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: run the function at the times of a cron expression (UTC unless `tz`
        names a zone) while a worker runs; `single=True`: in one process at a time."""
        _check_cron(cron, tz)

        def decorate(function: Callable[..., T]) -> Callable[..., T]:
            self.scheduled.append(ScheduledTask(function, 0.0, False,
                                                is_async_callable(function), cron=cron, tz=tz,
                                                single=single))
            return function

        return decorate

    # -- transports and threads ---------------------------------------------------------

    def make_transport(self, kind: str, name: str, options: dict[str, Any]) -> Transport:
        entry = self.plugins.transport(kind, name)
        return entry.factory(serializer=self.serializer, service_name=self.service_name,
                             process_name=self.process_name, **options)

    async def state(self) -> LoopState:
        """This loop's transports (created, and `bus_client_started` fired, on first use)."""
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            if self.closed:
                raise BusError("this bus client is closed")
            state = self._states[loop] = LoopState(self)
            state.started = loop.create_future()
            try:
                await self.hooks.client_started(self)
            except BaseException as exc:
                state.started.set_exception(exc)
                del self._states[loop]
                raise
            state.started.set_result(None)
        elif not state.started.done():  # type: ignore[union-attr]
            await asyncio.shield(state.started)  # type: ignore[arg-type]
        return state

    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The thread pool that runs sync handlers, procedures and tasks."""
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        self.config.bus["handler_threads"], thread_name_prefix="bus-handler"
                    )
        return self._executor

    @property
    def loop_thread(self) -> LoopThread:
        if self.closed:
            raise BusError("this bus client is closed")
        if self._loop_thread is None:
            with self._lock:
                if self.closed:
                    raise BusError("this bus client is closed")
                if self._loop_thread is None:
                    self._loop_thread = LoopThread(f"bus-{self.service_name}")
        return self._loop_thread

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of this client from sync code on any thread and return its result."""
        try:
            thread = self.loop_thread
        except BusError:
            coro.close()  # never started: no "never awaited" warning
            raise
        if self._carry_context():
            coro = _in_context(contextvars.copy_context(), coro)
        if threading.current_thread() is thread.thread:
            # A sync call made on the background loop's own thread: blocking that loop on
            # itself would deadlock, so the call runs on a private loop in a helper thread.
            return run_in_fresh_loop(self._then_close_loop(coro))
        if _running_loop() is not None and not self._warned_blocking:
            self._warned_blocking = True
            warnings.warn(
                "Bus: a sync call or fire inside async code blocks its event loop until it "
                "returns (a worker on that loop cannot answer meanwhile); use "
                "`await ....call_async(...)` / `fire_async(...)` there", RuntimeWarning,
                stacklevel=4)
        return thread.run(coro)

    def _carry_context(self) -> bool:
        """Whether sync calls run in their caller's context (its context variables copied
        into the loop's task): only when a plugin watches outgoing messages (a tracer
        must see the caller's current span), so nobody else pays for the copy."""
        hooks = self.hooks
        return hooks.implemented("bus_before_rpc_call") \
            or hooks.implemented("bus_before_event_fire")

    async def _then_close_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return await coro
        finally:
            state = self._states.pop(asyncio.get_running_loop(), None)
            if state is not None:
                await state.close()

    async def call_user_code(self, fn: Callable[..., Any], is_async: bool, /,
                             *args: Any, **kwargs: Any) -> Any:
        return await call_user_code(fn, is_async, self.executor, *args, **kwargs)

    # -- RPC ---------------------------------------------------------------------------

    def check_rpc_arguments(self, api_name: str, procedure_name: str,
                            kwargs: dict[str, Any]) -> RpcDefinition | None:
        """Refuse unknown RPCs and bad arguments of a locally known API before sending."""
        definition = self.api_definition(api_name)
        if definition is None:
            return None
        rpc = definition.rpcs.get(procedure_name)
        if rpc is None:
            raise UnknownRpc(
                f"API {api_name!r} has no RPC {procedure_name!r}; its RPCs: "
                f"{', '.join(sorted(definition.rpcs)) or 'none'}"
            )
        check_arguments(f"{api_name}.{procedure_name}()", rpc.parameters, rpc.accepts_extra,
                        kwargs)
        return rpc

    def is_idempotent(self, api_name: str, procedure_name: str) -> bool:
        """Whether a call of `api_name.procedure_name` may run again when the worker running
        it dies: the config says so (`apis.<api>.idempotent`, `idempotent_rpcs`), or the API
        registered here declares it (`@rpc(idempotent=True)`)."""
        if self.config.api(api_name).is_idempotent(procedure_name):
            return True
        definition = self.api_definition(api_name)
        rpc = definition.rpcs.get(procedure_name) if definition is not None else None
        return rpc is not None and rpc.idempotent

    async def call_rpc_async(self, api_name: str, procedure_name: str,
                             kwargs: dict[str, Any], bus_options: dict[str, Any] | None = None
                             ) -> Any:
        rpc = self.check_rpc_arguments(api_name, procedure_name, kwargs)
        timeout, timeout_source = _timeout(bus_options, self.config.api(api_name).rpc_timeout,
                                           f"apis.{api_name}.rpc_timeout")
        message = RpcMessage(api_name=api_name, procedure_name=procedure_name,
                             kwargs=wire_kwargs(f"{api_name}.{procedure_name}()", kwargs,
                                                rpc.parameters if rpc else ()))
        state = await self.state()
        rpc_transport: RpcTransport = await state.transport("rpc", api_name)
        result_transport: ResultTransport = await state.transport("result", api_name)
        message.return_path = result_transport.get_return_path(message)
        token = about(message)  # what is logged until the result is in is about this call
        try:
            return await self._call(message, rpc, rpc_transport, result_transport, timeout,
                                    timeout_source)
        finally:
            current_message.reset(token)

    async def _call(self, message: RpcMessage, rpc: RpcDefinition | None,
                    rpc_transport: RpcTransport, result_transport: ResultTransport,
                    timeout: float, timeout_source: str) -> Any:
        api_name, procedure_name = message.api_name, message.procedure_name
        await self.hooks.before_rpc_call(self, message)
        started = now()
        logger.debug("calling %s.%s()", api_name, procedure_name)
        try:
            await rpc_transport.call_rpc(message, timeout=timeout)
            try:
                result = await result_transport.receive_result(message, message.return_path,
                                                               timeout=timeout)
            except RpcWorkerLost as lost:
                result = await self._after_worker_lost(message, rpc_transport,
                                                       result_transport, lost,
                                                       timeout - (now() - started))
        except RpcWorkerLost as lost:
            await self.hooks.after_rpc_call(self, message, None, lost, now() - started)
            raise
        except (TimeoutError, asyncio.TimeoutError):
            error: BaseException = RpcTimeout(
                rpc_timeout_message(api_name, procedure_name, timeout, timeout_source))
            await self.hooks.after_rpc_call(self, message, None, error, now() - started)
            raise error from None
        except BaseException as exc:
            await self.hooks.after_rpc_call(self, message, None, exc, now() - started)
            raise
        if result.error:
            error = remote_error(message, result)
            logger.debug("%s.%s() raised %s remotely", api_name, procedure_name,
                         error.remote_type)
            await self.hooks.after_rpc_call(self, message, None, error, now() - started)
            raise error
        logger.debug("%s.%s() answered in %.1f ms", api_name, procedure_name,
                     (now() - started) * 1000)
        try:
            await self.hooks.on_rpc_result_received(self, message, result.result)
        except BaseException as exc:
            await self.hooks.after_rpc_call(self, message, None, exc, now() - started)
            raise
        await self.hooks.after_rpc_call(self, message, result.result, None, now() - started)
        if rpc is not None and rpc.return_type is not typing.Any:
            try:
                return from_wire(result.result, rpc.return_type)
            except WireError as exc:
                raise WireError(f"{message.canonical_name}() returned a bad value: {exc}") \
                    from None
        return result.result

    async def _after_worker_lost(self, message: RpcMessage, rpc_transport: RpcTransport,
                                 result_transport: ResultTransport, lost: RpcWorkerLost,
                                 remaining: float) -> ResultMessage:
        """The worker running `message` died. An idempotent call goes back on the queue
        (same id, a fresh expiry for the time left) for another worker, as often as workers
        die within its timeout; any other call fails now with RpcWorkerLost, never run
        twice."""
        where = f"{message.api_name}.{message.procedure_name}()"
        deadline = now() + remaining
        while True:
            idempotent = lost.idempotent or self.is_idempotent(message.api_name,
                                                               message.procedure_name)
            if not idempotent:
                raise RpcWorkerLost(
                    f"{where}: the worker that took the call ({lost.worker or 'unknown'}) "
                    "stopped before answering (it died, was killed, or gave up the call as "
                    "it stopped). The call may have run in part or in full; it was not "
                    f"retried because {where} is not declared idempotent "
                    f"(@rpc(idempotent=True) or apis.{message.api_name}.idempotent_rpcs)",
                    worker=lost.worker, idempotent=False) from None
            if deadline - now() <= 0:
                raise TimeoutError
            logger.warning("%s: the worker running call %s (%s) stopped before answering; "
                           "re-queued for another worker (the RPC is idempotent)", where,
                           message.id, lost.worker or "unknown")
            await rpc_transport.call_rpc(message, timeout=max(0.001, deadline - now()))
            try:
                return await result_transport.receive_result(
                    message, message.return_path, timeout=max(0.0, deadline - now()))
            except RpcWorkerLost as again:
                lost = again

    def call_rpc(self, api_name: str, procedure_name: str, kwargs: dict[str, Any],
                 bus_options: dict[str, Any] | None = None) -> Any:
        return self.run_sync(self.call_rpc_async(api_name, procedure_name, kwargs, bus_options))

    # -- events ------------------------------------------------------------------------

    def event_message(self, api_name: str, event_name: str,
                      kwargs: dict[str, Any]) -> EventMessage:
        """The event a fire sends: arguments checked against the registered API, defaults
        filled in, values in wire form. Raises before anything is sent."""
        event = self.event_definition(api_name, event_name, required=True)
        assert event is not None
        where = f"{api_name}.{event_name}"
        check_arguments(where, event.parameters, False, kwargs)
        values = {p.name: p.default for p in event.parameters if not p.required}
        values.update(kwargs)
        definition = self.apis[api_name].definition
        return EventMessage(api_name=api_name, event_name=event_name,
                            kwargs=wire_kwargs(where, values, event.parameters),
                            version=definition.version)

    async def fire_async(self, api_name: str, event_name: str, kwargs: dict[str, Any],
                         bus_options: dict[str, Any] | None = None) -> EventMessage:
        message = self.event_message(api_name, event_name, kwargs)
        taken = self.hooks.take_event(self, message)
        if inspect.isawaitable(taken):
            taken = await taken
        if not taken:
            await self.send_event_async(message, bus_options)
        return message

    async def send_event_async(self, message: EventMessage,
                               bus_options: dict[str, Any] | None = None) -> None:
        """Send a built event to its event transport, with the fire hooks around it (what a
        fire does once no plugin took the event; an outbox relay calls it later)."""
        state = await self.state()
        transport: EventTransport = await state.transport("event", message.api_name)
        token = about(message)  # what is logged while it is sent is about this event
        try:
            await self._fire(message, transport, message.canonical_name, bus_options)
        finally:
            current_message.reset(token)

    async def _fire(self, message: EventMessage, transport: EventTransport, where: str,
                    bus_options: dict[str, Any] | None) -> None:
        api_name = message.api_name
        await self.hooks.before_event_fire(self, message)
        timeout, timeout_source = _timeout(bus_options,
                                           self.config.api(api_name).event_fire_timeout,
                                           f"apis.{api_name}.event_fire_timeout")
        started = now()
        try:
            await _within(transport.send_event(message), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            error = BusError(fire_timeout_message(where, timeout, timeout_source))
            await self.hooks.after_event_fire(self, message, error, now() - started)
            raise error from None
        except BaseException as exc:
            await self.hooks.after_event_fire(self, message, exc, now() - started)
            raise
        logger.debug("fired %s (native id %s)", where, message.native_id)
        await self.hooks.after_event_fire(self, message, None, now() - started)

    def fire(self, api_name: str, event_name: str, kwargs: dict[str, Any],
             bus_options: dict[str, Any] | None = None) -> EventMessage:
        message = self.event_message(api_name, event_name, kwargs)
        taken = self.hooks.take_event(self, message)  # on the caller's thread (an outbox)
        if inspect.isawaitable(taken):
            if inspect.iscoroutine(taken):
                taken.close()
            raise BusError(f"firing {message.canonical_name}: a bus_take_event implementation "
                           "answered a sync fire() with an awaitable; use fire_async() there")
        if not taken:
            self.run_sync(self.send_event_async(message, bus_options))
        return message

    # -- worker ------------------------------------------------------------------------

    def worker(self, *, rpcs: bool = True, events: bool = True, tasks: bool = True) -> Worker:
        from bus_core.worker import Worker

        return Worker(self, rpcs=rpcs, events=events, tasks=tasks)

    async def serve(self, *, rpcs: bool = True, events: bool = True, tasks: bool = True,
                    stop: asyncio.Event | None = None) -> None:
        """Run a worker on the current loop until `stop` is set (or the task is cancelled)."""
        worker = self.worker(rpcs=rpcs, events=events, tasks=tasks)
        await worker.run(stop)

    def start_worker(self, *, rpcs: bool = True, events: bool = True,
                     tasks: bool = True) -> Worker:
        """Start a worker on the client's background loop and return once it is consuming:
        handy for scripts, notebooks and tests. Stop it with `stop_worker()`."""
        if self._background_worker is not None:
            raise BusError("a worker is already running on this client; stop_worker() first")
        worker = self.worker(rpcs=rpcs, events=events, tasks=tasks)
        self.loop_thread.run(worker.start())
        self._background_worker = worker
        return worker

    def stop_worker(self) -> None:
        worker, self._background_worker = self._background_worker, None
        if worker is not None:
            self.loop_thread.run(worker.stop())

    def run_worker(self, *, rpcs: bool = True, events: bool = True, tasks: bool = True) -> int:
        """Serve until SIGINT/SIGTERM, then drain and return 0 (what `bus run` does)."""
        from bus_core.worker import run_until_signalled

        return run_until_signalled(self.worker(rpcs=rpcs, events=events, tasks=tasks))

    # -- shutdown ----------------------------------------------------------------------

    async def close_async(self) -> None:
        """Close this loop's transports (and the background loop's, from any loop)."""
        loop = asyncio.get_running_loop()
        state = self._states.pop(loop, None)
        if state is not None:
            await self.hooks.client_stopping(self)
            await state.close()
        if self._loop_thread is not None and loop is not self._loop_thread.loop:
            await asyncio.wrap_future(self._loop_thread.submit(self.close_async()))

    def close(self) -> None:
        """Stop the background worker and loop, close transports and the thread pool.
        Sync calls still in flight on other threads fail with BusError; later ones too."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        worker, self._background_worker = self._background_worker, None
        thread = self._loop_thread
        try:
            if thread is not None and worker is not None:
                thread.run(worker.stop())
            if thread is not None and thread.loop in self._states:
                thread.run(self._close_state(thread.loop))
        finally:  # even when stopping the worker failed (or Ctrl-C): nothing left running
            if thread is not None:
                thread.stop()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)

    async def _close_state(self, loop: asyncio.AbstractEventLoop) -> None:
        state = self._states.pop(loop, None)
        if state is not None:
            await self.hooks.client_stopping(self)
            await state.close()

    def __enter__(self) -> BusClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


async def _in_context(context: contextvars.Context, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` with the context variables of `context` (a sync caller's, on another
    thread) set in this task's own context."""
    for variable, value in context.items():
        variable.set(value)
    return await coro


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


if sys.version_info >= (3, 11):
    async def _within(awaitable: Coroutine[Any, Any, T], seconds: float) -> T:
        """Await with a time limit; asyncio.timeout makes no extra task, unlike wait_for."""
        async with asyncio.timeout(seconds):
            return await awaitable
else:  # pragma: no cover - Python 3.10
    async def _within(awaitable: Coroutine[Any, Any, T], seconds: float) -> T:
        return await asyncio.wait_for(awaitable, seconds)


def rpc_timeout_message(api_name: str, procedure_name: str, seconds: float,
                        source: str) -> str:
    return (f"{api_name}.{procedure_name}() got no result within {seconds:g}s ({source}): no "
            f"worker serving API {api_name!r} answered in time (none running, all busy, or "
            "the RPC is slower than that)")


def fire_timeout_message(where: str, seconds: float, source: str) -> str:
    """A fire that timed out may have reached the transport all the same (a slow Redis
    writes it late): say so, so nobody re-fires blindly."""
    return (f"firing {where} was not confirmed by the event transport within {seconds:g}s "
            f"({source}); it may still have been written and delivered, so firing it again "
            "may deliver it twice")


def _timeout(bus_options: dict[str, Any] | None, default: float, setting: str
             ) -> tuple[float, str]:
    """The timeout to use, and where it came from (for error messages)."""
    if bus_options is not None:
        if not isinstance(bus_options, dict):
            raise InvalidArguments(f"bus_options must be a dict such as {{'timeout': 2}}, got "
                                   f"{bus_options!r}")
        unknown = sorted(set(bus_options) - set(_BUS_OPTIONS))
        if unknown:
            raise InvalidArguments(f"unknown bus_options {', '.join(map(repr, unknown))}; "
                                   f"known: {', '.join(_BUS_OPTIONS)}")
    if bus_options and bus_options.get("timeout") is not None:
        value = bus_options["timeout"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise InvalidArguments(f"bus_options timeout must be a positive number of "
                                   f"seconds, got {value!r}")
        return float(value), "bus_options timeout"
    return float(default), setting


def check_arguments(where: str, parameters: Sequence[Any], accepts_extra: bool,
                    kwargs: dict[str, Any]) -> None:
    names = [p.name for p in parameters]
    if not accepts_extra:
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            raise InvalidArguments(
                f"{where} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
                f"it takes: {', '.join(names) or 'no parameters'}"
            )
    missing = [p.name for p in parameters if p.required and p.name not in kwargs]
    if missing:
        raise InvalidArguments(
            f"{where} is missing required parameter(s) {', '.join(map(repr, missing))}"
        )


def wire_kwargs(where: str, kwargs: dict[str, Any],
                parameters: Sequence[Any] = ()) -> dict[str, Any]:
    """Wire forms of `kwargs`; with the declared `parameters`, each value is also checked
    against its declared type here, before sending, rather than refused by the receiver."""
    out = {}
    declared = {p.name: p.type for p in parameters if p.type is not typing.Any}
    for key, value in kwargs.items():
        try:
            out[key] = wire = to_wire(value)
            hint = declared.get(key)
            if hint is not None:
                from_wire(wire, hint)
        except WireError as exc:
            raise InvalidArguments(f"{where} parameter {key!r}: {exc}") from None
        except RecursionError:
            raise InvalidArguments(f"{where} parameter {key!r} nests too deeply to send (or "
                                   "contains itself)") from None
    return out


def cast_kwargs(where: str, kwargs: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
    """Cast received wire values to the receiving function's hints; name the parameter on
    failure."""
    if not hints:
        return kwargs
    out = {}
    for key, value in kwargs.items():
        hint = hints.get(key)
        if hint is None:
            out[key] = value
            continue
        try:
            out[key] = from_wire(value, hint)
        except WireError as exc:
            raise WireError(f"{where} parameter {key!r}: {exc}") from None
    return out


def error_result(message: RpcMessage, error: BaseException, *,
                 with_traceback: bool = True) -> ResultMessage:
    """A Lightbus-compatible error result: `repr(error)` plus the formatted traceback, or
    (`bus.send_tracebacks: false`) only its last line, the type and message, so no path or
    source line of the worker reaches the caller."""
    if with_traceback:
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    else:
        trace = "".join(traceback.format_exception_only(type(error), error))
    return ResultMessage(rpc_message_id=message.id, result=repr(error), error=True, trace=trace)


def remote_error(message: RpcMessage, result: ResultMessage) -> RemoteError:
    trace = result.trace or ""
    last = trace.rstrip().rsplit("\n", 1)[-1] if trace else ""
    remote_type, sep, remote_message = last.partition(": ")
    if not sep or " " in remote_type.strip():
        remote_type, remote_message = _parse_repr(str(result.result))
    remote_type = remote_type.strip().rsplit(".", 1)[-1]  # "pkg.errors.Denied" -> "Denied"
    return RemoteError(message.api_name, message.procedure_name, remote_type, remote_message,
                       trace)


def _parse_repr(text: str) -> tuple[str, str]:
    name, sep, rest = text.partition("(")
    if sep and rest.endswith(")") and name.replace(".", "").replace("_", "").isalnum():
        inner = rest[:-1]
        if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
            inner = inner[1:-1]
        return name, inner
    return "Exception", text


# -- paths -----------------------------------------------------------------------------------


def _api_names(client: BusClient) -> set[str]:
    return {*client.apis, *client.described}


def _signature(name: str, parameters: Sequence[Parameter]) -> str:
    shown = [p.name if p.required else f"{p.name}={p.default!r}" for p in parameters]
    return f"{name}({', '.join(shown)})"


class BusPath:
    """`bus.auth.check_password`: an API, RPC or event by name, resolved when used."""

    __slots__ = ("_client", "_parts")

    def __init__(self, client: BusClient, parts: tuple[str, ...]) -> None:
        self._client = client
        self._parts = parts

    def __getattr__(self, name: str) -> BusPath:
        if name.startswith("_"):
            raise AttributeError(name)
        return BusPath(self._client, (*self._parts, name))

    def __repr__(self) -> str:
        return f"<BusPath {self.describe()}>"

    def __dir__(self) -> list[str]:
        """What can follow this path: an API's RPCs and events, a namespace's APIs, an RPC's
        or event's methods (all methods when the path is unknown). Completion uses it."""
        definition = self._client.known_definition(".".join(self._parts))
        members = {*definition.rpcs, *definition.events} if definition else set()
        prefix = ".".join(self._parts) + "."
        children = {n[len(prefix):].split(".")[0] for n in _api_names(self._client)
                    if n.startswith(prefix)}
        if members or children:
            return sorted(members | children)
        parent = self._client.known_definition(".".join(self._parts[:-1]))
        if parent is not None and self._parts[-1] in parent.rpcs:
            return ["call_async", "describe"]
        if parent is not None and self._parts[-1] in parent.events:
            return ["describe", "fire", "fire_async", "listen", "listen_async"]
        return ["call_async", "describe", "fire", "fire_async", "listen", "listen_async"]

    def describe(self) -> str:
        """What this path names, with parameters where the API is known (`bus shell` shows
        it as the path's repr)."""
        name = ".".join(self._parts)
        api = self._client.known_definition(name)
        if api is not None:
            rpcs = ", ".join(_signature(r.name, r.parameters) for r in api.rpcs.values())
            events = ", ".join(_signature(e.name, e.parameters) for e in api.events.values())
            return f"API {name}: RPCs {rpcs or '(none)'}; events {events or '(none)'}"
        parent = self._client.known_definition(".".join(self._parts[:-1]))
        member = self._parts[-1]
        if parent is not None and member in parent.rpcs:
            return f"RPC {parent.name}.{_signature(member, parent.rpcs[member].parameters)}"
        if parent is not None and member in parent.events:
            return f"event {parent.name}.{_signature(member, parent.events[member].parameters)}"
        return name

    @property
    def api_name(self) -> str:
        if len(self._parts) < 2:
            raise InvalidArguments(
                f"bus.{self._parts[0]} is an API; name an RPC or event on it, e.g. "
                f"bus.{self._parts[0]}.<name>"
            )
        return ".".join(self._parts[:-1])

    @property
    def member_name(self) -> str:
        return self._parts[-1]

    def _split(self, args: tuple[Any, ...], kwargs: dict[str, Any], verb: str
               ) -> tuple[str, str, dict[str, Any], dict[str, Any] | None]:
        api_name, name = self.api_name, self.member_name
        bus_options = kwargs.pop("bus_options", None)
        if args:
            raise InvalidArguments(self._keyword_hint(api_name, name, verb, len(args)))
        return api_name, name, kwargs, bus_options

    def _keyword_hint(self, api_name: str, name: str, verb: str, count: int) -> str:
        definition = self._client.known_definition(api_name)
        params: Sequence[Any] = ()
        if definition is not None:
            member = definition.rpcs.get(name) or definition.events.get(name)
            params = member.parameters if member else ()
        shown = ", ".join(f"{p.name}=..." for p in params) or "name=value, ..."
        call = f"bus.{api_name}.{name}" + ("" if verb == "call" else f".{verb}")
        return (f"{call}() takes keyword arguments only ({count} positional given); "
                f"call it as {call}({shown})")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        api_name, name, kwargs, options = self._split(args, kwargs, "call")
        return self._client.call_rpc(api_name, name, kwargs, options)

    async def call_async(self, *args: Any, **kwargs: Any) -> Any:
        api_name, name, kwargs, options = self._split(args, kwargs, "call_async")
        return await self._client.call_rpc_async(api_name, name, kwargs, options)

    def fire(self, *args: Any, **kwargs: Any) -> EventMessage:
        api_name, name, kwargs, options = self._split(args, kwargs, "fire")
        return self._client.fire(api_name, name, kwargs, options)

    async def fire_async(self, *args: Any, **kwargs: Any) -> EventMessage:
        api_name, name, kwargs, options = self._split(args, kwargs, "fire_async")
        return await self._client.fire_async(api_name, name, kwargs, options)

    def listen(self, handler: Callable[..., Any], *, listener_name: str,
               since: str | datetime | None = None, on_error: str | None = None,
               max_concurrency: int | None = None, ordered: bool | None = None,
               transactional: bool = False) -> Listener:
        return self._client.listen(self, handler, listener_name=listener_name, since=since,
                                   on_error=on_error, max_concurrency=max_concurrency,
                                   ordered=ordered, transactional=transactional)

    async def listen_async(self, handler: Callable[..., Any], *, listener_name: str,
                           since: str | datetime | None = None, on_error: str | None = None,
                           max_concurrency: int | None = None, ordered: bool | None = None,
                           transactional: bool = False) -> Listener:
        return await self._client.listen_async(
            self, handler, listener_name=listener_name, since=since, on_error=on_error,
            max_concurrency=max_concurrency, ordered=ordered, transactional=transactional)


class Bus:
    """What `bus_core.create()` returns: `bus.client`, and `bus.<api>.<name>` paths."""

    def __init__(self, client: BusClient) -> None:
        self.client = client

    def __getattr__(self, name: str) -> BusPath:
        if name.startswith("_"):
            raise AttributeError(name)
        return BusPath(self.client, (name,))

    def __dir__(self) -> list[str]:
        return sorted({"client", *(name.split(".")[0] for name in _api_names(self.client))})

    def __repr__(self) -> str:
        return f"<Bus {self.client!r}>"

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.client.close()
