"""Serving: the RPC loop, the listeners, scheduled tasks, start/stop functions, and the
drain on SIGINT/SIGTERM.

A worker never dies on a message someone else sent: a call that cannot be decoded or run gets
an error result (when it has a return path), an event that cannot be handled is redelivered,
acknowledged or dead-lettered by policy, and a transport failure is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import traceback
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from bus_core.errors import (
    InvalidMessage,
    MalformedMessage,
    MessageTooLarge,
    TransportUnavailable,
    WireError,
)
from bus_core.logs import Throttle, about, current_message, detached, message_fields
from bus_core.message_path import error_result
from bus_core.messages import EventMessage, ResultMessage, RpcMessage
from bus_core.plugins import now
from bus_core.procedures import execute
from bus_core.runtime import run_main
from bus_core.scheduling import next_cron_time
from bus_core.transports import EventConsumer, EventDelivery, MalformedRpc, RpcConsumer

if TYPE_CHECKING:
    from bus_core.client import BusClient
    from bus_core.listeners import Listener
    from bus_core.scheduling import ScheduledTask

logger = logging.getLogger("bus.worker")
_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
MAX_LOGGED_NAMES = 1000  # undeclared parameter names logged once each, at most this many
_UNKNOWN: Any = object()  # not yet looked up (None: looked up, the event is not known)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class _Loop:
    """A consuming loop that can be stopped between items: it is cancelled only while it
    waits for input, so nothing it has already taken is dropped."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.waiting = False
        self.task: asyncio.Task[None] | None = None

    async def wait_for(self, awaitable: Awaitable[Any]) -> Any:
        self.waiting = True
        try:
            return await awaitable
        finally:
            self.waiting = False


class _Slots:
    """Room for in-flight work: the loops receive only as much as they can start now."""

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._changed = asyncio.Event()

    async def wait(self) -> int:
        while self.free <= 0:
            self._changed.clear()
            await self._changed.wait()
        return self.free

    def take(self) -> None:
        self.free -= 1

    def release(self) -> None:
        self.free += 1
        self._changed.set()


class _Acker:
    """Collects acknowledgements and sends them in batches (one call per loop turn)."""

    def __init__(self, consumer: EventConsumer) -> None:
        self.consumer = consumer
        self.pending: list[EventDelivery] = []
        self.flushing: asyncio.Task[None] | None = None

    def ack(self, delivery: EventDelivery) -> None:
        self.pending.append(delivery)
        if self.flushing is None:
            self.flushing = asyncio.get_running_loop().create_task(detached(self._flush()))

    async def _flush(self) -> None:
        # No sleep(0) first: this task runs in the loop turn after the first ack, by which
        # time every handler that ran in the same turn as that one has added its own.
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    await self.consumer.acknowledge(batch)
                except Exception:
                    logger.exception("acknowledging %d event(s) failed; they will be "
                                     "redelivered", len(batch))
        finally:
            self.flushing = None

    async def drain(self) -> None:
        if self.flushing is not None:
            await self.flushing
        if self.pending:
            await self._flush()


class Worker:
    """Serves a client's APIs, runs its listeners and scheduled tasks."""

    def __init__(self, client: BusClient, *, rpcs: bool = True, events: bool = True,
                 tasks: bool = True) -> None:
        self.client = client
        self.serve_rpcs = rpcs
        self.run_listeners = events
        self.run_tasks = tasks
        self.stopping = False
        self.failure: BaseException | None = None
        self._loops: list[_Loop] = []
        self._inflight: set[asyncio.Task[Any]] = set()
        self._consumers: list[RpcConsumer | EventConsumer] = []
        self._ackers: list[_Acker] = []
        self._failed: asyncio.Future[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._run_waits = False
        self._served: list[str] | None = None
        self._stopper: asyncio.Task[None] | None = None
        self.started = False
        self.now: Callable[[], datetime] = _utc_now  # wall clock for cron (tests inject)
        self.lock_owner = f"{client.process_name}:{uuid.uuid4().hex[:12]}"
        # Seconds a single task's lock outlives a crashed holder (kept alive every third).
        self.lock_ttl = float(client.config.bus["single_task_lock_ttl"])
        self.send_tracebacks = bool(client.config.bus["send_tracebacks"])
        self.strict_parameters = bool(client.config.bus["strict_parameters"])
        self._result_failures = Throttle(logger)
        self._malformed_calls = Throttle(logger)
        # (api, event) -> the parameter names the event declares
        self._declared: dict[tuple[str, str], frozenset[str] | None] = {}
        self._known_generation = -1
        self._undeclared_seen: set[tuple[str, str, str]] = set()

    @property
    def api_names(self) -> list[str]:
        """The APIs whose RPCs this worker serves: those registered when it started (an API
        a plugin registers later, only to fire its events, is not served)."""
        if not self.serve_rpcs:
            return []
        return list(self._served) if self._served is not None else sorted(self.client.apis)

    @property
    def listener_names(self) -> list[str]:
        return sorted(self.client.listeners) if self.run_listeners else []

    # -- start and stop --------------------------------------------------------------------

    async def start(self) -> None:
        """Open every consumer, run the start functions, then begin consuming. A start that
        fails part way (a listener's transport refuses, a plugin refuses) undoes itself: no
        loop it had begun keeps running."""
        try:
            await self._start()
        except BaseException:
            await self._abandon_start()
            raise

    async def _start(self) -> None:
        client = self.client
        state = await client.state()
        self.loop = asyncio.get_running_loop()
        self._failed = self.loop.create_future()
        for function, is_async in client.start_functions:
            await client.call_user_code(function, is_async)
        self._served = sorted(client.apis)
        if self.serve_rpcs and self._served:
            by_transport: dict[int, tuple[Any, list[str]]] = {}
            for api_name in self._served:
                transport = await state.transport("rpc", api_name)
                by_transport.setdefault(id(transport), (transport, []))[1].append(api_name)
            for transport, api_names in by_transport.values():
                consumer = await self._opened(f"RPCs of {', '.join(api_names)}",
                                              lambda t=transport, n=api_names:
                                              t.open_consumer(n))
                consumer.idempotent_rpcs = frozenset(
                    (api_name, name) for api_name in api_names
                    for name in client.apis[api_name].definition.rpcs
                    if client.is_idempotent(api_name, name))
                self._consumers.append(consumer)
                limit = min(client.config.api(n).max_concurrent_rpcs for n in api_names)
                self._spawn_loop(f"rpcs:{','.join(api_names)}",
                                 lambda loop, c=consumer, n=limit: self._rpc_loop(loop, c, n))
        if self.run_listeners:
            for listener in client.listeners.values():
                await self._start_listener(state, listener)
        if self.run_tasks:
            for task in client.scheduled:
                kind = "cron" if task.cron is not None else "every"
                self._spawn_loop(f"{kind}:{task.name}",
                                 lambda loop, t=task: self._scheduled_loop(loop, t))
        self.started = True
        client.running_workers.append(self)
        try:
            await client.hooks.worker_started(client, self)
        except BaseException:
            # A plugin refused to let the worker run (e.g. its port is taken): undo the
            # start, and tell the plugins that did start, so they can release what they hold.
            await self._abandon_start()
            await client.hooks.worker_stopping(client, self)
            raise
        logger.info("worker %s/%s serving APIs [%s], listeners [%s]", client.service_name,
                    client.process_name, ", ".join(self.api_names),
                    ", ".join(self.listener_names))

    async def add_listener(self, listener: Listener) -> None:
        """Start a listener registered after this worker started (on the worker's loop)."""
        if self.run_listeners and not self.stopping:
            await self._start_listener(await self.client.state(), listener)

    async def _start_listener(self, state: Any, listener: Listener) -> None:
        by_transport: dict[int, tuple[Any, list[tuple[str, str]]]] = {}
        for api_name, event_name in listener.listen_for:
            transport = await state.transport("event", api_name)
            by_transport.setdefault(id(transport), (transport, []))[1].append(
                (api_name, event_name))
        for transport, pairs in by_transport.values():
            consumer = await self._opened(
                f"listener {listener.name}",
                lambda t=transport, p=pairs: t.open_consumer(p, listener.name, listener.since))
            self._consumers.append(consumer)
            acker = _Acker(consumer)
            self._ackers.append(acker)
            self._spawn_loop(
                f"listener:{listener.name}",
                lambda loop, c=consumer, a=acker: self._event_loop(loop, listener, c, a),
            )

    async def _opened(self, what: str, open_consumer: Callable[[], Awaitable[Any]]) -> Any:
        """Open a consumer, waiting with backoff while the transport cannot be reached (a
        worker started before its Redis comes up waits for it rather than exiting)."""
        attempt = 0
        while True:
            try:
                return await open_consumer()
            except TransportUnavailable as exc:
                delay = _RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)]
                attempt += 1
                logger.warning("%s cannot start yet (%s); retrying in %gs", what, exc, delay)
                await asyncio.sleep(delay)

    def _spawn_loop(self, name: str, body: Callable[[_Loop], Awaitable[None]]) -> None:
        loop = _Loop(name)
        loop.task = asyncio.get_running_loop().create_task(body(loop), name=f"bus:{name}")
        self._loops.append(loop)

    async def stop(self) -> None:
        """Stop taking work, let in-flight work finish (up to `bus.drain_timeout`), settle
        acknowledgements, run the stop hooks and functions, close consumers."""
        if self.stopping:
            return
        self.stopping = True
        client = self.client
        if self in client.running_workers:
            client.running_workers.remove(self)
        for loop in self._loops:
            if loop.waiting and loop.task is not None:
                loop.task.cancel()
        loop_tasks = [loop.task for loop in self._loops if loop.task is not None]
        drain_timeout = float(client.config.bus["drain_timeout"])
        if loop_tasks:  # a loop busy dispatching a received batch finishes dispatching it
            await asyncio.wait(loop_tasks, timeout=drain_timeout)
        if self._inflight:
            logger.info("draining %d in-flight message(s)", len(self._inflight))
            _, pending = await asyncio.wait(set(self._inflight), timeout=drain_timeout)
            if pending:
                logger.warning(
                    "%d handler(s) did not finish within bus.drain_timeout (%gs) and were "
                    "abandoned (async ones cancelled; a sync one's thread runs on until it "
                    "returns); their events stay unacknowledged and will be redelivered",
                    len(pending), drain_timeout)
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
        for task in loop_tasks:
            if not task.done():
                task.cancel()
        for acker in self._ackers:
            await acker.drain()
        await client.hooks.worker_stopping(client, self)
        for function, is_async in client.stop_functions:
            try:
                await client.call_user_code(function, is_async)
            except Exception:
                logger.exception("an on_stop function raised")
        for consumer in self._consumers:
            try:
                await consumer.close()
            except Exception:
                logger.exception("closing a consumer failed")
        logger.info("worker %s/%s stopped", client.service_name, client.process_name)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Start, serve until `stop` is set or a listener fails with on_error=stop, stop."""
        self._run_waits = True
        stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
        starting = asyncio.ensure_future(self.start())
        try:
            if stopped is not None:  # a stop request may come while start waits for Redis
                await asyncio.wait([starting, stopped], return_when=asyncio.FIRST_COMPLETED)
                if not starting.done():
                    starting.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await starting
                    return
            await starting
            assert self._failed is not None
            waiters: list[asyncio.Future[Any]] = [self._failed]
            if stopped is not None:
                waiters.append(stopped)
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopped is not None:
                stopped.cancel()
            if starting.done() and not starting.cancelled() and starting.exception() is None:
                await self.stop()
            else:
                await self._abandon_start()

    async def _abandon_start(self) -> None:
        """A start that was cancelled or failed: close what it had opened."""
        self.stopping = True
        if self in self.client.running_workers:
            self.client.running_workers.remove(self)
        tasks = [loop.task for loop in self._loops if loop.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:  # let the loops end before their consumers are closed under them
            await asyncio.gather(*tasks, return_exceptions=True)
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                await consumer.close()
        self._loops.clear()
        self._consumers.clear()

    def fail(self, error: BaseException) -> None:
        """Stop the worker because of `error` (a listener with on_error='stop')."""
        if self.failure is None:
            self.failure = error
            logger.error("stopping the worker: a listener with on_error='stop' failed: %s: %s",
                         type(error).__name__, error)
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(None)
        if not self._run_waits:  # started with start(), not run(): nobody waits on _failed
            self._stopper = asyncio.get_running_loop().create_task(detached(self.stop()))

    def _track(self, coro: Awaitable[Any], release: Callable[[], None] | None = None) -> None:
        """Run `coro` as a task of its own, in flight until it ends (stop() drains them)."""
        self._inflight.add(asyncio.get_running_loop().create_task(self._run(coro, release)))

    async def _run(self, coro: Awaitable[Any], release: Callable[[], None] | None) -> None:
        # The task settles its own accounts as it ends: no done callback to schedule.
        try:
            await coro
        finally:
            self._inflight.discard(asyncio.current_task())  # type: ignore[arg-type]
            if release is not None:
                release()

    async def _receive(self, loop: _Loop, receive: Callable[[], Awaitable[Any]]) -> Any:
        """Receive with retry and backoff on transport failures; None once stopping."""
        attempt = 0
        while not self.stopping:
            try:
                return await loop.wait_for(receive())
            except asyncio.CancelledError:
                if self.stopping:
                    return None
                raise
            except Exception as exc:
                if self.stopping:  # a read torn down by the stop itself: nothing to report
                    return None
                delay = _RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)]
                attempt += 1
                logger.warning("%s: receiving failed (%s: %s); retrying in %gs", loop.name,
                               type(exc).__name__, exc, delay)
                try:
                    await loop.wait_for(asyncio.sleep(delay))
                except asyncio.CancelledError:
                    if self.stopping:
                        return None
                    raise
        return None

    # -- RPCs ------------------------------------------------------------------------------

    async def _consume(self, loop: _Loop, consumer: RpcConsumer | EventConsumer, limit: int,
                       handle: Callable[[Any], Awaitable[None]],
                       received: Callable[[Any], Awaitable[None]] | None = None) -> None:
        """Receive what there is room for, hand each item to `handle` as a task; a received
        batch is always dispatched whole (popped calls are ours alone; events not yet
        settled would only wait for their redelivery). `received(batch)` runs first, for
        each non-empty batch; the tasks start in the context it leaves."""
        slots = _Slots(limit)
        while not self.stopping:
            free = await loop.wait_for(slots.wait())
            batch = await self._receive(loop, lambda n=free: consumer.receive(n))
            if batch is None:
                return
            if batch and received is not None:
                await received(batch)
            for item in batch:
                slots.take()
                self._track(handle(item), slots.release)

    def _rpc_loop(self, loop: _Loop, consumer: RpcConsumer, limit: int) -> Awaitable[None]:
        return self._consume(loop, consumer, limit, self._serve_rpc)

    async def _serve_rpc(self, item: RpcMessage | MalformedRpc) -> None:
        if isinstance(item, MalformedRpc):
            await self._answer_malformed(item)
            return
        about(item)  # this task's log lines (the procedure's too) are about the call
        reply = await execute(self.client, item, with_traceback=self.send_tracebacks)
        await self._send_result(item, reply)

    async def _send_result(self, message: RpcMessage, reply: ResultMessage) -> None:
        state = await self.client.state()
        transport = await state.transport("result", message.api_name)
        try:
            try:
                await transport.send_result(message, reply, message.return_path)
            except (MalformedMessage, MessageTooLarge) as exc:
                if reply.error:
                    raise
                # The result itself cannot travel: tell the caller why instead.
                await transport.send_result(message, self._error_result(message, exc),
                                            message.return_path)
        except Exception as exc:
            # One line, throttled: a peer sending calls with unusable return paths must not
            # flood the log with tracebacks.
            self._result_failures.warning(
                "sending the result of %s.%s() to %r failed: %s: %s", message.api_name,
                message.procedure_name, message.return_path, type(exc).__name__, exc,
                extra={"bus": message_fields(message)})

    def _error_result(self, message: RpcMessage, error: BaseException) -> ResultMessage:
        return error_result(message, error, with_traceback=self.send_tracebacks)

    async def _answer_malformed(self, item: MalformedRpc) -> None:
        self._malformed_calls.warning(
            "received a malformed RPC call: %s", item.problem,
            extra={"bus": {"message_id": item.id}} if item.id else None)
        if item.return_path:  # the caller can still be told, rather than left to time out
            stub = RpcMessage(api_name="?", procedure_name="?", kwargs={},
                              id=item.id or "unknown", return_path=item.return_path)
            error = MalformedMessage(item.problem)
            await self._send_result(stub, self._error_result(stub, error))

    # -- events ----------------------------------------------------------------------------

    def _event_loop(self, loop: _Loop, listener: Listener, consumer: EventConsumer,
                    acker: _Acker) -> Awaitable[None]:
        first_api = self.client.config.api(listener.listen_for[0][0])
        ordered = first_api.ordered if listener.ordered is None else listener.ordered
        limit = 1 if ordered else (listener.max_concurrency or first_api.max_concurrent_events)
        client, hooks = self.client, self.client.hooks
        return self._consume(loop, consumer, limit,
                             lambda delivery: self._handle_event(listener, consumer, acker,
                                                                 delivery),
                             # a dict lookup per batch when no plugin implements the hook
                             lambda batch: hooks.after_events_received(client, listener.name,
                                                                       batch))

    def _declared_parameters(self, api_name: str, event_name: str) -> frozenset[str] | None:
        """The parameters the event declares, from its API's definition (registered or
        described by a shared schema); None when this process does not know the event (then
        nothing can be called undeclared: a handler that takes fewer parameters than the
        sender sends is not the sender's fault)."""
        key = (api_name, event_name)
        registry = self.client.registry
        if registry.generation != self._known_generation:  # an API registered or described
            self._known_generation = registry.generation
            self._declared.clear()
        if key in self._declared:
            return self._declared[key]
        definition = registry.known(api_name)
        event = definition.events.get(event_name) if definition is not None else None
        names = None if event is None else frozenset(p.name for p in event.parameters)
        # An API not known now is asked again once plugins describe APIs anew, or registered.
        if definition is not None or len(self._declared) < MAX_LOGGED_NAMES:
            self._declared[key] = names
        return names

    async def _undeclared(self, listener: Listener, message: EventMessage,
                          declared: frozenset[str]) -> None:
        """A parameter the event does not declare: refused under bus.strict_parameters,
        else delivered without it (Lightbus peers may send more), logged once per
        API/event/parameter and reported to the plugins (metrics count it)."""
        extra = sorted(set(message.kwargs) - declared)
        if self.strict_parameters:
            raise WireError(f"event {message.canonical_name} carries parameter(s) "
                            f"{', '.join(map(repr, extra))} that it does not declare "
                            "(bus.strict_parameters: true)")
        for name in extra:
            seen = (message.api_name, message.event_name, name)
            if seen in self._undeclared_seen or len(self._undeclared_seen) >= MAX_LOGGED_NAMES:
                continue
            self._undeclared_seen.add(seen)
            logger.warning("event %s carries parameter %r that it does not declare; "
                           "delivered without it (this is logged once; "
                           "bus.strict_parameters: true dead-letters such events)",
                           message.canonical_name, name)
        await self.client.hooks.on_undeclared_parameters(self.client, message, listener.name,
                                                          extra)

    async def _handle_event(self, listener: Listener, consumer: EventConsumer, acker: _Acker,
                            delivery: EventDelivery) -> None:
        client = self.client
        message = delivery.message
        if message is None:
            logger.warning("listener %s: dead-lettering malformed entry %s on %s: %s",
                           listener.name, delivery.native_id, delivery.stream, delivery.problem,
                           extra={"bus": {"listener_name": listener.name}})
            await consumer.dead_letter(delivery, f"malformed: {delivery.problem}")
            return
        key = (message.api_name, message.event_name)
        if key not in listener.listen_for:
            acker.ack(delivery)  # another event on a shared stream
            return
        # This task's log lines are about it (`about()`, built in place: once per event).
        current_message.set({"api_name": message.api_name, "message_id": message.id,
                             "event_name": message.event_name,
                             "listener_name": listener.name})
        hooks = client.hooks
        started = now()
        error: BaseException | None = None
        try:
            declared = self._declared.get(key, _UNKNOWN)
            if declared is _UNKNOWN or \
                    self.client.registry.generation != self._known_generation:
                declared = self._declared_parameters(*key)
            if declared is not None and not declared.issuperset(message.kwargs):
                await self._undeclared(listener, message, declared)
            if hooks.implemented("bus_before_event_handling"):
                await hooks.before_event_handling(client, message, listener.name,
                                                  delivery.delivery_count)
            kwargs = listener.arguments.select(message, listener.name)
            if listener.is_async:
                await listener.handler(message, **kwargs)
            else:
                await client.call_user_code(listener.handler, False, message, **kwargs)
        except Exception as exc:
            error = exc
        if hooks.implemented("bus_after_event_handling"):
            await hooks.after_event_handling(client, message, listener.name, error,
                                             now() - started)
        if error is None:
            acker.ack(delivery)
            return
        api_config = client.config.api(message.api_name)
        action = self._action_for(listener, api_config, delivery, error)
        logger.warning(
            "listener %s failed on %s (id %s, delivery %d): %s: %s -> %s", listener.name,
            message.canonical_name, message.id, delivery.delivery_count, type(error).__name__,
            error, action, extra={"bus": message_fields(message, listener_name=listener.name)},
        )
        await client.hooks.on_handler_error(client, message, listener.name, error, action)
        try:
            if action == "redeliver":
                await consumer.redeliver(delivery, api_config.redelivery_delay)
            elif action == "dead_letter":
                reason = (f"listener {listener.name!r} failed after {delivery.delivery_count} "
                          f"deliveries: "
                          + "".join(traceback.format_exception_only(type(error), error)).strip())
                await consumer.dead_letter(delivery, reason)
            elif action == "acknowledge":
                acker.ack(delivery)
            else:  # stop: leave it pending for the next run
                self.fail(error)
        except Exception:
            logger.exception("settling a failed event %s failed; it will be redelivered",
                             message.id,
                             extra={"bus": message_fields(message, listener_name=listener.name)})

    @staticmethod
    def _action_for(listener: Listener, api_config: Any, delivery: EventDelivery,
                    error: BaseException) -> str:
        if isinstance(error, InvalidMessage):
            return "dead_letter"  # retrying cannot fix a message that does not fit
        policy = listener.on_error or api_config.on_handler_error
        if policy == "redeliver" and delivery.delivery_count >= api_config.max_deliveries:
            return "dead_letter"
        return policy

    # -- scheduled tasks -------------------------------------------------------------------

    async def _scheduled_loop(self, loop: _Loop, task: ScheduledTask) -> None:
        clock = asyncio.get_running_loop().time
        lock = _TaskLock(self, task) if task.single else None
        last_fire: datetime | None = None
        delay = 0.0 if task.also_run_immediately else None
        try:
            while not self.stopping:
                if delay is None:
                    if task.cron is not None:
                        moment = self.now()
                        last_fire = next_cron_time(task.cron, task.tz,
                                                   max(moment, last_fire or moment))
                        delay = max(0.0, (last_fire - moment).total_seconds())
                    else:
                        delay = task.seconds
                try:
                    await loop.wait_for(asyncio.sleep(delay))
                except asyncio.CancelledError:
                    if self.stopping:
                        return
                    raise
                started = clock()
                if lock is None or await lock.acquire():
                    await self._run_task(task)
                delay = None if task.cron is not None else max(
                    0.0, task.seconds - (clock() - started))
        finally:
            if lock is not None:
                await lock.release()

    async def _run_task(self, task: ScheduledTask) -> None:
        try:
            await self.client.call_user_code(task.function, task.is_async)
        except Exception:
            when = (f"at the next time of {task.cron!r}" if task.cron is not None
                    else f"in {task.seconds:g}s")
            logger.exception("scheduled task %s raised; it runs again %s", task.name, when)


class _TaskLock:
    """The lock that keeps a `single` task in one process of the service: taken at a run,
    then kept alive (re-acquired every third of its TTL) while this worker runs, so the
    other processes skip their runs; it expires `bus.single_task_lock_ttl` seconds after a
    crash."""

    def __init__(self, worker: Worker, task: ScheduledTask) -> None:
        self.worker = worker
        self.task = task
        self.name = task.name
        self.owner = worker.lock_owner
        self.ttl = worker.lock_ttl
        self.held = False
        self.unsupported = False
        self._keeper: asyncio.Task[None] | None = None

    async def _transport(self) -> Any:
        state = await self.worker.client.state()
        return await state.transport("rpc", "default")

    async def _take(self) -> bool:
        transport = await self._transport()
        return bool(await transport.try_lock(self.name, self.owner, self.ttl))

    async def acquire(self) -> bool:
        """True when this process may run the task now."""
        if self.unsupported:
            return False
        try:
            self.held = await self._take()
        except NotImplementedError:
            self.unsupported = True
            logger.error("scheduled task %s is single=True but the RPC transport has no "
                         "locks; it will not run", self.name)
            return False
        except Exception as exc:
            logger.warning("scheduled task %s skipped: taking its lock failed (%s: %s)",
                           self.name, type(exc).__name__, exc)
            self.held = False
            return False
        if not self.held:
            logger.debug("scheduled task %s skipped: another process holds its lock",
                         self.name)
        elif self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(
                self._keep_alive(), name=f"bus:lock:{self.name}")
        return self.held

    async def _keep_alive(self) -> None:
        while self.held:
            await asyncio.sleep(self.ttl / 3)
            try:
                self.held = await self._take()
            except Exception as exc:
                logger.warning("keeping the lock of scheduled task %s alive failed (%s: %s)",
                               self.name, type(exc).__name__, exc)
        logger.debug("scheduled task %s: this process no longer holds its lock", self.name)

    async def release(self) -> None:
        """Stop the keep-alive and let another process take the lock at once."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._keeper
        if self.held:
            self.held = False
            try:
                await (await self._transport()).unlock(self.name, self.owner)
            except Exception:
                logger.exception("releasing the lock of scheduled task %s failed", self.name)


def run_until_signalled(worker: Worker, event_loop: str = "asyncio") -> int:
    """Run `worker` on a new loop in this thread until SIGINT/SIGTERM; drain; return the exit
    code (0, or 1 when a listener stopped the worker). A second signal cancels the drain."""
    client = worker.client

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal(signum: int) -> None:
            if stop.is_set():
                logger.warning("second %s: stopping without waiting for in-flight work",
                               signal.Signals(signum).name)
                for task in list(worker._inflight):
                    task.cancel()
                return
            logger.info("%s received: finishing in-flight work, then stopping",
                        signal.Signals(signum).name)
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await worker.run(stop)
        finally:
            await client.close_async()
        return 1 if worker.failure is not None else 0

    try:
        return run_main(main(), event_loop)
    finally:
        client.close()
