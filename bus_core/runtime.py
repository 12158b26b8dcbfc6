"""Where code runs: the client's background event loop, the thread pool for sync user code,
and the bridge that lets sync callers on any thread use async internals."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import sys
import threading
import typing
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from bus_core.errors import BusError

T = TypeVar("T")
_CLOSED_CHECK = 1.0  # seconds between checks that a waited-on loop still runs


def loop_factory(kind: str = "asyncio") -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the event loops of `bus run` and of the client's background thread:
    asyncio's own, or (`bus.event_loop: uvloop`) uvloop's."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise BusError("bus.event_loop is uvloop, but uvloop is not installed: "
                           "pip install 'bus-core[fast]' (or uvloop)") from None
        return typing.cast(Callable[[], asyncio.AbstractEventLoop], uvloop.new_event_loop)
    if kind != "asyncio":
        raise BusError(f"bus.event_loop: {kind!r} is not an event loop Bus knows: use "
                       "asyncio or uvloop")
    return asyncio.new_event_loop


def run_main(coro: Coroutine[Any, Any, T], kind: str = "asyncio") -> T:
    """`asyncio.run(coro)` on a loop of `kind` (see `loop_factory`)."""
    factory = loop_factory(kind)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)
    loop = factory()  # pragma: no cover - Python 3.10
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


class LoopThread:
    """An event loop running forever in a daemon thread, for sync callers."""

    def __init__(self, name: str,
                 factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
                 ) -> None:
        self.loop = factory()
        self.stopping = False
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            self.stopping = True
            # Whatever is still running (a call from another thread while the client closes)
            # is cancelled, so its caller gets an error instead of waiting forever.
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on this loop and block the calling thread for its result."""
        if self.loop.is_closed() or not self.thread.is_alive():
            coro.close()
            raise BusError("this bus client is closed")
        try:
            future = self.submit(coro)
        except RuntimeError:  # the loop closed meanwhile
            coro.close()
            raise BusError("this bus client is closed") from None
        try:
            # Not future.result(timeout): its TimeoutError could not be told from the call's
            # own (RpcTimeout is one). A call handed over just as the loop shut down is never
            # run: notice that instead of waiting for ever.
            while not concurrent.futures.wait([future], timeout=_CLOSED_CHECK).done:
                if self.loop.is_closed() or not self.thread.is_alive():
                    future.cancel()
                    raise BusError("this bus client is closed")
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise
        except concurrent.futures.CancelledError:
            if not self.stopping:
                raise
            raise BusError("the bus client was closed while this call was in flight") from None

    def stop(self) -> None:
        self.stopping = True
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=5)


def run_in_fresh_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a new loop in a helper thread and wait for it: the way a
    sync call made on a loop's own thread avoids blocking that loop against itself."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bus-nested") as pool:
        return pool.submit(asyncio.run, coro).result()


async def call_user_code(fn: Callable[..., Any], is_async: bool,
                         executor: concurrent.futures.Executor, /,
                         *args: Any, **kwargs: Any) -> Any:
    """Await an async function in place; run a sync one in the thread pool."""
    if is_async:
        return await fn(*args, **kwargs)
    loop = asyncio.get_running_loop()
    # In the caller's context, so the handler's log lines know the message they are about.
    result = await loop.run_in_executor(
        executor, contextvars.copy_context().run, functools.partial(fn, *args, **kwargs))
    if inspect.isawaitable(result):
        result = await result
    return result


def is_async_callable(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004  (an object with async __call__)
    )


async def settle(value: Awaitable[T] | T) -> T:
    return await value if inspect.isawaitable(value) else value  # type: ignore[return-value]


def time_out(future: asyncio.Future[Any]) -> None:
    """Fail `future` with TimeoutError unless it is done: a `loop.call_later` callback that
    bounds a wait without the extra task `asyncio.wait_for` costs per call."""
    if not future.done():
        future.set_exception(TimeoutError())
