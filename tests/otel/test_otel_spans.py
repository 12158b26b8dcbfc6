"""Spans of the otel plugin in one process, on the memory transports: names, kinds, attributes,
parent/child relations, errors, redelivery and dead letters, timeouts, log context."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import bus_otel.plugin as otel_plugin
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bus_core import Bus, EventMessage, RemoteError, RpcTimeout, hookimpl
from bus_core.logs import JsonFormatter, MessageContextFilter
from tests.apis import AuthApi
from tests.conftest import memory_config
from tests.helpers import event_transport, eventually, serving


def traced(make_bus: Callable[..., Bus], **options: Any) -> Bus:
    bus = make_bus(plugins=[otel_plugin], **options)
    bus.client.register_api(AuthApi())
    return bus


def by_name(spans: InMemorySpanExporter, name: str) -> list[Any]:
    return [s for s in spans.get_finished_spans() if s.name == name]


async def test_rpc_call_and_execution_are_one_trace(make_bus: Callable[..., Bus],
                                                    spans: InMemorySpanExporter) -> None:
    bus = traced(make_bus)
    async with serving(bus):
        assert await bus.auth.check_password.call_async(username="admin", password="secret")
    await eventually(lambda: len(by_name(spans, "auth/check_password")) == 2)
    client, server = sorted(by_name(spans, "auth/check_password"),
                            key=lambda s: s.kind != SpanKind.CLIENT)
    assert client.kind == SpanKind.CLIENT and server.kind == SpanKind.SERVER
    assert server.context.trace_id == client.context.trace_id
    assert server.parent.span_id == client.context.span_id and server.parent.is_remote
    for span in (client, server):
        assert span.attributes["rpc.system"] == "bus"
        assert span.attributes["rpc.service"] == "auth"
        assert span.attributes["rpc.method"] == "check_password"
        assert span.attributes["messaging.message.id"]
        assert span.status.status_code == StatusCode.UNSET


async def test_remote_error_marks_both_spans(make_bus: Callable[..., Bus],
                                             spans: InMemorySpanExporter) -> None:
    bus = traced(make_bus)
    async with serving(bus):
        with pytest.raises(RemoteError):
            await bus.auth.fail.call_async(message="boom")
    await eventually(lambda: len(by_name(spans, "auth/fail")) == 2)
    for span in by_name(spans, "auth/fail"):
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["error.type"] == "ValueError"
        assert [e.name for e in span.events] == ["exception"]


async def test_rpc_timeout_is_an_error_span(make_bus: Callable[..., Bus],
                                            spans: InMemorySpanExporter) -> None:
    bus = traced(make_bus)  # nobody serves
    with pytest.raises(RpcTimeout):
        await bus.auth.check_password.call_async(username="a", password="b",
                                                 bus_options={"timeout": 0.1})
    (span,) = by_name(spans, "auth/check_password")
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "RpcTimeout"


async def test_fire_and_handling_with_nested_rpc(make_bus: Callable[..., Bus],
                                                 spans: InMemorySpanExporter) -> None:
    bus = traced(make_bus)
    done = asyncio.Event()

    async def welcome(event: EventMessage, username: str, email: str) -> None:
        await bus.auth.check_password.call_async(username=username, password="x")
        done.set()

    bus.auth.user_registered.listen(welcome, listener_name="welcome")
    tracer = trace.get_tracer("test")
    async with serving(bus):
        with tracer.start_as_current_span("request") as request:
            await bus.auth.user_registered.fire_async(username="a", email="e")
        await asyncio.wait_for(done.wait(), 5)
    await eventually(lambda: len(by_name(spans, "auth/check_password")) == 2)
    (publish,) = by_name(spans, "publish auth.user_registered")
    (process,) = by_name(spans, "process auth.user_registered")
    call = next(s for s in by_name(spans, "auth/check_password") if s.kind == SpanKind.CLIENT)
    trace_id = request.get_span_context().trace_id
    assert {publish.context.trace_id, process.context.trace_id, call.context.trace_id} \
        == {trace_id}
    assert publish.parent.span_id == request.get_span_context().span_id
    assert publish.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    assert process.parent.span_id == publish.context.span_id
    assert call.parent.span_id == process.context.span_id
    assert process.attributes["messaging.consumer.group.name"] == "svc-welcome"
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["bus.delivery_count"] == 1
    assert publish.attributes["messaging.message.id"] == process.attributes[
        "messaging.message.id"]


async def test_received_batch_is_a_receive_span_the_process_spans_link_to(
        make_bus: Callable[..., Bus], spans: InMemorySpanExporter) -> None:
    bus = traced(make_bus)
    handled: list[str] = []

    async def welcome(event: EventMessage, username: str, email: str) -> None:
        handled.append(username)

    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request"):  # fired before the worker runs: one batch
        for name in ("a", "b", "c"):
            await bus.auth.user_registered.fire_async(username=name, email="e")
    bus.auth.user_registered.listen(welcome, listener_name="welcome", since="0")
    async with serving(bus):
        await eventually(lambda: len(handled) == 3)
    await eventually(lambda: len(by_name(spans, "process auth.user_registered")) == 3)
    (receive,) = by_name(spans, "receive auth.user_registered")
    assert receive.kind == SpanKind.CONSUMER and receive.parent is None
    assert receive.attributes["messaging.operation.type"] == "receive"
    assert receive.attributes["messaging.batch.message_count"] == 3
    assert receive.attributes["messaging.destination.name"] == "auth.user_registered"
    assert receive.attributes["messaging.consumer.group.name"] == "svc-welcome"
    publishes = {s.attributes["messaging.message.id"]: s
                 for s in by_name(spans, "publish auth.user_registered")}
    # the receive span links to each message's sender
    assert sorted(link.context.span_id for link in receive.links) == sorted(
        s.context.span_id for s in publishes.values())
    for process in by_name(spans, "process auth.user_registered"):
        publish = publishes[process.attributes["messaging.message.id"]]
        assert process.parent.span_id == publish.context.span_id  # still the sender's child
        assert process.context.trace_id == publish.context.trace_id
        assert [link.context.span_id for link in process.links] == [receive.context.span_id]
        assert process.links[0].context.trace_id == receive.context.trace_id


async def test_sync_handler_nested_sync_call_keeps_the_trace(
        make_bus: Callable[..., Bus], spans: InMemorySpanExporter) -> None:
    bus = traced(make_bus)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def welcome(event: EventMessage, username: str, email: str) -> None:
        bus.auth.check_password(username=username, password="x")  # sync, from the pool
        loop.call_soon_threadsafe(done.set)

    bus.auth.user_registered.listen(welcome, listener_name="welcome")
    async with serving(bus):
        await bus.auth.user_registered.fire_async(username="a", email="e")
        await asyncio.wait_for(done.wait(), 5)
    await eventually(lambda: len(by_name(spans, "auth/check_password")) == 2)
    (process,) = by_name(spans, "process auth.user_registered")
    call = next(s for s in by_name(spans, "auth/check_password") if s.kind == SpanKind.CLIENT)
    assert call.context.trace_id == process.context.trace_id
    assert call.parent.span_id == process.context.span_id


async def test_failing_handler_redelivery_and_dead_letter(
        make_bus: Callable[..., Bus], spans: InMemorySpanExporter) -> None:
    bus = traced(make_bus, max_deliveries=2, redelivery_delay=0.01)
    attempts: list[int] = []

    async def broken(event: EventMessage, username: str, email: str) -> None:
        attempts.append(1)
        raise KeyError("nope")

    bus.auth.user_registered.listen(broken, listener_name="broken")
    async with serving(bus):
        await bus.auth.user_registered.fire_async(username="a", email="e")
        await eventually(lambda: len(by_name(spans, "process auth.user_registered")) == 2)
    first, second = sorted(by_name(spans, "process auth.user_registered"),
                           key=lambda s: s.attributes["bus.delivery_count"])
    assert first.context.trace_id == second.context.trace_id
    for span in (first, second):
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["error.type"] == "KeyError"
    assert "bus.redeliver" in [e.name for e in first.events]
    assert first.attributes["bus.action"] == "redeliver"
    assert "bus.redelivered" in [e.name for e in second.events]
    assert "bus.dead_letter" in [e.name for e in second.events]
    assert second.attributes["bus.action"] == "dead_letter"
    # each delivery came in a batch of its own, and links to that batch's receive span
    receives = {s.context.span_id for s in by_name(spans, "receive auth.user_registered")}
    linked = [link.context.span_id for span in (first, second) for link in span.links]
    assert len(set(linked)) == 2 and set(linked) <= receives


async def test_untraced_message_starts_a_fresh_trace(make_bus: Callable[..., Bus],
                                                     spans: InMemorySpanExporter) -> None:
    bus = traced(make_bus)
    got = asyncio.Event()

    async def handler(event: EventMessage, username: str, email: str) -> None:
        got.set()

    bus.auth.user_registered.listen(handler, listener_name="h")
    async with serving(bus):
        plain = EventMessage(api_name="auth", event_name="user_registered",
                             kwargs={"username": "a", "email": "e"})
        await (await event_transport(bus)).send_event(plain)  # as a Lightbus peer would
        await asyncio.wait_for(got.wait(), 5)
    await eventually(lambda: by_name(spans, "process auth.user_registered"))
    (process,) = by_name(spans, "process auth.user_registered")
    assert process.parent is None
    (receive,) = by_name(spans, "receive auth.user_registered")
    assert not receive.links  # no sender to link to
    assert [link.context.span_id for link in process.links] == [receive.context.span_id]


async def test_propagate_false_keeps_spans_local(make_bus: Callable[..., Bus], broker_name: str,
                                                 spans: InMemorySpanExporter) -> None:
    config = memory_config(broker_name)
    config["plugins"] = {"otel": {"enabled": True, "propagate": False}}
    bus = make_bus(config=config)
    bus.client.register_api(AuthApi())
    async with serving(bus):
        await bus.auth.check_password.call_async(username="a", password="b")
    await eventually(lambda: len(by_name(spans, "auth/check_password")) == 2)
    client, server = by_name(spans, "auth/check_password")
    assert client.context.trace_id != server.context.trace_id
    assert server.parent is None


async def test_json_logs_carry_trace_and_span_ids(make_bus: Callable[..., Bus],
                                                  spans: InMemorySpanExporter) -> None:
    bus = traced(make_bus)
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(MessageContextFilter())
    log = logging.getLogger("test.otel.handler")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    done = asyncio.Event()

    async def welcome(event: EventMessage, username: str, email: str) -> None:
        log.info("welcoming %s", username)
        done.set()

    bus.auth.user_registered.listen(welcome, listener_name="welcome")
    try:
        async with serving(bus):
            await bus.auth.user_registered.fire_async(username="a", email="e")
            await asyncio.wait_for(done.wait(), 5)
    finally:
        log.removeHandler(handler)
    await eventually(lambda: by_name(spans, "process auth.user_registered"))
    (process,) = by_name(spans, "process auth.user_registered")
    entry = json.loads(lines[0])
    assert entry["trace_id"] == f"{process.context.trace_id:032x}"
    assert entry["span_id"] == f"{process.context.span_id:016x}"


class ListOutbox:
    """An outbox in a list (bus-outbox writes into a table): takes every fire."""

    def __init__(self) -> None:
        self.taken: list[EventMessage] = []

    @hookimpl
    def bus_take_event(self, client: Any, message: EventMessage) -> bool:
        self.taken.append(message)
        return True


async def test_an_event_an_outbox_took_continues_the_trace_of_the_request_that_fired(
        make_bus: Callable[..., Bus], spans: InMemorySpanExporter) -> None:
    outbox = ListOutbox()
    bus = make_bus(plugins=[otel_plugin, outbox])
    bus.client.register_api(AuthApi())
    done = asyncio.Event()

    async def welcome(event: EventMessage, username: str, email: str) -> None:
        done.set()

    bus.auth.user_registered.listen(welcome, listener_name="welcome")
    tracer = trace.get_tracer("test")
    async with serving(bus):
        with tracer.start_as_current_span("request") as request:
            await bus.auth.user_registered.fire_async(username="a", email="e")
        (taken,) = outbox.taken
        await bus.client.send_event_async(taken, fire_hooks=False)  # the relay, no span
        await asyncio.wait_for(done.wait(), 5)
    await eventually(lambda: len(by_name(spans, "process auth.user_registered")) == 1)
    (publish,) = by_name(spans, "publish auth.user_registered")
    (process,) = by_name(spans, "process auth.user_registered")
    assert publish.parent.span_id == request.get_span_context().span_id
    assert process.context.trace_id == request.get_span_context().trace_id
    assert process.parent.span_id == publish.context.span_id
