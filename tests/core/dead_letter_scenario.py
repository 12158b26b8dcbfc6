"""The dead-letter scenario the memory and Redis tests share: a listener fails an event
until it is dead-lettered, the engine lists it, replays it (to that listener only, once)
and purges what is left."""

from __future__ import annotations

import asyncio
from typing import Any

from bus_core import Bus, EventMessage
from bus_core import dead_letters as engine
from bus_core.dead_letters import Selection
from bus_core.transports import REPLAY_GROUP_HEADER, REPLAY_OF_HEADER
from tests.apis import AuthApi
from tests.helpers import eventually, serving


class Flaky:
    """A handler that fails while `broken` is set, and records what it handled."""

    def __init__(self) -> None:
        self.broken = True
        self.handled: list[EventMessage] = []

    async def __call__(self, event: EventMessage, **kwargs: Any) -> None:
        if self.broken:
            raise RuntimeError(f"cannot welcome {kwargs['username']}")
        self.handled.append(event)


async def run_scenario(bus: Bus) -> None:
    bus.client.register_api(AuthApi())
    flaky, other = Flaky(), Flaky()
    other.broken = False
    bus.auth.user_registered.listen(flaky, listener_name="welcome")
    bus.auth.user_registered.listen(other, listener_name="audit")
    client = bus.client
    async with serving(bus):
        await bus.auth.user_registered.fire_async(username="ada", email="a@b")
        await bus.auth.user_registered.fire_async(username="bob", email="b@b")
        await eventually(lambda: len(other.handled) == 2)

        async def listed() -> list[Any]:
            return await engine.list_dead_letters(client, Selection(api="auth"))

        letters: list[Any] = []

        async def two_dead() -> None:
            nonlocal letters
            while len(letters) < 2:
                letters = await listed()
                await asyncio.sleep(0.01)

        await asyncio.wait_for(two_dead(), 10)
        # Newest first. The two handlers ran at once: either may have been dead-lettered
        # first, whatever the order they were fired in.
        assert letters[0].time >= letters[1].time
        assert await engine.list_dead_letters(client, Selection(api="auth", limit=1)) == \
            letters[:1]
        by_name = {letter.message.kwargs["username"]: letter for letter in letters}
        newest, oldest = by_name["bob"], by_name["ada"]  # purged, and replayed
        assert oldest.group.endswith("-welcome") and "cannot welcome ada" in oldest.reason
        assert oldest.api_name == "auth" and oldest.event_name == "user_registered"
        assert await engine.list_dead_letters(
            client, Selection(events=[("auth", "user_deleted")])) == []
        assert await engine.find(client, [oldest.id], Selection(api="auth")) == [oldest]

        flaky.broken = False
        (outcome,) = await engine.replay(client, [oldest], who="tester")
        assert outcome.done and outcome.new_id
        await eventually(lambda: len(flaky.handled) == 1)
        (replayed,) = flaky.handled
        assert replayed.id == oldest.message.id  # the original id, kept
        assert replayed.headers[REPLAY_OF_HEADER] == oldest.id
        assert replayed.headers[REPLAY_GROUP_HEADER] == oldest.group
        # Idempotent: the second replay finds nothing and delivers nothing.
        (again,) = await engine.replay(client, [oldest], who="tester")
        assert not again.done
        (purged,) = await engine.purge(client, [newest], who="tester")
        assert purged.done
        assert await listed() == []
        # The audit listener (another group) never saw the replay, and ada once only.
        await bus.auth.user_registered.fire_async(username="cy", email="c@b")
        await eventually(lambda: len(flaky.handled) == 2 and len(other.handled) == 3)
        assert [e.kwargs["username"] for e in other.handled] == ["ada", "bob", "cy"]
        assert [e.kwargs["username"] for e in flaky.handled] == ["ada", "cy"]
