"""The dead-letter engine behind `bus dead-letters` and the web console: list, show, replay
and purge dead-lettered events, by API, event, time and count.

It only calls the event transports' optional dead-letter methods
(`EventTransport.list_dead_letters`, `replay_dead_letter`, `purge_dead_letter`), so it works
on every transport that has them. Replaying is idempotent per dead letter (the transport
removes the dead letter in the same step as the new delivery); every replay and purge is
logged with who asked for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bus_core.errors import BusError
from bus_core.transports import DeadLetter

if TYPE_CHECKING:
    from bus_core.client import BusClient

logger = logging.getLogger("bus.dead_letters")


@dataclass
class Selection:
    """Which dead letters: `api` (every event of it), `events` ((api, event) pairs), a time
    window on when they were dead-lettered, and at most `limit` (newest first)."""

    api: str | None = None
    events: list[tuple[str, str]] = field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None


@dataclass
class Outcome:
    """What a replay or purge did to one dead letter: `done` False means it was gone
    already (replayed or purged before), `new_id` the replayed entry's native id."""

    letter: DeadLetter
    done: bool
    new_id: str | None = None
    error: str | None = None


async def known_apis(client: BusClient) -> list[str]:
    """The APIs whose dead letters are looked for when none is named: those registered
    here and those the shared schema describes (other services' APIs)."""
    names = set(client.apis)
    try:
        names |= set(await client.describe_apis())
    except Exception as exc:  # no schema transport reachable: the local ones still count
        logger.debug("cannot describe the bus's APIs: %s", exc)
    return sorted(names)


async def _transport(client: BusClient, api_name: str) -> Any:
    state = await client.state()
    return await state.transport("event", api_name)


def _no_support(api_name: str, exc: NotImplementedError) -> BusError:
    return BusError(f"API {api_name!r}: {exc} (dead letters need an event transport that "
                    "keeps them, such as redis or memory)")


async def list_dead_letters(client: BusClient, selection: Selection) -> list[DeadLetter]:
    """The selected dead letters, newest first (by when they were dead-lettered)."""
    targets: list[tuple[str, str | None]] = list(selection.events)
    if selection.api is not None and not any(a == selection.api for a, _ in targets):
        targets.append((selection.api, None))
    if not targets:
        targets = [(name, None) for name in await known_apis(client)]
    letters: list[DeadLetter] = []
    for api_name, event_name in targets:
        transport = await _transport(client, api_name)
        try:
            letters += await transport.list_dead_letters(
                api_name, event_name, selection.since, selection.until, selection.limit)
        except NotImplementedError as exc:
            if selection.api or selection.events:
                raise _no_support(api_name, exc) from None
    unique = {(letter.stream, letter.id): letter for letter in letters}
    ordered = sorted(unique.values(), key=_when, reverse=True)
    return ordered[:selection.limit] if selection.limit is not None else ordered


def _when(letter: DeadLetter) -> tuple[float, tuple[int, ...], str]:
    """Newest first: by time, then (same moment) by id, numerically where it is made of
    numbers (a Redis entry id `ms-seq`, a memory offset), as the transports order them."""
    parts = letter.id.split("-")
    numbers = tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()
    return (letter.time.timestamp() if letter.time else 0.0, numbers, letter.id)


async def find(client: BusClient, ids: Sequence[str], selection: Selection
               ) -> list[DeadLetter]:
    """The dead letters with these ids among the selection (limit ignored), in the order
    asked; BusError naming the ids not found, or found on more than one stream."""
    wanted = list(dict.fromkeys(ids))
    everything = await list_dead_letters(client, Selection(
        selection.api, selection.events, selection.since, selection.until, None))
    by_id: dict[str, list[DeadLetter]] = {}
    for letter in everything:
        by_id.setdefault(letter.id, []).append(letter)
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise BusError(f"no dead letter {', '.join(missing)} here (list them with "
                       "`bus dead-letters list`; narrow with --api or -e)")
    ambiguous = [i for i in wanted if len(by_id[i]) > 1]
    if ambiguous:
        raise BusError(f"dead letter id {', '.join(ambiguous)} is on several streams: name "
                       "the API and event with --api/-e")
    return [by_id[i][0] for i in wanted]


async def replay(client: BusClient, letters: Sequence[DeadLetter], who: str
                 ) -> list[Outcome]:
    """Replay each dead letter to the listener group that dead-lettered it (a dead letter
    that is already gone is reported, not replayed again). Logged with `who`."""
    outcomes = []
    for letter in letters:
        api_name = letter.api_name or letter.stream
        transport = await _transport(client, api_name)
        try:
            new_id = await transport.replay_dead_letter(letter)
        except NotImplementedError as exc:
            raise _no_support(api_name, exc) from None
        except BusError as exc:
            outcomes.append(Outcome(letter, False, error=str(exc)))
            continue
        outcomes.append(Outcome(letter, new_id is not None, new_id))
        if new_id is None:
            logger.info("dead letter %s of %s was already replayed or purged (asked by %s)",
                        letter.id, letter.stream, who)
        else:
            logger.info("replayed dead letter %s of %s to group %s as entry %s, by %s",
                        letter.id, letter.stream, letter.group, new_id, who)
    return outcomes


async def purge(client: BusClient, letters: Sequence[DeadLetter], who: str) -> list[Outcome]:
    """Delete each dead letter for good. Logged with `who`."""
    outcomes = []
    for letter in letters:
        api_name = letter.api_name or letter.stream
        transport = await _transport(client, api_name)
        try:
            done = await transport.purge_dead_letter(letter)
        except NotImplementedError as exc:
            raise _no_support(api_name, exc) from None
        outcomes.append(Outcome(letter, done))
        logger.info("%s dead letter %s of %s (group %s), by %s",
                    "purged" if done else "did not find", letter.id, letter.stream,
                    letter.group, who)
    return outcomes


def letter_row(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as JSON-safe data (the CLI's --json and the console's API)."""
    message = letter.message
    return {
        "id": letter.id, "stream": letter.stream, "group": letter.group,
        "reason": letter.reason, "time": letter.time.isoformat() if letter.time else None,
        "delivery_count": letter.delivery_count, "entry_id": letter.entry_id,
        "api": letter.api_name, "event": letter.event_name,
        "message_id": message.id if message else None,
        "kwargs": message.kwargs if message else None,
        "headers": message.headers if message else None,
        "problem": letter.problem,
    }
