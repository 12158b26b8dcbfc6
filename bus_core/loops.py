"""Where a client's code runs: one LoopState (its transports) per event loop that uses the
client, the background loop thread that sync callers hand their calls to, and the thread
pool for sync user code. All made on first use; in a forked child, made afresh."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
import warnings
import weakref
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from bus_core.errors import BusError
from bus_core.runtime import LoopThread, loop_factory, run_in_fresh_loop
from bus_core.transports import Transport

if TYPE_CHECKING:
    from bus_core.client import BusClient

T = TypeVar("T")
logger = logging.getLogger("bus.client")


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


class ClientLoops:
    """A client's loops and threads (see the module's docstring)."""

    def __init__(self, client: BusClient) -> None:
        self.client = client
        self.states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = (
            weakref.WeakKeyDictionary())
        self.lock = threading.Lock()
        self.thread: LoopThread | None = None
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._warned_blocking = False

    def forget(self) -> tuple[Any, ...]:
        """After a fork: start afresh; what the parent had, to be kept alive, never closed."""
        inherited = (self.thread, list(self.states.items()), self.pool)
        self.thread, self.pool = None, None
        self.states = weakref.WeakKeyDictionary()
        self.lock = threading.Lock()
        return inherited

    async def state(self) -> LoopState:
        """This loop's transports (created, and `bus_client_started` fired, on first use)."""
        loop = asyncio.get_running_loop()
        state = self.states.get(loop)
        if state is None:
            client = self.client
            if client.closed:
                raise BusError("this bus client is closed")
            state = self.states[loop] = LoopState(client)
            state.started = loop.create_future()
            try:
                await client.hooks.client_started(client)
            except BaseException as exc:
                state.started.set_exception(exc)
                del self.states[loop]
                raise
            state.started.set_result(None)
        elif not state.started.done():  # type: ignore[union-attr]
            await asyncio.shield(state.started)  # type: ignore[arg-type]
        return state

    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self.pool is None:
            with self.lock:
                if self.pool is None:
                    self.pool = concurrent.futures.ThreadPoolExecutor(
                        self.client.config.bus["handler_threads"],
                        thread_name_prefix="bus-handler")
        return self.pool

    @property
    def loop_thread(self) -> LoopThread:
        client = self.client
        if client.closed:
            raise BusError("this bus client is closed")
        if self.thread is None:
            with self.lock:
                if client.closed:
                    raise BusError("this bus client is closed")
                if self.thread is None:
                    self.thread = LoopThread(f"bus-{client.service_name}",
                                             loop_factory(client.config.bus["event_loop"]))
        return self.thread

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of the client from sync code on any thread; return its result."""
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
                stacklevel=5)
        return thread.run(coro)

    def _carry_context(self) -> bool:
        """Whether sync calls run in their caller's context (its context variables copied
        into the loop's task): only when a plugin watches outgoing messages (a tracer
        must see the caller's current span), so nobody else pays for the copy."""
        hooks = self.client.hooks
        return hooks.implemented("bus_before_rpc_call") \
            or hooks.implemented("bus_before_event_fire")

    async def _then_close_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return await coro
        finally:
            state = self.states.pop(asyncio.get_running_loop(), None)
            if state is not None:
                await state.close()

    async def close_state(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close `loop`'s transports, telling the plugins first."""
        state = self.states.pop(loop, None)
        if state is not None:
            await self.client.hooks.client_stopping(self.client)
            await state.close()

    def shut_down(self, worker_stop: Coroutine[Any, Any, None] | None) -> None:
        """Stop the background worker (`worker_stop`), close the background loop's
        transports, stop its thread and the thread pool, whatever fails on the way."""
        thread = self.thread
        try:
            if thread is not None and worker_stop is not None:
                thread.run(worker_stop)
            elif worker_stop is not None:
                worker_stop.close()
            if thread is not None and thread.loop in self.states:
                thread.run(self.close_state(thread.loop))
        finally:  # even when stopping the worker failed (or Ctrl-C): nothing left running
            if thread is not None:
                thread.stop()
            if self.pool is not None:
                self.pool.shutdown(wait=False, cancel_futures=True)


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
