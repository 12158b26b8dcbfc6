"""Dead letters on the memory transport: listed, replayed to the failing listener only
(once), purged."""

from __future__ import annotations

from collections.abc import Callable

from bus_core import Bus
from tests.core.dead_letter_scenario import run_scenario


async def test_dead_letters_are_listed_replayed_once_to_their_group_and_purged(
        make_bus: Callable[..., Bus]) -> None:
    await run_scenario(make_bus(max_deliveries=1, redelivery_delay=0))
