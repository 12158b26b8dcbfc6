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
import logging
import os
import weakref
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from bus_core import outgoing
from bus_core.api import Api, ApiDefinition, EventDefinition, RpcDefinition
from bus_core.config import Config
from bus_core.errors import BusError
from bus_core.listeners import (
    Listener,
    new_listener,
    start_in_running_workers,
    started_in_running_workers,
)
from bus_core.loops import ClientLoops, LoopState
from bus_core.message_path import ServedRpc
from bus_core.messages import EventMessage
from bus_core.plugins import PluginManager
from bus_core.registry import ApiRegistry
from bus_core.runtime import (
    LoopThread,
    call_user_code,
    is_async_callable,
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
        self.registry = ApiRegistry()
        self.apis = self.registry.apis  # registered here: served, and their events fired
        self.listeners: dict[str, Listener] = {}
        self.start_functions: list[tuple[Callable[..., Any], bool]] = []
        self.stop_functions: list[tuple[Callable[..., Any], bool]] = []
        self.scheduled: list[ScheduledTask] = []
        self.loops = ClientLoops(self)
        self._background_worker: Worker | None = None
        self.running_workers: list[Worker] = []
        self.send_tracebacks = bool(config.bus["send_tracebacks"])
        self._warned_blocking = False
        self.closed = False
        _CLIENTS.add(self)

    def _after_fork(self) -> None:
        """In a forked child (gunicorn --preload, multiprocessing): the parent's loop thread,
        thread pool and connections are not this process's; start afresh on first use."""
        _INHERITED.append((self.loops.forget(), self._background_worker,
                           list(self.running_workers)))
        self._background_worker = None
        self.running_workers = []

    def __repr__(self) -> str:
        return (f"<BusClient service={self.config.service_name!r} "
                f"process={self.config.process_name!r} apis={sorted(self.apis)}>")

    @property
    def described(self) -> dict[str, ApiDefinition]:
        """Remote APIs the enabled plugins described (`describe_apis`)."""
        return self.registry.described

    @property
    def service_name(self) -> str:
        return self.config.service_name

    @property
    def process_name(self) -> str:
        return self.config.process_name

    # -- registration ------------------------------------------------------------------

    def register_api(self, api: Api) -> Api:
        """Serve (and be allowed to fire the events of) `api` on this client."""
        return self.registry.register(api)

    def api_definition(self, api_name: str) -> ApiDefinition | None:
        return self.registry.definition(api_name)

    def known_definition(self, api_name: str) -> ApiDefinition | None:
        """The API as registered here, else as last described by a plugin: for help and
        completion only (arguments are checked against registered APIs alone)."""
        return self.registry.known(api_name)

    async def describe_apis(self) -> dict[str, ApiDefinition]:
        """Every API this client knows of: those registered here and those enabled plugins
        describe (bus-schema: the shared schema). Remembered for `dir()` and completion."""
        return self.registry.remember_described(await self.hooks.describe_apis(self))

    def procedure(self, api_name: str, procedure_name: str) -> ServedRpc | None:
        """A locally served RPC: its method and how a call's arguments are checked."""
        return self.registry.procedures.get((api_name, procedure_name))

    def check_rpc_arguments(self, api_name: str, procedure_name: str,
                            kwargs: dict[str, Any]) -> RpcDefinition | None:
        """Refuse unknown RPCs and bad arguments of a locally known API before sending."""
        return self.registry.check_call(api_name, procedure_name, kwargs)

    def event_definition(self, api_name: str, event_name: str, *,
                         required: bool) -> EventDefinition | None:
        return self.registry.event_definition(api_name, event_name, required=required)

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
        start_in_running_workers(self, listener)
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
        await started_in_running_workers(self, listener)
        return listener

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
        return await self.loops.state()

    @property
    def _states(self) -> Any:
        return self.loops.states

    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The thread pool that runs sync handlers, procedures and tasks."""
        return self.loops.executor

    @property
    def loop_thread(self) -> LoopThread:
        """The background event loop that sync calls and fires run on."""
        return self.loops.loop_thread

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of this client from sync code on any thread and return its result."""
        return self.loops.run_sync(coro)

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
        messages = await outgoing.fire_async(self, api_name, event_name, [kwargs], bus_options)
        return messages[0]

    async def fire_many_async(self, api_name: str, event_name: str,
                              many: Iterable[dict[str, Any]],
                              bus_options: dict[str, Any] | None = None) -> list[EventMessage]:
        """Fire one event per kwargs dict of `many`, in order, sent together (one round trip
        on Redis). Every one is checked before any is sent."""
        return await outgoing.fire_async(self, api_name, event_name, outgoing.kwargs_dicts(many),
                                         bus_options)

    def fire(self, api_name: str, event_name: str, kwargs: dict[str, Any],
             bus_options: dict[str, Any] | None = None) -> EventMessage:
        return outgoing.fire(self, api_name, event_name, [kwargs], bus_options)[0]

    def fire_many(self, api_name: str, event_name: str, many: Iterable[dict[str, Any]],
                  bus_options: dict[str, Any] | None = None) -> list[EventMessage]:
        return outgoing.fire(self, api_name, event_name, outgoing.kwargs_dicts(many),
                             bus_options)

    async def send_event_async(self, message: EventMessage,
                               bus_options: dict[str, Any] | None = None, *,
                               fire_hooks: bool = True) -> None:
        """Send a built event to its event transport, with the fire hooks around it. An
        outbox relay sends an event it took with `fire_hooks=False`: its hooks ran when it
        was fired (so a tracer's span and headers belong to the request that fired it)."""
        await outgoing.send_event(self, message, bus_options, "all" if fire_hooks else "none")

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
        await self.loops.close_state(loop)
        thread = self.loops.thread
        if thread is not None and loop is not thread.loop:
            await asyncio.wrap_future(thread.submit(self.close_async()))

    def close(self) -> None:
        """Stop the background worker and loop, close transports and the thread pool.
        Sync calls still in flight on other threads fail with BusError; later ones too."""
        with self.loops.lock:
            if self.closed:
                return
            self.closed = True
        worker, self._background_worker = self._background_worker, None
        self.loops.shut_down(worker.stop() if worker is not None else None)

    def __enter__(self) -> BusClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


from bus_core.paths import Bus, BusPath  # noqa: E402  (re-exported: bus_core.client.Bus)
