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
import inspect
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from bus_core import outgoing
from bus_core.api import Api, ApiDefinition, EventDefinition, RpcDefinition, warn_about_wire_types
from bus_core.config import Config
from bus_core.errors import BusError, InvalidArguments, UnknownApi, UnknownEvent, UnknownRpc
from bus_core.listeners import Listener, new_listener
from bus_core.message_path import OutgoingCall, OutgoingEvent, ServedRpc, check_arguments
from bus_core.messages import EventMessage
from bus_core.plugins import PluginManager
from bus_core.runtime import (
    LoopThread,
    call_user_code,
    is_async_callable,
    loop_factory,
    run_in_fresh_loop,
)
from bus_core.scheduling import ScheduledTask, every, next_cron_time, on_cron
from bus_core.serialization import SizeLimitedSerializer
from bus_core.transports import Transport

if TYPE_CHECKING:
    from bus_core.worker import Worker

__all__ = ["Bus", "BusClient", "BusPath", "Listener", "LoopState", "ScheduledTask",
           "next_cron_time"]
T = TypeVar("T")
logger = logging.getLogger("bus.client")
MAX_COMPILED_CALLS = 10_000  # plans kept for RPCs of APIs not registered here
_CLIENTS: weakref.WeakSet[BusClient] = weakref.WeakSet()
# What clients had before a fork, kept alive in the child and never closed there: closing or
# collecting it would shut down sockets the parent still uses.
_INHERITED: list[Any] = []


def _forget_what_the_parent_had() -> None:
    for client in list(_CLIENTS):
        client._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_what_the_parent_had)


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
        self._procedures: dict[tuple[str, str], ServedRpc] = {}
        self._outgoing_calls: dict[tuple[str, str], OutgoingCall] = {}
        self._outgoing_events: dict[tuple[str, str], OutgoingEvent] = {}
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
        self.send_tracebacks = bool(config.bus["send_tracebacks"])
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
            self._procedures[(definition.name, rpc.name)] = ServedRpc(
                method, is_async_callable(method), rpc,
                {p.name: p.type for p in rpc.parameters})
        for key in [key for key in self._outgoing_calls if key[0] == definition.name]:
            del self._outgoing_calls[key]  # compiled while the API was remote
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

    def procedure(self, api_name: str, procedure_name: str) -> ServedRpc | None:
        """A locally served RPC: its method and how a call's arguments are checked."""
        return self._procedures.get((api_name, procedure_name))

    def outgoing_call(self, api_name: str, procedure_name: str) -> OutgoingCall:
        """How calls of `api_name.procedure_name` are checked and converted (compiled once);
        UnknownRpc when the API is registered here without that RPC."""
        found = self._outgoing_calls.get((api_name, procedure_name))
        if found is None:
            definition = self.api_definition(api_name)
            rpc = None
            if definition is not None:
                rpc = definition.rpcs.get(procedure_name)
                if rpc is None:
                    raise UnknownRpc(
                        f"API {api_name!r} has no RPC {procedure_name!r}; its RPCs: "
                        f"{', '.join(sorted(definition.rpcs)) or 'none'}"
                    )
            found = OutgoingCall(api_name, procedure_name, rpc)
            if definition is not None or len(self._outgoing_calls) < MAX_COMPILED_CALLS:
                self._outgoing_calls[(api_name, procedure_name)] = found
        return found

    def check_rpc_arguments(self, api_name: str, procedure_name: str,
                            kwargs: dict[str, Any]) -> RpcDefinition | None:
        """Refuse unknown RPCs and bad arguments of an API registered here (its definition
        is returned; None for an API served elsewhere, whose worker checks)."""
        rpc = self.outgoing_call(api_name, procedure_name).rpc
        if rpc is not None:
            check_arguments(f"{api_name}.{procedure_name}()", rpc.parameters,
                            rpc.accepts_extra, kwargs)
        return rpc

    def outgoing_event(self, api_name: str, event_name: str) -> OutgoingEvent:
        """How fires of `api_name.event_name` are checked and converted (compiled once);
        UnknownApi/UnknownEvent unless the API is registered here with that event."""
        found = self._outgoing_events.get((api_name, event_name))
        if found is None:
            event = self.event_definition(api_name, event_name, required=True)
            found = OutgoingEvent(api_name, event, self.apis[api_name].definition.version)
            self._outgoing_events[(api_name, event_name)] = found
        return found

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
        listener = new_listener(self, events, handler, listener_name, since, on_error,
                                max_concurrency, ordered, transactional)
        self.listeners[listener.name] = listener
        self._join_running_workers(listener)
        return listener

    async def listen_async(self, events: Iterable[Any] | Any, handler: Callable[..., Any], *,
                           listener_name: str, since: str | datetime | None = None,
                           on_error: str | None = None, max_concurrency: int | None = None,
                           ordered: bool | None = None, transactional: bool = False
                           ) -> Listener:
        """`listen()`, and when a worker is already running, wait until the new listener
        consumes (so an event fired right after is seen)."""
        listener = new_listener(self, events, handler, listener_name, since, on_error,
                                max_concurrency, ordered, transactional)
        self.listeners[listener.name] = listener
        loop = asyncio.get_running_loop()
        for worker in list(self.running_workers):
            if worker.loop is loop:
                await worker.add_listener(listener)
            elif worker.loop is not None:
                await asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(worker.add_listener(listener), worker.loop))
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
        return every(self.scheduled, seconds + minutes * 60 + hours * 3600,
                     also_run_immediately, single)

    def schedule(self, cron: str, *, tz: str | None = None, single: bool = False
                 ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: run the function at the times of a cron expression (UTC unless `tz`
        names a zone) while a worker runs; `single=True`: in one process at a time."""
        return on_cron(self.scheduled, cron, tz, single)

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
                    self._loop_thread = LoopThread(
                        f"bus-{self.service_name}", loop_factory(self.config.bus["event_loop"]))
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
        return await outgoing.call_rpc(self, api_name, procedure_name, kwargs, bus_options)

    def call_rpc(self, api_name: str, procedure_name: str, kwargs: dict[str, Any],
                 bus_options: dict[str, Any] | None = None) -> Any:
        return self.run_sync(outgoing.call_rpc(self, api_name, procedure_name, kwargs,
                                               bus_options))

    # -- events ------------------------------------------------------------------------

    def event_message(self, api_name: str, event_name: str,
                      kwargs: dict[str, Any]) -> EventMessage:
        """The event a fire of `api_name.event_name(**kwargs)` sends (checked, converted)."""
        return outgoing.event_message(self, api_name, event_name, kwargs)

    async def fire_async(self, api_name: str, event_name: str, kwargs: dict[str, Any],
                         bus_options: dict[str, Any] | None = None) -> EventMessage:
        message = outgoing.event_message(self, api_name, event_name, kwargs)
        taken = self.hooks.take_event(self, message)
        if taken is not None and inspect.isawaitable(taken):
            taken = await taken
        if not taken:
            await outgoing.send_event(self, message, bus_options)
        return message

    async def fire_many_async(self, api_name: str, event_name: str,
                              many: Iterable[dict[str, Any]],
                              bus_options: dict[str, Any] | None = None) -> list[EventMessage]:
        """Fire one event per kwargs dict of `many`, in order, sent together (one round trip
        on Redis). Every one is checked before any is sent."""
        messages = [outgoing.event_message(self, api_name, event_name, kwargs)
                    for kwargs in _kwargs_dicts(many)]
        unsent = []
        for message in messages:
            taken = self.hooks.take_event(self, message)
            if taken is not None and inspect.isawaitable(taken):
                taken = await taken
            if not taken:
                unsent.append(message)
        await outgoing.send_events(self, unsent, bus_options)
        return messages

    def fire_many(self, api_name: str, event_name: str, many: Iterable[dict[str, Any]],
                  bus_options: dict[str, Any] | None = None) -> list[EventMessage]:
        messages = [outgoing.event_message(self, api_name, event_name, kwargs)
                    for kwargs in _kwargs_dicts(many)]
        unsent = [message for message in messages if not self._taken_here(message)]
        self.run_sync(outgoing.send_events(self, unsent, bus_options))
        return messages

    def _taken_here(self, message: EventMessage) -> bool:
        """Offer a sync fire's event to the plugins, on the caller's thread (an outbox)."""
        taken = self.hooks.take_event(self, message)
        if taken is not None and inspect.isawaitable(taken):
            if inspect.iscoroutine(taken):
                taken.close()
            raise BusError(f"firing {message.canonical_name}: a bus_take_event implementation "
                           "answered a sync fire() with an awaitable; use fire_async() there")
        return bool(taken)

    async def send_event_async(self, message: EventMessage,
                               bus_options: dict[str, Any] | None = None) -> None:
        """Send a built event to its event transport, with the fire hooks around it (what a
        fire does once no plugin took the event; an outbox relay calls it later)."""
        await outgoing.send_event(self, message, bus_options)

    def fire(self, api_name: str, event_name: str, kwargs: dict[str, Any],
             bus_options: dict[str, Any] | None = None) -> EventMessage:
        message = outgoing.event_message(self, api_name, event_name, kwargs)
        if not self._taken_here(message):
            self.run_sync(outgoing.send_event(self, message, bus_options))
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

    def run_worker(self, *, rpcs: bool = True, events: bool = True, tasks: bool = True,
                   event_loop: str | None = None) -> int:
        """Serve until SIGINT/SIGTERM, then drain and return 0 (what `bus run` does), on an
        event loop of `event_loop` (default: `bus.event_loop`)."""
        from bus_core.worker import run_until_signalled

        return run_until_signalled(self.worker(rpcs=rpcs, events=events, tasks=tasks),
                                   event_loop or self.config.bus["event_loop"])

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


def _kwargs_dicts(many: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(many, dict) or not isinstance(many, Iterable):
        raise InvalidArguments("fire_many() takes a list of keyword-argument dicts, one per "
                               "event, e.g. fire_many([{'username': 'a'}, {'username': 'b'}])")
    items = list(many)
    for item in items:
        if not isinstance(item, dict):
            raise InvalidArguments(f"fire_many() takes dicts of keyword arguments, got "
                                   f"{type(item).__name__} {item!r:.60}")
    return items


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


from bus_core.paths import Bus, BusPath  # noqa: E402  (re-exported: bus_core.client.Bus)
