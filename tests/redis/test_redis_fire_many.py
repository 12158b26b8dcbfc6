"""`fire_many` on a real Redis: a batch larger than one pipeline lands whole and in order
(each event its own entry, with its id), and a listener hears every one in that order."""

from __future__ import annotations

import json
from collections.abc import Callable

from bus_core import Bus
from tests.apis import AuthApi
from tests.helpers import EventRecorder, serving

MANY = 1234  # more than one pipeline (500 per round trip)


async def test_a_large_batch_lands_whole_and_in_order(make_redis_bus: Callable[..., Bus],
                                                      raw) -> None:
    bus = make_redis_bus()
    bus.client.register_api(AuthApi())
    heard = EventRecorder()
    await bus.auth.user_registered.listen_async(heard, listener_name="welcome", ordered=True)
    users = [{"username": f"u{n:04}", "email": f"u{n}@x"} for n in range(MANY)]
    async with serving(bus):
        fired = await bus.auth.user_registered.fire_many_async(users)
        events = await heard.wait_for(MANY)
    entries = raw.xrange("auth.*:stream")
    assert len(entries) == MANY
    assert [json.loads(fields[b":username"]) for _, fields in entries] == \
        [u["username"] for u in users]
    assert [entry_id.decode() for entry_id, _ in entries] == [m.native_id for m in fired]
    assert [e.kwargs["username"] for e in events] == [u["username"] for u in users]
    assert len({m.id for m in fired}) == MANY
