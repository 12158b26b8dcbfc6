"""Dead letters on Redis: list, replay and purge the entries of `<stream>:dead`.

A mixin of `RedisEventTransport` (it uses the transport's client, stream names and entry
decoding). A dead letter is replayed by adding its entry back to its stream, with the
`bus_dead_*` fields left out and two headers (in the empty-named field, the one a Lightbus
1.x consumer skips) that name the listener group it is for and the dead letter it replays.
Bus consumers of the other groups acknowledge it unseen; the dead letter is deleted in the
same Lua script as the XADD, so replaying it twice delivers it once.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from bus_core.errors import BusError
from bus_core.transports import (
    REPLAY_GROUP_HEADER,
    REPLAY_OF_HEADER,
    DeadLetter,
    replayed_for_another_group,
)
from bus_redis.base import Scripts
from bus_redis.connection import redis_call

if TYPE_CHECKING:
    from bus_redis.event import RedisEventTransport

DEAD_FIELDS = (b"bus_dead_reason", b"bus_dead_group", b"bus_dead_entry_id",
               b"bus_dead_delivery_count", b"bus_dead_time")
PAGE = 200  # entries read per XREVRANGE while filtering
_MARK = REPLAY_GROUP_HEADER.encode()

# KEYS: dead-letter stream, stream. ARGV: dead letter id, MAXLEN (0: none), field, value...
# Deletes the dead letter and adds its entry back in one step: false if it was gone.
REPLAY = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return false end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
if tonumber(ARGV[2]) > 0 then
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
end
return redis.call('XADD', KEYS[2], '*', unpack(fields))
"""
_scripts = Scripts(replay_dead_letter=REPLAY)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _bound(moment: datetime | None, default: str, high: bool) -> str:
    if moment is None:
        return default
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    milliseconds = max(0, int(moment.timestamp() * 1000))  # ids start at 1970
    return f"{milliseconds}-18446744073709551615" if high else f"{milliseconds}-0"


def _time(value: bytes | None, dead_id: str) -> datetime | None:
    """When the entry was dead-lettered: the time of its dead-letter entry id, so that
    letters ordered by time are in stream order too (two workers dead-lettering at once may
    stamp `bus_dead_time` in the other order); the stamp only when the id has no time."""
    try:
        return datetime.fromtimestamp(int(dead_id.split("-")[0]) / 1000, tz=timezone.utc)
    except ValueError:
        pass
    if value:
        try:
            moment = datetime.fromisoformat(_text(value))
            return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return None


class RedisDeadLetters:
    """`list_dead_letters`, `replay_dead_letter` and `purge_dead_letter` on Redis."""

    async def _dead_streams(self: RedisEventTransport, api_name: str,
                            event_name: str | None) -> list[str]:
        if event_name is not None or self.stream_use == "per_api":
            return [self.dead_letter_stream(self.stream_name(api_name, event_name or "*"))]
        # per_event streams and no event named: each event's dead-letter stream there is.
        pattern = _glob_escape(f"{api_name}.") + "*" + _glob_escape(f":stream"
                                                                    f"{self.dead_letter_suffix}")
        found = [_text(key) async for key in self.redis.scan_iter(match=pattern, count=500)]
        return sorted(set(found))

    async def list_dead_letters(self: RedisEventTransport, api_name: str,
                                event_name: str | None = None, start: datetime | None = None,
                                stop: datetime | None = None, limit: int | None = None
                                ) -> list[DeadLetter]:
        async def read() -> list[DeadLetter]:
            letters: list[DeadLetter] = []
            for dead_stream in await self._dead_streams(api_name, event_name):
                letters += await self._read_dead(dead_stream, api_name, event_name, start,
                                                 stop, limit)
            letters.sort(key=lambda letter: _order(letter.id), reverse=True)
            return letters[:limit] if limit is not None else letters

        return await redis_call(self.url, f"cannot read the dead letters of {api_name}", read)

    async def _read_dead(self: RedisEventTransport, dead_stream: str, api_name: str,
                         event_name: str | None, start: datetime | None,
                         stop: datetime | None, limit: int | None) -> list[DeadLetter]:
        stream = dead_stream[:-len(self.dead_letter_suffix)]
        high, low = _bound(stop, "+", True), _bound(start, "-", False)
        letters: list[DeadLetter] = []
        while limit is None or len(letters) < limit:
            entries = await self.redis.xrevrange(dead_stream, max=high, min=low, count=PAGE)
            for raw_id, fields in entries:
                letter = self._dead_letter(stream, _text(raw_id), fields)
                if letter.api_name not in (None, api_name) or (
                        event_name is not None and letter.event_name not in (None, event_name)):
                    continue
                letters.append(letter)
            if len(entries) < PAGE:
                break
            high = "(" + _text(entries[-1][0])
        return letters if limit is None else letters[:limit]

    def _dead_letter(self: RedisEventTransport, stream: str, dead_id: str,
                     fields: dict[bytes, bytes]) -> DeadLetter:
        """A dead-letter entry as a DeadLetter (never raises: a bad one gets `problem`)."""
        original = {name: value for name, value in fields.items() if name not in DEAD_FIELDS}
        count_text = fields.get(b"bus_dead_delivery_count")
        try:
            count = int(count_text) if count_text else None
        except ValueError:
            count = None
        entry_id = fields.get(b"bus_dead_entry_id")
        letter = DeadLetter(
            id=dead_id, stream=stream, group=_text(fields.get(b"bus_dead_group", b"")),
            reason=_text(fields.get(b"bus_dead_reason", b"")),
            time=_time(fields.get(b"bus_dead_time"), dead_id), delivery_count=count,
            entry_id=_text(entry_id) if entry_id else None)
        api, event = original.get(b"api_name"), original.get(b"event_name")
        letter.api_name = _text(api) if api else None
        letter.event_name = _text(event) if event else None
        delivery = self.decode(stream, letter.entry_id or dead_id, original, count or 0)
        if delivery is None:
            letter.problem = "the entry has no fields"
        elif delivery.message is None:
            letter.problem = delivery.problem
        else:
            letter.message = delivery.message
            letter.message.native_id = letter.entry_id
        return letter

    async def replay_dead_letter(self: RedisEventTransport, letter: DeadLetter) -> str | None:
        if letter.message is None:
            raise BusError(f"dead letter {letter.id} of {letter.stream} cannot be replayed: "
                           f"{letter.problem or 'it cannot be decoded'} (purge it instead)")
        if not letter.group:
            raise BusError(f"dead letter {letter.id} of {letter.stream} names no listener "
                           "group to replay it to")
        dead_stream = self.dead_letter_stream(letter.stream)
        message = letter.message
        headers = dict(message.headers or {})
        headers[REPLAY_GROUP_HEADER] = letter.group
        headers[REPLAY_OF_HEADER] = letter.id
        fields: list[bytes | str] = []
        for name, value in self.encode(message).items():
            if name != "":
                fields += [name, value]
        fields += ["", json.dumps(headers, separators=(",", ":"))]

        async def replay() -> Any:
            if self.cluster:
                # The two streams hash apart: delete first (so a second replay finds
                # nothing), then add; should the add fail, the dead letter is put back.
                if not await self.redis.xdel(dead_stream, letter.id):
                    return None
                try:
                    return await self.redis.xadd(
                        letter.stream, dict(zip(fields[::2], fields[1::2], strict=True)),
                        maxlen=self.max_stream_length or None, approximate=True)
                except Exception:
                    await self._restore(dead_stream, letter)
                    raise
            return await _scripts.run(self.redis, "replay_dead_letter",
                                      [dead_stream, letter.stream],
                                      [letter.id, self.max_stream_length or 0, *fields])

        reply = await redis_call(self.url, f"cannot replay dead letter {letter.id}", replay)
        return _text(reply) if reply else None

    async def _restore(self: RedisEventTransport, dead_stream: str, letter: DeadLetter) -> None:
        """Cluster mode, a replay whose XADD failed: the dead letter back (a new id)."""
        assert letter.message is not None
        fields: dict[Any, Any] = dict(self.encode(letter.message))
        fields.update({"bus_dead_reason": letter.reason, "bus_dead_group": letter.group,
                       "bus_dead_entry_id": letter.entry_id or "",
                       "bus_dead_delivery_count": str(letter.delivery_count or 0),
                       "bus_dead_time": (letter.time or datetime.now(timezone.utc)).isoformat()})
        await self.redis.xadd(dead_stream, fields)

    async def purge_dead_letter(self: RedisEventTransport, letter: DeadLetter) -> bool:
        dead_stream = self.dead_letter_stream(letter.stream)
        removed = await redis_call(self.url, f"cannot purge dead letter {letter.id}",
                                   lambda: self.redis.xdel(dead_stream, letter.id))
        return bool(removed)


def _order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    try:
        return int(milliseconds), int(sequence or 0)
    except ValueError:
        return 0, 0


def replay_for_other_group(fields: dict[bytes, bytes], group: str) -> bool:
    """An entry that replays a dead letter of another listener group than `group` (its
    headers field names that group): the consumer acknowledges it without handing it out.
    Called only for entries that have a headers field."""
    raw = fields.get(b"")
    if not raw or _MARK not in raw:  # headers of another kind (trace context): not parsed
        return False
    try:
        headers = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(headers, dict) and replayed_for_another_group(
        {k: v for k, v in headers.items() if isinstance(v, str)}, group)
