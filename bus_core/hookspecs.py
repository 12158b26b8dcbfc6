"""Every hook a Bus plugin can implement. One module, grouped by when the hooks run.

A plugin is a module or object with functions decorated by `bus_core.hookimpl` and named like
the specs below. Lifecycle and message-flow hook implementations may be `async def` (the kernel
awaits what they return); registration hooks run at start-up, outside any loop, and are sync.

Registration hooks run for every discovered plugin, once, when a bus client is created.
Lifecycle and message-flow hooks run only for *enabled* plugins: those the config enables under
`plugins: {<name>: {enabled: true}}`, those whose transport or serializer the config selects,
and those passed to `bus_core.create(plugins=[...])`.

Message-flow hooks run per message, so the kernel skips a hook entirely when no enabled plugin
implements it. "before" hooks may raise to refuse a message (the caller sees the exception):
raise `bus_core.errors.Refused("why")`, an `InvalidMessage`, so a refused message is never
retried (a worker answers a refused call with an error and dead-letters a refused event at
once) and the `bus` command prints it as one `bus: error: ...` line. They may also change
`message.kwargs` in place. "after" hooks observe: their exceptions are
logged and swallowed, because the message has already been handled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:

    from bus_core.api import ApiDefinition
    from bus_core.client import BusClient
    from bus_core.listeners import Listener
    from bus_core.messages import EventMessage, RpcMessage
    from bus_core.transports import EventDelivery
    from bus_core.worker import Worker

hookspec = pluggy.HookspecMarker("bus")

TransportRegistrar = Callable[..., None]
"""`register(kind, name, factory, options_schema=None)`: kind is rpc, result, event or schema."""
SerializerRegistrar = Callable[..., None]
"""`register(name, factory)`: factory() returns an object with `dumps` and `loads`."""
ConfigSourceRegistrar = Callable[..., None]
"""`register(schemes, loader)`: loader(location) returns YAML/JSON text or a mapping."""
CommandRegistrar = Callable[..., None]
"""`register(name, help, setup, run)`: setup(parser) adds options; run(args) -> exit code."""


# ----------------------------------------------------------------------------------------
# Registration: called once per bus client (and by the CLI), for every discovered plugin.
# ----------------------------------------------------------------------------------------


@hookspec
def bus_register_transports(register: TransportRegistrar) -> None:
    """Offer transports, selectable by name in the config.

    Called when a bus client is created, for every discovered plugin.

    :param register: call ``register(kind, name, factory, options_schema=None)`` once per
        transport. ``kind`` is ``"rpc"``, ``"result"``, ``"event"`` or ``"schema"``;
        ``factory(**options)`` receives the options from the config (and ``serializer``,
        ``service_name``, ``process_name``) and returns an instance of the matching contract
        in ``bus_core.transports``. ``options_schema`` is the JSON Schema of the options.
    :return: nothing; not firstresult.
    """


@hookspec
def bus_register_serializers(register: SerializerRegistrar) -> None:
    """Offer message serializers, selectable with ``bus.serializer`` in the config.

    :param register: call ``register(name, factory)``; ``factory()`` returns an object with
        ``dumps(value) -> bytes`` and ``loads(data: bytes) -> value``.
    :return: nothing; not firstresult.
    """


@hookspec
def bus_register_config_sources(register: ConfigSourceRegistrar) -> None:
    """Offer places the configuration can be read from (files, URLs, a key-value store...).

    Called before the configuration is loaded, for every discovered plugin.

    :param register: call ``register(schemes, loader)``. ``schemes`` is a string or tuple of
        URL schemes (``"https"``) or ``"file"`` for plain paths; ``loader(location)`` returns
        the document as YAML/JSON text or as a mapping, or raises ``ConfigError``.
    :return: nothing; not firstresult.
    """


@hookspec
def bus_register_commands(register: CommandRegistrar) -> None:
    """Add subcommands to the ``bus`` command line.

    :param register: call ``register(name, help, setup, run)``. ``setup(parser)`` adds options
        to the subcommand's ``argparse`` parser (the common ``--config``/``--bus`` options are
        already there); ``run(args)`` does the work and returns the exit code.
    :return: nothing; not firstresult.
    """


@hookspec
def bus_plugin_config_schema() -> Mapping[str, Any] | None:
    """Describe this plugin's section of the config, ``plugins: {<plugin name>: {...}}``.

    :return: a JSON Schema for the section's properties (``enabled`` is added by the kernel),
        or None for no options. The kernel files it under the implementing plugin's name.
        Not firstresult: every plugin answers for itself.
    """


# ----------------------------------------------------------------------------------------
# Lifecycle: awaited, enabled plugins only.
# ----------------------------------------------------------------------------------------


@hookspec
def bus_client_started(client: BusClient) -> None:
    """The bus client has opened its transports and is ready to send.

    Fires once per event loop the client runs on (its own background loop for sync calls,
    the caller's loop for async ones), before the first message is sent from that loop.

    :param client: the bus client.
    :return: nothing; may be a coroutine.
    """


@hookspec
def bus_client_stopping(client: BusClient) -> None:
    """The bus client is closing; transports are still open.

    :param client: the bus client.
    :return: nothing; may be a coroutine.
    """


@hookspec
def bus_worker_started(client: BusClient, worker: Worker) -> None:
    """A worker has started its consumers and is about to serve.

    Runs after the ``@bus.client.on_start`` functions. An exception raised here aborts the
    worker's start (a plugin that cannot do its job should not let the worker run without it).

    :param client: the bus client.
    :param worker: the worker: ``worker.api_names`` served, ``worker.listener_names``.
    :return: nothing; may be a coroutine.
    """


@hookspec
def bus_worker_stopping(client: BusClient, worker: Worker) -> None:
    """A worker has drained its in-flight work and is stopping.

    Runs before the ``@bus.client.on_stop`` functions; transports are still open.

    :param client: the bus client.
    :param worker: the worker.
    :return: nothing; may be a coroutine.
    """


# ----------------------------------------------------------------------------------------
# Message flow: per message, enabled plugins only, skipped when nobody implements them.
# ----------------------------------------------------------------------------------------


@hookspec
def bus_before_rpc_call(client: BusClient, message: RpcMessage) -> None:
    """Caller side, before an RPC call is sent. Raise ``Refused`` to refuse the call: the
    caller gets it as is and nothing is sent.

    Set ``message.headers`` (a small ``dict[str, str]``, e.g. W3C ``traceparent``) to send
    headers with the call, where Lightbus 1.x workers ignore them (docs/protocol).

    :param client: the calling bus client.
    :param message: the call; ``message.kwargs`` holds wire values and may be changed.
    :return: nothing; may be a coroutine.
    """


@hookspec
def bus_after_rpc_call(
    client: BusClient, message: RpcMessage, result: Any, error: BaseException | None,
    duration: float,
) -> None:
    """Caller side, after the result arrived, the call failed remotely, or it timed out.

    :param client: the calling bus client.
    :param message: the call that was sent.
    :param result: the wire value returned (None when ``error`` is set).
    :param error: ``RemoteError``, ``RpcTimeout`` or another exception, or None on success.
    :param duration: seconds from send to outcome.
    :return: nothing; may be a coroutine. Exceptions are logged, not raised.
    """


@hookspec
def bus_before_rpc_execution(client: BusClient, message: RpcMessage) -> None:
    """Worker side, before a received call runs. Raise ``Refused`` to refuse it: the
    caller gets the exception back as a remote error.

    :param client: the serving bus client.
    :param message: the received call (wire values in ``message.kwargs``; the sender's
        headers in ``message.headers``, None when it sent none).
    :return: nothing; may be a coroutine.
    """


@hookspec
def bus_after_rpc_execution(
    client: BusClient, message: RpcMessage, result: Any, error: BaseException | None,
    duration: float,
) -> None:
    """Worker side, after a call ran and before its result is sent.

    :param client: the serving bus client.
    :param message: the call.
    :param result: the procedure's return value as a wire value (None on error).
    :param error: the exception the procedure raised, or None.
    :param duration: seconds the execution took.
    :return: nothing; may be a coroutine. Exceptions are logged, not raised.
    """


@hookspec
def bus_before_rpc_result_sent(client: BusClient, message: RpcMessage, result: Any) -> None:
    """Worker side, after a call ran successfully and before its result is sent. Raise
    ``Refused`` (or another ``InvalidMessage``) to send the caller that error instead (e.g.
    the result does not match its schema).

    :param client: the serving bus client.
    :param message: the call.
    :param result: the procedure's return value as a wire value.
    :return: nothing; may be a coroutine.
    """


@hookspec
def bus_on_rpc_result_received(client: BusClient, message: RpcMessage, result: Any) -> None:
    """Caller side, when a successful result arrives, before it is returned. Raise to fail
    the call with that error instead (e.g. the result does not match its schema).

    :param client: the calling bus client.
    :param message: the call that was sent.
    :param result: the result as a wire value.
    :return: nothing; may be a coroutine.
    """


@hookspec
def bus_before_event_fire(client: BusClient, message: EventMessage) -> None:
    """Before an event is sent to the event transport. Raise ``Refused`` to refuse the
    fire: the caller gets it as is and nothing is sent. Set ``message.headers`` (a small
    ``dict[str, str]``) to send headers with the event, in the one place of an event entry
    Lightbus 1.x consumers ignore (docs/protocol).

    :param client: the firing bus client.
    :param message: the event (wire values in ``message.kwargs``).
    :return: nothing; may be a coroutine.
    """


@hookspec(firstresult=True)
def bus_take_event(client: BusClient, message: EventMessage) -> Any:
    """Take an event instead of the event transport: an outbox writes it into the caller's
    open database transaction, and a relay sends it once that transaction commits.

    Called for every fire once the message is built (arguments checked and cast,
    ``message.kwargs`` in wire form, ``message.id`` final), after ``bus_before_event_fire``
    (so the headers a tracer writes are in the message it takes), in the firing thread:
    for a sync ``fire()`` on the caller's own thread, before the bus's loop is involved,
    so that thread's database connection and transaction are usable. The first
    implementation that returns True wins; ``bus_after_event_fire`` then follows at once
    and the kernel sends nothing. Whoever relays the event later sends it with
    ``client.send_event_async(message, fire_hooks=False)``: its fire hooks already ran.

    :param client: the firing bus client.
    :param message: the event, complete.
    :return: True when taken, None otherwise. From ``fire_async`` only, an awaitable
        resolving to True or None (for async database connections).
    """


@hookspec
def bus_after_event_fire(
    client: BusClient, message: EventMessage, error: BaseException | None, duration: float,
) -> None:
    """After the event transport accepted (or failed to accept) an event.

    :param client: the firing bus client.
    :param message: the event; ``native_id`` is set when the transport gave one.
    :param error: the exception if sending failed, else None.
    :param duration: seconds the send took.
    :return: nothing; may be a coroutine. Exceptions are logged, not raised.
    """


@hookspec
def bus_wrap_listener_handler(client: BusClient, listener: Listener) -> Callable[..., Any] | None:
    """Wrap a listener's handler, once, when the listener is added (``listen()``): to run it
    inside a database transaction (``listen(..., transactional=True)``), with a tracer, ...

    Implementations run in turn, each seeing the handler the previous one returned in
    ``listener.handler``. A listener declared ``transactional`` that no implementation wrapped
    is refused with an error naming the plugin to enable.

    :param client: the listening bus client.
    :param listener: the listener (``name``, ``listen_for``, ``transactional``, ``handler``).
    :return: a callable of the same kind (sync or ``async def``) and signature,
        ``handler(event, **parameters)``, that calls ``listener.handler``; or None.
    """


@hookspec
def bus_after_events_received(
    client: BusClient, listener_name: str, deliveries: Sequence[EventDelivery],
) -> None:
    """Worker side, once per batch: a listener's consumer returned deliveries, and the worker
    is about to hand each one to its own task (``bus_before_event_handling`` and the handler
    run there, after this hook returns).

    Called for non-empty batches only, per batch rather than per event; the handler tasks
    start in a copy of the context this hook leaves behind (a context variable it sets is
    seen by the batch's handling).

    :param client: the listening bus client.
    :param listener_name: the listener whose consumer received the batch.
    :param deliveries: the batch, in order, as the transport returned it: each
        ``EventDelivery`` has ``message`` (None for an entry that cannot be decoded, with
        ``problem``), ``delivery_count``, ``native_id`` and ``stream``. It may hold events of
        a shared stream that the listener does not want. Do not change it.
    :return: nothing; may be a coroutine (awaited before the batch is dispatched: keep it
        short). Exceptions are logged, not raised.
    """


@hookspec
def bus_before_event_handling(
    client: BusClient, message: EventMessage, listener_name: str, delivery_count: int,
) -> None:
    """Before a listener's handler runs for a received event. Raise ``Refused`` to refuse
    the event: it is dead-lettered at once (another exception is a handler failure, and the
    listener's error policy applies).

    :param client: the listening bus client.
    :param message: the received event (wire values in ``message.kwargs``; the sender's
        headers in ``message.headers``, None when it sent none).
    :param listener_name: the listener about to handle it.
    :param delivery_count: how many times the event has been delivered to this listener's
        group, this time included (1 the first time; 0 when the transport cannot tell).
    :return: nothing; may be a coroutine.
    """


@hookspec
def bus_after_event_handling(
    client: BusClient, message: EventMessage, listener_name: str, error: BaseException | None,
    duration: float,
) -> None:
    """After a listener's handler finished, successfully or not.

    :param client: the listening bus client.
    :param message: the event.
    :param listener_name: the listener that handled it.
    :param error: the exception the handler raised, or None.
    :param duration: seconds the handler took.
    :return: nothing; may be a coroutine. Exceptions are logged, not raised.
    """


@hookspec
def bus_on_handler_error(
    client: BusClient, message: RpcMessage | EventMessage, listener_name: str | None,
    error: BaseException, action: str,
) -> None:
    """A procedure or event handler raised, or a received message could not be used.

    :param client: the bus client serving or listening.
    :param message: the call or event being handled.
    :param listener_name: the listener for events, None for RPCs.
    :param error: the exception.
    :param action: what the worker does next: ``"reply_error"`` (RPC), ``"redeliver"``,
        ``"dead_letter"``, ``"acknowledge"`` or ``"stop"`` (events).
    :return: nothing; may be a coroutine. Exceptions are logged, not raised.
    """


@hookspec
def bus_on_undeclared_parameters(
    client: BusClient, message: EventMessage, listener_name: str, parameter_names: list[str],
) -> None:
    """A received event carries parameters its API does not declare (a newer or foreign
    sender). The listener gets the event without them; with ``bus.strict_parameters: true``
    the event is dead-lettered instead and this hook is not called (``bus_on_handler_error``
    is, with action ``"dead_letter"``).

    Called only for such events, so it costs nothing on the usual path.

    :param client: the bus client listening.
    :param message: the event as received (its ``kwargs`` still hold the extra parameters).
    :param listener_name: the listener it was delivered to.
    :param parameter_names: the undeclared parameter names, sorted.
    :return: nothing; may be a coroutine. Exceptions are logged, not raised.
    """


# ----------------------------------------------------------------------------------------
# Introspection: awaited on demand, enabled plugins only.
# ----------------------------------------------------------------------------------------


@hookspec
def bus_describe_apis(client: BusClient) -> Mapping[str, ApiDefinition] | None:
    """Describe APIs this plugin knows about that may not be registered in this process
    (from a shared schema, say), for `bus shell` completion and ``client.describe_apis()``.

    Called when a tool asks, not per message. APIs registered locally win over described ones.

    :param client: the bus client asking.
    :return: a mapping of API name to its definition (RPC and event names with their
        parameters), or None; may be a coroutine.
    """


REGISTRATION_HOOKS = frozenset({
    "bus_register_transports",
    "bus_register_serializers",
    "bus_register_config_sources",
    "bus_register_commands",
    "bus_plugin_config_schema",
})
