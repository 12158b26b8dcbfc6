"""`fire_many`: a batch of events of one kind, checked whole before any is sent, sent
together, heard in order, each seen by the fire hooks and offered to an outbox; on the
memory transport here and on a real Redis in tests/redis/test_redis_fire_many.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bus_core import Bus, EventMessage, InvalidArguments, hookimpl
from tests.apis import AuthApi
from tests.helpers import EventRecorder, serving

USERS = [{"username": f"u{n}", "email": f"u{n}@x"} for n in range(5)]


class Watcher:
    def __init__(self, take: Callable[[EventMessage], bool] = lambda message: False) -> None:
        self.before: list[str] = []
        self.after: list[tuple[str, Any]] = []
        self.take = take

    @hookimpl
    def bus_take_event(self, client: Any, message: EventMessage) -> bool | None:
        return True if self.take(message) else None

    @hookimpl
    def bus_before_event_fire(self, client: Any, message: EventMessage) -> None:
        self.before.append(message.kwargs["username"])

    @hookimpl
    def bus_after_event_fire(self, client: Any, message: EventMessage, error: Any,
                             duration: float) -> None:
        self.after.append((message.kwargs["username"], error))


async def test_a_batch_is_heard_in_order_and_each_event_seen_by_the_hooks(
        make_bus: Callable[..., Bus]) -> None:
    watcher = Watcher()
    bus = make_bus(plugins=[watcher])
    bus.client.register_api(AuthApi())
    heard = EventRecorder()
    bus.auth.user_registered.listen(heard, listener_name="welcome", ordered=True)
    async with serving(bus):
        fired = await bus.auth.user_registered.fire_many_async(USERS)
        events = await heard.wait_for(len(USERS))
    assert [e.kwargs["username"] for e in events] == [u["username"] for u in USERS]
    assert [e.id for e in events] == [m.id for m in fired]
    assert all(m.native_id is not None for m in fired)
    assert watcher.before == [u["username"] for u in USERS]
    assert watcher.after == [(u["username"], None) for u in USERS]


@pytest.mark.parametrize("bad", [
    [USERS[0], {"username": "no_email"}],
    [USERS[0], {**USERS[1], "surprise": 1}],
    [USERS[0], {"username": object(), "email": "e"}],
    [USERS[0], "username=u1"],
    {"username": "u", "email": "e"},
    "u0",
])
def test_one_bad_item_refuses_the_whole_batch_before_anything_is_sent(
        make_bus: Callable[..., Bus], bad: Any) -> None:
    watcher = Watcher()
    bus = make_bus(plugins=[watcher])
    bus.client.register_api(AuthApi())
    with pytest.raises(InvalidArguments):
        bus.auth.user_registered.fire_many(bad)
    assert watcher.before == [] and watcher.after == []


async def test_events_an_outbox_takes_are_not_sent_the_rest_are(
        make_bus: Callable[..., Bus]) -> None:
    watcher = Watcher(take=lambda message: message.kwargs["username"] in {"u1", "u3"})
    bus = make_bus(plugins=[watcher])
    bus.client.register_api(AuthApi())
    heard = EventRecorder()
    bus.auth.user_registered.listen(heard, listener_name="welcome", ordered=True)
    async with serving(bus):
        fired = await bus.auth.user_registered.fire_many_async(USERS)
        events = await heard.wait_for(3)
    assert len(fired) == 5
    assert [e.kwargs["username"] for e in events] == ["u0", "u2", "u4"]


def test_an_empty_batch_sends_nothing(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    assert bus.auth.user_registered.fire_many([]) == []


@pytest.mark.parametrize("take", [False, True])
@pytest.mark.parametrize("options", [{"timeout": -1}, {"timeout": "soon"}, {"wait": 1}, [1]])
async def test_bad_bus_options_are_refused_before_any_hook_or_outbox_sees_the_event(
        make_bus: Callable[..., Bus], options: Any, take: bool) -> None:
    watcher = Watcher(take=lambda message: take)
    bus = make_bus(plugins=[watcher])
    bus.client.register_api(AuthApi())
    with pytest.raises(InvalidArguments, match="bus_options"):
        await bus.auth.user_registered.fire_async(username="u", email="e",
                                                  bus_options=options)
    with pytest.raises(InvalidArguments, match="bus_options"):
        bus.auth.user_registered.fire_many(USERS, bus_options=options)
    assert watcher.before == [] and watcher.after == []
