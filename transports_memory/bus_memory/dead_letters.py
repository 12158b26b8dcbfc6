"""Dead letters in memory: list, replay and purge the broker's `dead_letters`.

A mixin of `MemoryEventTransport`. A replay appends the event back to its stream with the
headers that name the listener group it is for (`bus-replay-group`) and the dead letter it
replays (`bus-replay-of`); consumers of other groups acknowledge it unseen. The dead letter
is removed under the broker's lock in the same step, so replaying it twice delivers once.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from bus_core.errors import BusError
from bus_core.messages import event_to_blob
from bus_core.transports import (
    REPLAY_GROUP_HEADER,
    REPLAY_OF_HEADER,
    DeadLetter,
    replayed_for_another_group,
)

if TYPE_CHECKING:
    from bus_memory.broker import DeadLetter as StoredLetter
    from bus_memory.transports import MemoryEventTransport

_MARK = REPLAY_GROUP_HEADER.encode()


def letter_id(stored: StoredLetter) -> str:
    """A dead letter's id: its entry's offset and the group that gave up on it."""
    return f"{stored.native_id}@{stored.group}"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class MemoryDeadLetters:
    """`list_dead_letters`, `replay_dead_letter` and `purge_dead_letter` in memory."""

    def _as_letter(self: MemoryEventTransport, stored: StoredLetter) -> DeadLetter:
        letter = DeadLetter(id=letter_id(stored), stream=stored.stream, group=stored.group,
                            reason=stored.reason, time=stored.time, entry_id=stored.native_id)
        try:
            from bus_core.messages import event_from_blob

            letter.message = event_from_blob(self.serializer.loads(stored.data))
            letter.message.native_id = stored.native_id
            letter.api_name = letter.message.api_name
            letter.event_name = letter.message.event_name
        except Exception as exc:
            letter.problem = f"cannot decode the entry: {type(exc).__name__}: {exc}"[:300]
            letter.api_name, _, letter.event_name = stored.stream.rpartition(".")
        return letter

    async def list_dead_letters(self: MemoryEventTransport, api_name: str,
                                event_name: str | None = None, start: datetime | None = None,
                                stop: datetime | None = None, limit: int | None = None
                                ) -> list[DeadLetter]:
        prefix = f"{api_name}."
        with self.broker.lock:
            stored = list(self.broker.dead_letters)
        found: list[DeadLetter] = []
        for item in reversed(stored):
            if event_name is not None:
                if item.stream != self.stream_name(api_name, event_name):
                    continue
            elif not item.stream.startswith(prefix) or "." in item.stream[len(prefix):]:
                continue
            if (start and item.time < _aware(start)) or (stop and item.time > _aware(stop)):
                continue
            found.append(self._as_letter(item))
            if limit is not None and len(found) >= limit:
                break
        return found

    def _take(self: MemoryEventTransport, letter: DeadLetter) -> StoredLetter | None:
        """Remove the stored dead letter `letter` stands for (the broker's lock held)."""
        for item in self.broker.dead_letters:
            if item.stream == letter.stream and letter_id(item) == letter.id:
                self.broker.dead_letters.remove(item)
                return item
        return None

    async def replay_dead_letter(self: MemoryEventTransport, letter: DeadLetter
                                 ) -> str | None:
        if letter.message is None:
            raise BusError(f"dead letter {letter.id} of {letter.stream} cannot be replayed: "
                           f"{letter.problem or 'it cannot be decoded'} (purge it instead)")
        message = letter.message
        headers = {**(message.headers or {}), REPLAY_GROUP_HEADER: letter.group,
                   REPLAY_OF_HEADER: letter.id}
        blob = event_to_blob(message)
        blob["headers"] = headers
        data = self.serializer.dumps(blob)
        stream = self.broker.stream(letter.stream, self.max_stream_length)
        with self.broker.lock:
            if self._take(letter) is None:
                return None
            entry = stream.append(data)
        return entry.native_id

    async def purge_dead_letter(self: MemoryEventTransport, letter: DeadLetter) -> bool:
        with self.broker.lock:
            return self._take(letter) is not None


def replayed_elsewhere(transport: Any, data: bytes, group: str) -> bool:
    """An entry that replays another listener group's dead letter: the consumer of `group`
    acknowledges it unseen. A substring test first, so other entries cost almost nothing."""
    if _MARK not in data:
        return False
    try:
        blob = transport.serializer.loads(data)
    except Exception:
        return False
    headers = blob.get("headers") if isinstance(blob, dict) else None
    return isinstance(headers, dict) and replayed_for_another_group(
        {k: v for k, v in headers.items() if isinstance(v, str)}, group)
