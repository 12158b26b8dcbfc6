"""The `otel` plugin: an OpenTelemetry span for every fire, event handling, RPC call and RPC
execution, with W3C trace context carried in the messages.

    plugins:
      otel:
        enabled: true
        propagate: true   # send and read trace context in messages (false: local spans only)

Only `opentelemetry-api` is used: configure an SDK (tracer provider, exporter) as usual, or
nothing is recorded. Spans follow the OpenTelemetry semantic conventions for messaging
(`publish` / `receive` / `process`, destination = the stream or queue) and RPC
(`rpc.system`, `rpc.service` = the API, `rpc.method` = the procedure).

A span starts in a "before" hook and ends in the matching "after" hook (or, after a failure,
in `bus_on_handler_error`, so a redelivery or a dead letter is an event of it). Between the
two it is the current span of the task handling the message, so the handler's own spans, its
nested calls and fires, and its log lines (`trace_id`, `span_id`) belong to it.

A listener's batch gets a `receive` span when its consumer returns it
(`bus_after_events_received`): it links to each message's sender, and each message's
`process` span links to it, while keeping the sender's span as its parent.
"""

from __future__ import annotations

import contextvars
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from bus_core import EventMessage, RemoteError, hookimpl
from bus_core.logs import annotate

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bus_core.client import BusClient
    from bus_core.messages import RpcMessage
    from bus_core.transports import EventDelivery

PLUGIN_NAME = "otel"
TRACER_NAME = "bus_otel"
RPC_SYSTEM = "bus"  # no registered value fits; the wire protocol is Lightbus 1.x's
_MAX_CACHED = 4096  # destination names and settings cached; names come from the config

_tracer = trace.get_tracer(TRACER_NAME)  # a proxy until the application sets a provider


class _Active:
    """A span of one message, current in the task handling that message."""

    __slots__ = ("message", "otel_token", "span", "token")

    def __init__(self, message: object, span: trace.Span, otel_token: object) -> None:
        self.message = message
        self.span = span
        self.otel_token = otel_token
        self.token: contextvars.Token[_Active | None] | None = None


class _Batch:
    """A listener's received batch: the link to its receive span, and each message's sender
    context (extracted once, for the receive span's links and the process span's parent)."""

    __slots__ = ("link", "parents")

    def __init__(self, link: trace.Link,
                 parents: dict[int, tuple[EventMessage, otel_context.Context | None]]) -> None:
        self.link = link
        self.parents = parents


_active: contextvars.ContextVar[_Active | None] = contextvars.ContextVar(
    "bus_otel_active", default=None)
# Set in the listener loop's task by bus_after_events_received; the handler tasks of the batch
# start in a copy of that context, so each finds its batch here (no registry to clean up).
_batch: contextvars.ContextVar[_Batch | None] = contextvars.ContextVar(
    "bus_otel_batch", default=None)
_NO_PARENT = otel_context.Context()  # receive spans start traces of their own
_propagate: dict[int, bool] = {}
_destinations: dict[tuple[int, str, str, str], tuple[str, str]] = {}


@hookimpl
def bus_plugin_config_schema() -> dict[str, Any]:
    return {
        "properties": {
            "propagate": {
                "type": "boolean", "default": True,
                "description": "send W3C trace context with every call and event and continue "
                               "the sender's trace on receipt; false keeps spans local"},
        },
    }


# -- helpers ----------------------------------------------------------------------------


def _propagates(client: BusClient) -> bool:
    found = _propagate.get(id(client))
    if found is None:
        found = bool(client.config.plugin(PLUGIN_NAME).get("propagate", True))
        if len(_propagate) < _MAX_CACHED:
            _propagate[id(client)] = found
    return found


def destination_of(client: BusClient, kind: str, api_name: str, name: str) -> tuple[str, str]:
    """(messaging system, destination) of an event (`kind` "event") or an RPC ("rpc"): the
    transport's name and the Redis stream or queue it uses (`auth.*:stream`,
    `auth:rpc_queue`), or the logical `api.name` for transports without such names."""
    key = (id(client), kind, api_name, name)
    found = _destinations.get(key)
    if found is not None:
        return found
    transport, options = client.config.api(api_name).transport(kind)
    if transport == "redis" and kind == "event":
        stream_use = options.get("stream_use", "per_api")
        found = (transport, f"{api_name}.{name}:stream" if stream_use == "per_event"
                 else f"{api_name}.*:stream")
    elif transport == "redis":
        found = (transport, f"{api_name}:rpc_queue")
    else:
        found = (transport, f"{api_name}.{name}")
    if len(_destinations) < _MAX_CACHED:
        _destinations[key] = found
    return found


def _start(client: BusClient, message: object, name: str, kind: SpanKind,
           attributes: dict[str, Any], parent: otel_context.Context | None = None,
           start_time: int | None = None, links: list[trace.Link] | None = None) -> _Active:
    """Start a span for `message` and make it current in this task (and in its logs)."""
    span = _tracer.start_span(name, context=parent, kind=kind, attributes=attributes,
                              links=links, start_time=start_time)
    active = _Active(message, span, otel_context.attach(trace.set_span_in_context(span)))
    active.token = _active.set(active)
    span_context = span.get_span_context()
    if span_context.is_valid:
        annotate(trace_id=trace.format_trace_id(span_context.trace_id),
                 span_id=trace.format_span_id(span_context.span_id))
    return active


def _take(message: object) -> _Active | None:
    """The active span of `message`, no longer current (None if it has none here)."""
    active = _active.get()
    if active is None or active.message is not message:
        return None
    otel_context.detach(active.otel_token)
    if active.token is not None:
        _active.reset(active.token)
        active.token = None
    return active


def _fail(span: trace.Span, error: BaseException) -> None:
    """Mark `span` failed by `error` (a RemoteError by the remote exception's type)."""
    error_type = error.remote_type if isinstance(error, RemoteError) \
        else type(error).__qualname__
    span.set_attribute("error.type", error_type)
    span.record_exception(error, escaped=True)
    span.set_status(Status(StatusCode.ERROR, f"{error_type}: {error}"[:300]))


def _remote_parent(client: BusClient, headers: dict[str, str] | None
                   ) -> otel_context.Context | None:
    """The sender's trace context, or None (a fresh trace) when it sent none."""
    if not headers or not _propagates(client):
        return None
    return propagate.extract(headers)


def _inject(client: BusClient, message: RpcMessage | EventMessage) -> None:
    if _propagates(client):
        headers: dict[str, str] = dict(message.headers or {})
        propagate.inject(headers)
        if headers:
            message.headers = headers


def _ago(duration: float) -> int:
    return time.time_ns() - int(duration * 1e9)


# -- RPC: caller side ----------------------------------------------------------------------


def _rpc_attributes(client: BusClient, message: RpcMessage) -> dict[str, Any]:
    system, queue = destination_of(client, "rpc", message.api_name, message.procedure_name)
    return {"rpc.system": RPC_SYSTEM, "rpc.service": message.api_name,
            "rpc.method": message.procedure_name, "messaging.system": system,
            "messaging.destination.name": queue, "messaging.message.id": message.id}


@hookimpl
def bus_before_rpc_call(client: BusClient, message: RpcMessage) -> None:
    _start(client, message, f"{message.api_name}/{message.procedure_name}", SpanKind.CLIENT,
           _rpc_attributes(client, message))
    _inject(client, message)


@hookimpl
def bus_after_rpc_call(client: BusClient, message: RpcMessage, result: Any,
                       error: BaseException | None, duration: float) -> None:
    active = _take(message)
    if active is None:
        return
    if error is not None:
        _fail(active.span, error)
    active.span.end()


# -- RPC: worker side ----------------------------------------------------------------------


@hookimpl
def bus_before_rpc_execution(client: BusClient, message: RpcMessage) -> None:
    _start(client, message, f"{message.api_name}/{message.procedure_name}", SpanKind.SERVER,
           _rpc_attributes(client, message), _remote_parent(client, message.headers))


@hookimpl
def bus_after_rpc_execution(client: BusClient, message: RpcMessage, result: Any,
                            error: BaseException | None, duration: float) -> None:
    active = _take(message)
    if active is None:  # refused before it ran (an unknown procedure): a span all the same
        active = _start(client, message, f"{message.api_name}/{message.procedure_name}",
                        SpanKind.SERVER, _rpc_attributes(client, message),
                        _remote_parent(client, message.headers), _ago(duration))
        _take(message)
    if error is not None:
        _fail(active.span, error)
    active.span.end()


# -- events ----------------------------------------------------------------------------------


def _event_attributes(client: BusClient, message: EventMessage, operation: str
                      ) -> tuple[str, dict[str, Any]]:
    system, stream = destination_of(client, "event", message.api_name, message.event_name)
    return f"{operation} {stream}", {
        "messaging.system": system, "messaging.operation.type": operation,
        "messaging.operation.name": operation, "messaging.destination.name": stream,
        "messaging.message.id": message.id}


@hookimpl
def bus_before_event_fire(client: BusClient, message: EventMessage) -> None:
    name, attributes = _event_attributes(client, message, "publish")
    _start(client, message, name, SpanKind.PRODUCER, attributes)
    _inject(client, message)


@hookimpl
def bus_after_event_fire(client: BusClient, message: EventMessage,
                         error: BaseException | None, duration: float) -> None:
    active = _take(message)
    if active is None:
        return
    if message.native_id is not None:
        active.span.set_attribute("bus.native_id", message.native_id)
    if error is not None:
        _fail(active.span, error)
    active.span.end()


@hookimpl
def bus_after_events_received(client: BusClient, listener_name: str,
                              deliveries: Sequence[EventDelivery]) -> None:
    parents: dict[int, tuple[EventMessage, otel_context.Context | None]] = {}
    links: list[trace.Link] = []
    destinations: set[str] = set()
    system = None
    for delivery in deliveries:
        message = delivery.message
        if message is None:  # undecodable: counted, named by the transport's stream
            destinations.add(delivery.stream)
            continue
        system, destination = destination_of(client, "event", message.api_name,
                                             message.event_name)
        destinations.add(destination)
        parent = _remote_parent(client, message.headers)
        parents[id(message)] = (message, parent)
        if parent is not None:
            sender = trace.get_current_span(parent).get_span_context()
            if sender.is_valid:
                links.append(trace.Link(sender))
    if system is None:  # only undecodable entries: the listener's transport
        listener = client.listeners.get(listener_name)
        system = destination_of(client, "event", *listener.listen_for[0])[0] \
            if listener is not None else "unknown"
    attributes: dict[str, Any] = {
        "messaging.system": system, "messaging.operation.type": "receive",
        "messaging.operation.name": "receive",
        "messaging.batch.message_count": len(deliveries),
        "messaging.consumer.group.name": f"{client.service_name}-{listener_name}",
        "bus.listener": listener_name}
    name = "receive"
    if len(destinations) == 1:  # a batch from several streams names none
        (destination,) = destinations
        name = f"receive {destination}"
        attributes["messaging.destination.name"] = destination
    span = _tracer.start_span(name, context=_NO_PARENT, kind=SpanKind.CONSUMER,
                              attributes=attributes, links=links)
    span.end()  # the moment the batch came back, not the wait for it
    _batch.set(_Batch(trace.Link(span.get_span_context()), parents))


def _process_span(client: BusClient, message: EventMessage, listener_name: str,
                  delivery_count: int, start_time: int | None = None) -> _Active:
    name, attributes = _event_attributes(client, message, "process")
    attributes["messaging.consumer.group.name"] = f"{client.service_name}-{listener_name}"
    attributes["bus.listener"] = listener_name
    if delivery_count:
        attributes["bus.delivery_count"] = delivery_count
    batch = _batch.get()
    found = batch.parents.get(id(message)) if batch is not None else None
    if batch is not None and found is not None and found[0] is message:
        parent, links = found[1], [batch.link]
    else:  # not dispatched from a received batch (a plugin handing events on its own)
        parent, links = _remote_parent(client, message.headers), None
    active = _start(client, message, name, SpanKind.CONSUMER, attributes, parent, start_time,
                    links)
    if delivery_count > 1:
        active.span.add_event("bus.redelivered", {"bus.delivery_count": delivery_count})
    return active


@hookimpl
def bus_before_event_handling(client: BusClient, message: EventMessage, listener_name: str,
                              delivery_count: int) -> None:
    _process_span(client, message, listener_name, delivery_count)


@hookimpl
def bus_after_event_handling(client: BusClient, message: EventMessage, listener_name: str,
                             error: BaseException | None, duration: float) -> None:
    active = _active.get()
    if active is None or active.message is not message:  # refused before the handler ran
        active = _process_span(client, message, listener_name, 0, _ago(duration))
    if error is None:
        _take(message)
        active.span.end()
    else:  # ended by bus_on_handler_error, with what becomes of the event
        _fail(active.span, error)


@hookimpl
def bus_on_handler_error(client: BusClient, message: RpcMessage | EventMessage,
                         listener_name: str | None, error: BaseException, action: str) -> None:
    if listener_name is None:
        return  # an RPC's span ended with its execution
    active = _take(message)
    if active is None:
        return
    if action in ("redeliver", "dead_letter"):
        active.span.add_event(f"bus.{action}", {"bus.listener": listener_name,
                                                "error.type": type(error).__qualname__})
    active.span.set_attribute("bus.action", action)
    active.span.end()
