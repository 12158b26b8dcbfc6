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
