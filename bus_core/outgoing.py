"""What a client sends: RPC calls (and waiting for their results) and events.

Both paths run per message, so what can be worked out once is: the compiled argument plans
live in the client's registry (`ApiRegistry.outgoing_call` / `outgoing_event`), the
transports on the loop's state, and a hook nobody implements costs one dict lookup.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing
from collections.abc import Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from bus_core import procedures
from bus_core.deadlines import within
from bus_core.errors import BusError, InvalidArguments, RpcTimeout, RpcWorkerLost, WireError
from bus_core.logs import about, current_message
from bus_core.message_path import (
    fire_timeout_message,
    remote_error,
    rpc_timeout_message,
    timeout_for,
)
from bus_core.messages import EventMessage, ResultMessage, RpcMessage
from bus_core.plugins import now
from bus_core.values import from_wire

if TYPE_CHECKING:
    from bus_core.client import BusClient
    from bus_core.transports import EventTransport, ResultTransport, RpcTransport

T = TypeVar("T")
Hooks = Literal["all", "after", "none"]  # which fire hooks a send runs
logger = logging.getLogger("bus.client")


async def call_rpc(client: BusClient, api_name: str, procedure_name: str,
                   kwargs: dict[str, Any], bus_options: dict[str, Any] | None) -> Any:
    """Call `api_name.procedure_name(**kwargs)` and return its result (cast to the declared
    return type when the API is registered here); raise what the call raised remotely."""
    outgoing = client.registry.outgoing_call(api_name, procedure_name)
    api_config = client.config.api(api_name)
    timeout, timeout_source = timeout_for(bus_options, api_config.rpc_timeout,
                                          f"apis.{api_name}.rpc_timeout")
    message = RpcMessage(api_name=api_name, procedure_name=procedure_name,
                         kwargs=outgoing.wire(kwargs))
    state = await client.state()
    if api_config.local and client.procedure(api_name, procedure_name) is not None:
        obtain = _local_result(client, message, timeout)
    else:
        rpc_transport: RpcTransport = await state.transport("rpc", api_name)
        result_transport: ResultTransport = await state.transport("result", api_name)
        message.return_path = result_transport.get_return_path(message)
        obtain = _remote_result(client, message, rpc_transport, result_transport, timeout)
    token = about(message)  # what is logged until the result is in is about this call
    try:
        result = await _call(client, message, obtain, timeout, timeout_source)
    finally:
        current_message.reset(token)
    rpc = outgoing.rpc
    if rpc is not None and rpc.return_type is not typing.Any:
        try:
            return from_wire(result, rpc.return_type)
        except WireError as exc:
            raise WireError(f"{message.canonical_name}() returned a bad value: {exc}") \
                from None
    return result


async def _remote_result(client: BusClient, message: RpcMessage, rpc_transport: RpcTransport,
                         result_transport: ResultTransport, timeout: float) -> ResultMessage:
    """Send the call on the RPC transport and wait for its result."""
    started = now()
    await rpc_transport.call_rpc(message, timeout=timeout)
    try:
        return await result_transport.receive_result(message, message.return_path,
                                                     timeout=timeout)
    except RpcWorkerLost as lost:
        return await _after_worker_lost(client, message, rpc_transport, result_transport,
                                        lost, timeout - (now() - started))


async def _local_result(client: BusClient, message: RpcMessage,
                        timeout: float) -> ResultMessage:
    """Run the call here (`apis.<api>.local`), as a worker would, within its timeout."""
    return await within(
        procedures.execute(client, message, with_traceback=client.send_tracebacks), timeout)


async def _call(client: BusClient, message: RpcMessage,
                obtain: Coroutine[Any, Any, ResultMessage], timeout: float,
                timeout_source: str) -> Any:
    """The caller's side of a call around `obtain` (which gets its result): the hooks, the
    timeout and a remote error raised as RemoteError."""
    hooks = client.hooks
    try:
        await hooks.before_rpc_call(client, message)
    except BaseException:
        obtain.close()
        raise
    started = now()
    logger.debug("calling %s()", message.canonical_name)
    try:
        result = await obtain
    except RpcWorkerLost as lost:
        await hooks.after_rpc_call(client, message, None, lost, now() - started)
        raise
    except (TimeoutError, asyncio.TimeoutError):
        error: BaseException = RpcTimeout(rpc_timeout_message(
            message.api_name, message.procedure_name, timeout, timeout_source))
        await hooks.after_rpc_call(client, message, None, error, now() - started)
        raise error from None
    except BaseException as exc:
        await hooks.after_rpc_call(client, message, None, exc, now() - started)
        raise
    if result.error:
        error = remote_error(message, result)
        logger.debug("%s() raised %s remotely", message.canonical_name, error.remote_type)
        await hooks.after_rpc_call(client, message, None, error, now() - started)
        raise error
    logger.debug("%s() answered in %.1f ms", message.canonical_name, (now() - started) * 1000)
    try:
        await hooks.on_rpc_result_received(client, message, result.result)
    except BaseException as exc:
        await hooks.after_rpc_call(client, message, None, exc, now() - started)
        raise
    await hooks.after_rpc_call(client, message, result.result, None, now() - started)
    return result.result


async def _after_worker_lost(client: BusClient, message: RpcMessage,
                             rpc_transport: RpcTransport, result_transport: ResultTransport,
                             lost: RpcWorkerLost, remaining: float) -> ResultMessage:
    """The worker running `message` died. An idempotent call goes back on the queue (same
    id, a fresh expiry for the time left) for another worker, as often as workers die
    within its timeout; any other call fails now with RpcWorkerLost, never run twice."""
    where = f"{message.api_name}.{message.procedure_name}()"
    deadline = now() + remaining
    while True:
        idempotent = lost.idempotent or client.is_idempotent(message.api_name,
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


def event_message(client: BusClient, api_name: str, event_name: str,
                  kwargs: dict[str, Any]) -> EventMessage:
    """The event a fire sends: arguments checked against the registered API, defaults
    filled in, values in wire form. Raises before anything is sent."""
    outgoing = client.registry.outgoing_event(api_name, event_name)
    return EventMessage(api_name=api_name, event_name=event_name,
                        kwargs=outgoing.wire(kwargs), version=outgoing.version)


async def fire_async(client: BusClient, api_name: str, event_name: str,
                     many: list[dict[str, Any]], bus_options: dict[str, Any] | None
                     ) -> list[EventMessage]:
    """Fire one event per kwargs dict (each checked before any is sent), all sent together.
    With a plugin that may take events (an outbox), each is offered to it first, inside
    its fire hooks; the rest go to the transport."""
    messages = [event_message(client, api_name, event_name, kwargs) for kwargs in many]
    if bus_options is not None:  # refused before any hook or outbox sees the events
        timeout_for(bus_options, 1.0, "")
    if not client.hooks.implemented("bus_take_event"):
        await send_events(client, messages, bus_options)
        return messages
    unsent = [message for message in messages if not await _offered(client, message)]
    await send_events(client, unsent, bus_options, hooks="after")
    return messages


def fire(client: BusClient, api_name: str, event_name: str, many: list[dict[str, Any]],
         bus_options: dict[str, Any] | None) -> list[EventMessage]:
    """`fire_async` from sync code: the events are built, and offered to the plugins, on
    the caller's own thread (an outbox writes into that thread's open transaction); the
    rest are sent on the client's loop."""
    messages = [event_message(client, api_name, event_name, kwargs) for kwargs in many]
    if bus_options is not None:  # refused before any hook or outbox sees the events
        timeout_for(bus_options, 1.0, "")
    if not client.hooks.implemented("bus_take_event"):
        client.run_sync(send_events(client, messages, bus_options))
        return messages
    unsent = [message for message in messages if not _offered_here(client, message)]
    if unsent:
        client.run_sync(send_events(client, unsent, bus_options, hooks="after"))
    return messages


async def _offered(client: BusClient, message: EventMessage) -> bool:
    """Offer `message` to the plugins that may take it, inside its fire hooks: they run in
    the firing task, so a tracer's publish span (and the trace context it writes into the
    message's headers, which an outbox stores) belongs to the request that fired. A taken
    event's `bus_after_event_fire` follows the offer; whoever sends it later sends it
    without the hooks (`send_event_async(message, fire_hooks=False)`)."""
    hooks = client.hooks
    token = about(message)
    try:
        await hooks.before_event_fire(client, message)
        started = now()
        try:
            taken = hooks.take_event(client, message)
            if taken is not None and inspect.isawaitable(taken):
                taken = await taken
        except BaseException as exc:
            await hooks.after_event_fire(client, message, exc, now() - started)
            raise
        if taken:
            await hooks.after_event_fire(client, message, None, now() - started)
        return bool(taken)
    finally:
        current_message.reset(token)


def _offered_here(client: BusClient, message: EventMessage) -> bool:
    """`_offered` on a sync caller's own thread (a hook implementation that is a coroutine
    runs on the client's loop)."""
    hooks = client.hooks
    token = about(message)
    try:
        _settle_here(client, hooks.before_event_fire(client, message))
        started = now()
        try:
            taken = _taken_here(client, message)
        except BaseException as exc:
            _settle_here(client, hooks.after_event_fire(client, message, exc, now() - started))
            raise
        if taken:
            _settle_here(client, hooks.after_event_fire(client, message, None, now() - started))
        return taken
    finally:
        current_message.reset(token)


def _settle_here(client: BusClient, awaitable: Any) -> None:
    if inspect.iscoroutine(awaitable):  # an async hook implementation's work
        client.run_sync(awaitable)


def _taken_here(client: BusClient, message: EventMessage) -> bool:
    taken = client.hooks.take_event(client, message)
    if taken is not None and inspect.isawaitable(taken):
        if inspect.iscoroutine(taken):
            taken.close()
        raise BusError(f"firing {message.canonical_name}: a bus_take_event implementation "
                       "answered a sync fire() with an awaitable; use fire_async() there")
    return bool(taken)


def kwargs_dicts(many: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """What fire_many takes: an iterable of keyword-argument dicts (not one dict)."""
    if isinstance(many, dict) or not isinstance(many, Iterable):
        raise InvalidArguments("fire_many() takes a list of keyword-argument dicts, one per "
                               "event, e.g. fire_many([{'username': 'a'}, {'username': 'b'}])")
    items = list(many)
    for item in items:
        if not isinstance(item, dict):
            raise InvalidArguments(f"fire_many() takes dicts of keyword arguments, got "
                                   f"{type(item).__name__} {item!r:.60}")
    return items


async def send_event(client: BusClient, message: EventMessage,
                     bus_options: dict[str, Any] | None, hooks: Hooks = "all") -> None:
    """Send a built event to its event transport with the fire hooks around it, within
    `apis.<api>.event_fire_timeout` (or `bus_options`)."""
    await send_events(client, (message,), bus_options, hooks)


async def send_events(client: BusClient, messages: Sequence[EventMessage],
                      bus_options: dict[str, Any] | None, hooks: Hooks = "all") -> None:
    """Send built events of one API with the fire hooks around each (`hooks`: "after"
    when their before hooks already ran, "none" for an event an outbox relays); the
    transport gets them together (`fire_many`: one round trip on Redis) and the timeout
    covers them all."""
    if not messages:
        return
    first = messages[0]
    token = about(first) if len(messages) == 1 else None  # what is logged is about it
    try:
        await _send(client, messages, bus_options, hooks)
    finally:
        if token is not None:
            current_message.reset(token)


async def _send(client: BusClient, messages: Sequence[EventMessage],
                bus_options: dict[str, Any] | None, which: Hooks) -> None:
    first = messages[0]
    state = await client.state()
    transport: EventTransport = await state.transport("event", first.api_name)
    api_config = client.config.api(first.api_name)
    timeout, source = timeout_for(bus_options, api_config.event_fire_timeout,
                                  f"apis.{first.api_name}.event_fire_timeout")
    hooks = client.hooks if which != "none" else _NO_HOOKS
    if which == "all":
        for message in messages:
            await hooks.before_event_fire(client, message)
    sending = transport.send_event(first) if len(messages) == 1 \
        else transport.send_events(messages)
    started = now()
    try:
        await (within(sending, timeout) if transport.send_may_block else sending)
    except (TimeoutError, asyncio.TimeoutError):
        what = first.canonical_name if len(messages) == 1 \
            else f"{len(messages)} {first.canonical_name} events"
        error = BusError(fire_timeout_message(what, timeout, source))
        for message in messages:
            await hooks.after_event_fire(client, message, error, now() - started)
        raise error from None
    except BaseException as exc:
        for message in messages:
            await hooks.after_event_fire(client, message, exc, now() - started)
        raise
    for message in messages:
        await hooks.after_event_fire(client, message, None, now() - started)
    logger.debug("fired %d %s event(s), the first with native id %s", len(messages),
                 first.canonical_name, first.native_id)


class _NoHooks:
    """Fire hooks that do nothing: a relayed event had its own when it was fired."""

    @staticmethod
    def after_event_fire(*args: Any) -> Any:
        return _NOTHING

    before_event_fire = after_event_fire


class _Nothing:
    __slots__ = ()

    def __await__(self) -> Any:
        return iter(())


_NOTHING = _Nothing()
_NO_HOOKS = _NoHooks()
