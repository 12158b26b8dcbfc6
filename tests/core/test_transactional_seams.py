"""The kernel's seams for transactional events (bus-outbox builds on them): a plugin may take
a fire before the transport sees it (`bus_take_event`, on the firing thread), send it later
with `send_event_async`, and wrap a listener's handler (`bus_wrap_listener_handler`), which
`listen(..., transactional=True)` requires."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from bus_core import Bus, BusError, EventMessage, InvalidArguments, hookimpl
from tests.apis import AuthApi
from tests.helpers import EventRecorder, eventually, serving


class Outbox:
    """Takes every event fired while `open` is set, as an outbox inside a transaction would."""

    def __init__(self, answer: Callable[[], Any] | None = None) -> None:
        self.open = True
        self.taken: list[tuple[EventMessage, threading.Thread]] = []
        self.answer = answer or (lambda: True)

    @hookimpl
    def bus_take_event(self, client: Any, message: EventMessage) -> Any:
        if not self.open:
            return None
        self.taken.append((message, threading.current_thread()))
        return self.answer()


async def test_a_taken_event_reaches_no_listener_until_it_is_sent(
        make_bus: Callable[..., Bus]) -> None:
    outbox = Outbox()
    bus = make_bus(plugins=[outbox])
    bus.client.register_api(AuthApi())
    heard = EventRecorder()
    bus.auth.user_registered.listen(heard, listener_name="welcome")
    async with serving(bus):
        fired = await bus.auth.user_registered.fire_async(username="a", email="a@x")
        [(taken, _)] = outbox.taken
        assert taken is fired and taken.kwargs == {"username": "a", "email": "a@x"}
        await asyncio.sleep(0.05)  # a listener that could hear it has had every chance
        assert heard.seen == []
        await bus.client.send_event_async(taken)  # the relay, after commit
        [event] = await heard.wait_for(1)
        assert event.id == fired.id and event.kwargs["username"] == "a"
        outbox.open = False  # outside a transaction: sent at once
        await bus.auth.user_registered.fire_async(username="b", email="b@x")
        await heard.wait_for(2)


def test_sync_fire_offers_the_event_on_the_callers_own_thread(
        make_bus: Callable[..., Bus]) -> None:
    outbox = Outbox()
    bus = make_bus(plugins=[outbox])
    bus.client.register_api(AuthApi())
    bus.auth.user_registered.fire(username="a", email="a@x")
    [(message, thread)] = outbox.taken
    assert thread is threading.current_thread()
    assert message.kwargs["username"] == "a"


def test_bad_arguments_are_refused_before_any_plugin_is_offered_the_event(
        make_bus: Callable[..., Bus]) -> None:
    outbox = Outbox()
    bus = make_bus(plugins=[outbox])
    bus.client.register_api(AuthApi())
    with pytest.raises(InvalidArguments, match="missing required"):
        bus.auth.user_registered.fire(username="a")
    assert outbox.taken == []


async def test_an_async_implementation_takes_fire_async_and_refuses_sync_fire(
        make_bus: Callable[..., Bus]) -> None:
    async def taken() -> bool:
        return True

    outbox = Outbox(answer=taken)
    bus = make_bus(plugins=[outbox])
    bus.client.register_api(AuthApi())
    heard = EventRecorder()
    bus.auth.user_registered.listen(heard, listener_name="welcome")
    async with serving(bus):
        await bus.auth.user_registered.fire_async(username="a", email="a@x")
        assert len(outbox.taken) == 1
        with pytest.raises(BusError, match="use fire_async"):
            await asyncio.to_thread(bus.auth.user_registered.fire, username="b", email="b@x")
        await asyncio.sleep(0.05)
        assert heard.seen == []


class Transactions:
    """Wraps transactional listeners' handlers, recording what ran inside the wrapper."""

    def __init__(self) -> None:
        self.inside: list[tuple[str, str]] = []

    @hookimpl
    def bus_wrap_listener_handler(self, client: Any, listener: Any) -> Any:
        if not listener.transactional:
            return None
        handler, inside = listener.handler, self.inside
        if asyncio.iscoroutinefunction(handler):
            async def run_async(event: EventMessage, **parameters: Any) -> Any:
                inside.append((listener.name, event.id))
                return await handler(event, **parameters)
            return run_async

        def run(event: EventMessage, **parameters: Any) -> Any:
            inside.append((listener.name, event.id))
            return handler(event, **parameters)
        return run


def test_a_transactional_listener_needs_a_plugin_that_runs_it(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    with pytest.raises(InvalidArguments, match="no enabled plugin runs listeners in database"):
        bus.auth.user_registered.listen(lambda event, **kw: None, listener_name="tx",
                                        transactional=True)
    assert "tx" not in bus.client.listeners


async def test_transactional_handlers_run_inside_the_plugins_wrapper(
        make_bus: Callable[..., Bus]) -> None:
    transactions = Transactions()
    bus = make_bus(plugins=[transactions])
    bus.client.register_api(AuthApi())
    handled: list[str] = []

    def sync_handler(event: EventMessage, username: str, email: str) -> None:
        handled.append("sync")

    async def async_handler(event: EventMessage, username: str, email: str) -> None:
        handled.append("async")

    bus.auth.user_registered.listen(sync_handler, listener_name="tx_sync", transactional=True)
    await bus.auth.user_registered.listen_async(async_handler, listener_name="tx_async",
                                                transactional=True)
    plain = EventRecorder()
    bus.auth.user_registered.listen(plain, listener_name="plain")
    assert bus.client.listeners["tx_async"].is_async
    assert not bus.client.listeners["tx_sync"].is_async
    async with serving(bus):
        fired = await bus.auth.user_registered.fire_async(username="a", email="a@x")
        await plain.wait_for(1)
        await eventually(lambda: len(handled) == 2)
    assert sorted(handled) == ["async", "sync"]
    assert sorted(transactions.inside) == [("tx_async", fired.id), ("tx_sync", fired.id)]


class Order:
    """Records the fire hooks and the offer, in order, with the thread each ran on."""

    def __init__(self, take: bool) -> None:
        self.take = take
        self.seen: list[tuple[str, str]] = []

    @hookimpl
    def bus_before_event_fire(self, client: Any, message: EventMessage) -> None:
        message.headers = {"traceparent": "from-the-request"}  # what a tracer writes
        self.seen.append(("before", threading.current_thread().name))

    @hookimpl
    def bus_take_event(self, client: Any, message: EventMessage) -> bool | None:
        assert message.headers == {"traceparent": "from-the-request"}
        self.seen.append(("take", threading.current_thread().name))
        return True if self.take else None

    @hookimpl
    def bus_after_event_fire(self, client: Any, message: EventMessage, error: Any,
                             duration: float) -> None:
        self.seen.append(("after", threading.current_thread().name))


@pytest.mark.parametrize("take", [True, False])
def test_an_offered_event_is_inside_its_fire_hooks_on_the_callers_thread(
        make_bus: Callable[..., Bus], take: bool) -> None:
    order = Order(take)
    bus = make_bus(plugins=[order])
    bus.client.register_api(AuthApi())
    bus.auth.user_registered.fire(username="a", email="a@x")
    here = threading.current_thread().name
    steps = [step for step, _ in order.seen]
    assert steps == ["before", "take", "after"]
    assert [thread for _, thread in order.seen[:2]] == [here, here]
    if take:
        assert order.seen[2][1] == here  # nothing was sent: all on the caller's thread


async def test_a_relayed_event_runs_no_fire_hook_again_and_keeps_its_headers(
        make_bus: Callable[..., Bus]) -> None:
    order = Order(take=True)
    bus = make_bus(plugins=[order])
    bus.client.register_api(AuthApi())
    heard = EventRecorder()
    bus.auth.user_registered.listen(heard, listener_name="welcome")
    async with serving(bus):
        fired = await bus.auth.user_registered.fire_async(username="a", email="a@x")
        assert [step for step, _ in order.seen] == ["before", "take", "after"]
        await bus.client.send_event_async(fired, fire_hooks=False)  # the relay
        [event] = await heard.wait_for(1)
    assert [step for step, _ in order.seen] == ["before", "take", "after"]
    assert event.headers == {"traceparent": "from-the-request"}
