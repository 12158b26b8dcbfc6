"""The four transport contracts a transport plugin implements.

Each kind is chosen per API in the config (`apis.<name>.rpc_transport: {memory: {...}}`).
A client makes one instance per (kind, name, options) per event loop, so an instance is only
ever used from one loop and may hold loop-bound connections. Instances are opened lazily,
before their first use, and closed with the client.

Transports move bytes made by the configured serializer; the kernel owns what the bytes mean
(`bus_core.messages`) and what to do with a message that fails (`bus_core.worker`).

Whatever arrives, one entry, call or reply that cannot be decoded affects only itself: the
decoding helpers here never raise, they describe the problem instead.

A result transport declares the return paths it writes to with `return_path_scheme` and
`check_return_path`; calls whose return path no loaded result transport accepts are refused
when they are received (`decode_call`), before they run, and never answered.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from bus_core.messages import (
    EventMessage,
    ResultMessage,
    RpcMessage,
    describe,
    preview,
    rpc_from_blob,
    valid_message_id,
)


class Serializer(Protocol):
    """Turns JSON-safe values into bytes and back. Registered by name through a hook."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes | str) -> Any: ...


class Transport(abc.ABC):  # noqa: B024  (no method every transport must define)
    """What every transport shares: lazy open, close, and the context it was built with."""

    def __init__(self, *, serializer: Serializer, service_name: str, process_name: str,
                 **options: Any) -> None:
        self.serializer = serializer
        self.service_name = service_name
        self.process_name = process_name
        self.options = options

    async def open(self) -> None:  # noqa: B027  (optional)
        """Connect. Called once, before first use, on the loop that will use the instance."""

    async def close(self) -> None:  # noqa: B027  (optional)
        """Release connections. After this the instance is not used again."""

    async def check(self, api_names: Sequence[str] = ()) -> list[str]:
        """What `bus config check --connect` asks before a deploy: can this transport, as
        configured, do its job? Called once, after `open()` (and followed by `close()`), on
        an instance made from the config like any other.

        `api_names`: the APIs whose `apis.<name>` section selects this instance (and those
        named with `--api` when `apis.default` selects it), so that the check can use their
        real key names; empty when none is known. The CLI passes it only to a `check` that
        takes it, so an override written as `check(self)` still works.

        Returns the problems found, each one line an operator can act on (unreachable,
        credentials refused, server too old, a command or key pattern the user may not
        use), naming no secret; an empty list means "ok". A `CheckNote` in the list is
        information, not a problem (a fallback on an older server, a role this user cannot
        play, a part that could not be verified). It must not change any data a service
        uses, nor wait longer than a few seconds. It may raise instead of returning a
        problem (`TransportUnavailable` and the like): the exception's message is then the
        problem. The default checks nothing and returns []."""
        return []


class CheckNote(str):
    """A line of `Transport.check()`'s answer that informs and is no problem by itself.

    `role`: the note says this transport cannot play that role (`call`, `serve`, `fire`,
    `listen`, `schema`): a problem only for a service that plays it, which the operator
    says with `bus config check --connect --role ROLE`. `unverified`: part of the check
    could not be made (e.g. the user may not ask Redis about permissions); the transport is
    then not reported "ok", and with `--role` it is a problem."""

    role: str | None
    unverified: bool

    def __new__(cls, text: str, *, role: str | None = None,
                unverified: bool = False) -> CheckNote:
        note = super().__new__(cls, text)
        note.role = role
        note.unverified = unverified
        return note


@dataclass(slots=True)
class MalformedRpc:
    """A call that arrived but cannot be decoded; `return_path` is set if it could be read."""

    problem: str
    raw: bytes | str
    return_path: str | None = None
    id: str | None = None


# A result transport's check of a return path: (the path after its scheme, the call) ->
# why it refuses it, or None. Registered by scheme when its class is defined.
ReturnPathCheck = Callable[[str, "RpcMessage | MalformedRpc"], "str | None"]
_return_path_checks: dict[str, ReturnPathCheck] = {}


def return_path_problem(path: str, call: RpcMessage | MalformedRpc) -> str | None:
    """Why no loaded result transport would answer `call` on `path`, or None if one would.
    A result transport reads only return paths of the forms its callers write."""
    for scheme, check in _return_path_checks.items():
        if path.startswith(scheme):
            problem = check(path[len(scheme):], call)
            return None if problem is None else f"return path {preview(path)}: {problem}"
    return f"return path {preview(path)} is not one any result transport here writes"


def decode_call(serializer: Serializer, data: bytes | str) -> RpcMessage | MalformedRpc:
    """A received call blob as a message, or as a MalformedRpc that keeps whatever valid
    return path and id could be read (so the worker can still answer the caller). Never
    raises: whatever goes wrong decoding one call concerns that call alone. A call whose
    return path no result transport accepts is a MalformedRpc without a return path: it is
    neither run nor answered."""
    try:
        blob = serializer.loads(data)
    except Exception as exc:
        return MalformedRpc(problem=describe(exc), raw=data)
    try:
        message = rpc_from_blob(blob)
    except Exception as exc:
        metadata = blob.get("metadata") if isinstance(blob, dict) else None
        metadata = metadata if isinstance(metadata, dict) else {}
        path, message_id = metadata.get("return_path"), metadata.get("id")
        malformed = MalformedRpc(
            problem=describe(exc), raw=data,
            id=message_id if isinstance(message_id, str) and valid_message_id(message_id)
            else None)
        if isinstance(path, str) and path and return_path_problem(path, malformed) is None:
            malformed.return_path = path
        return malformed
    problem = return_path_problem(message.return_path, message)
    if problem is not None:
        return MalformedRpc(problem=f"refused: {problem}", raw=data, id=message.id)
    return message


class RpcConsumer(abc.ABC):
    """Receives calls for a set of APIs (one worker's share of the queues).

    A consumer that can tell callers which worker took their calls (so that a caller whose
    worker dies learns it before its timeout: `RpcWorkerLost`) passes on, for each call,
    whether it is in `idempotent_rpcs`: (api, rpc) pairs the worker declares safe to run
    again. The worker sets it right after `open_consumer`."""

    idempotent_rpcs: frozenset[tuple[str, str]] = frozenset()

    @abc.abstractmethod
    async def receive(self, limit: int) -> Sequence[RpcMessage | MalformedRpc]:
        """Wait for at least one call and return the calls available now, at most `limit`
        (what the worker has room to run: calls it takes are no longer open to others).

        Calls whose expiry has passed are dropped here, unseen (RPCs are at most once)."""

    async def close(self) -> None:  # noqa: B027
        """Stop receiving; calls not yet returned stay queued for other workers."""


class RpcTransport(Transport):
    """Carries calls from callers to the workers that serve an API."""

    @abc.abstractmethod
    async def call_rpc(self, message: RpcMessage, *, timeout: float) -> None:
        """Queue `message`; it expires if no worker takes it within `timeout` seconds."""

    @abc.abstractmethod
    async def open_consumer(self, api_names: Sequence[str]) -> RpcConsumer:
        """Start consuming calls for `api_names`."""

    async def try_lock(self, name: str, owner: str, ttl: float) -> bool:
        """Optional: take the lock `name` of this service for `ttl` seconds, or extend it
        when `owner` already holds it; False when another owner holds it."""
        raise NotImplementedError(f"{type(self).__name__} has no locks")

    async def unlock(self, name: str, owner: str) -> None:
        """Optional: release the lock `name` if `owner` holds it."""
        raise NotImplementedError(f"{type(self).__name__} has no locks")


class ResultTransport(Transport):
    """Carries each RPC's result back to its caller.

    A subclass sets `return_path_scheme` (e.g. "redis+key://") and overrides
    `check_return_path` to say which of those paths it answers: calls with any other return
    path are refused on receipt (see `decode_call`)."""

    return_path_scheme: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        scheme = cls.__dict__.get("return_path_scheme")
        if scheme:
            _return_path_checks[scheme] = cls.check_return_path

    @classmethod
    def check_return_path(cls, key: str, call: RpcMessage | MalformedRpc) -> str | None:
        """Why a result for `call` must not be sent to `key` (its return path without the
        scheme), or None if it may. Called for every call received: keep it cheap."""
        return None

    @abc.abstractmethod
    def get_return_path(self, message: RpcMessage) -> str:
        """Where the worker should send the result of `message` (e.g. `redis+key://...`)."""

    @abc.abstractmethod
    async def send_result(self, rpc_message: RpcMessage, result_message: ResultMessage,
                          return_path: str) -> None:
        """Deliver a result to `return_path` (worker side)."""

    @abc.abstractmethod
    async def receive_result(self, rpc_message: RpcMessage, return_path: str,
                             timeout: float) -> ResultMessage:
        """Wait for the result of `rpc_message`; raise `TimeoutError` after `timeout` s.

        A transport that can tell raises `bus_core.errors.RpcWorkerLost` as soon as it
        knows the worker that took the call stopped without answering (its `idempotent`
        saying whether that worker declared the RPC safe to run again). The caller may then
        queue the same message again and call this again for the time left."""


@dataclass(slots=True)
class EventDelivery:
    """One event handed to one consumer. `message` is None when the entry is malformed,
    and `problem` says why. `delivery_count` counts this delivery (first delivery: 1)."""

    message: EventMessage | None
    delivery_count: int
    native_id: str
    stream: str
    problem: str | None = None
    raw: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class EventConsumer(abc.ABC):
    """One listener's consumer: receives deliveries and settles each one exactly once."""

    @abc.abstractmethod
    async def receive(self, limit: int) -> Sequence[EventDelivery]:
        """Wait for deliveries; return what is available now, at most `limit` (an empty
        list only after the transport recovered from a hiccup, such as a lost group)."""

    @abc.abstractmethod
    async def acknowledge(self, deliveries: Sequence[EventDelivery]) -> None:
        """The handler succeeded (or the entry is to be skipped): never deliver it again."""

    @abc.abstractmethod
    async def redeliver(self, delivery: EventDelivery, delay: float) -> None:
        """The handler failed: deliver it again to this listener after `delay` seconds."""

    @abc.abstractmethod
    async def dead_letter(self, delivery: EventDelivery, reason: str) -> None:
        """Move the entry to the dead-letter store with `reason`, and acknowledge it."""

    async def close(self) -> None:  # noqa: B027
        """Stop consuming. Deliveries not acknowledged become available to other consumers."""


class EventTransport(Transport):
    """Carries events from the API that fires them to every listener."""

    # False for a transport whose send_event never waits on I/O (the memory transport): the
    # client then spares it the per-fire timer of `apis.<api>.event_fire_timeout`.
    send_may_block: bool = True

    @abc.abstractmethod
    async def send_event(self, message: EventMessage) -> None:
        """Publish `message`; set `message.native_id` (and `time`) when the backend has one."""

    async def send_events(self, messages: Sequence[EventMessage]) -> None:
        """Publish several events, in order (`fire_many`): a transport that can sends them
        in one round trip. Sets each one's `native_id` and `time` as `send_event` does."""
        for message in messages:
            await self.send_event(message)

    @abc.abstractmethod
    async def open_consumer(self, listen_for: Sequence[tuple[str, str]], listener_name: str,
                            since: str | datetime | None = None) -> EventConsumer:
        """Join listener `listener_name` for `(api_name, event_name)` pairs.

        Every listener name receives every event; consumers sharing a listener name (in this
        service) share the load. `since` sets where a *new* listener starts: None for new
        events only, "0" for the beginning, a datetime, or a transport-native id."""

    async def history(self, api_name: str, event_name: str, start: datetime | None = None,
                      stop: datetime | None = None, undecodable: list[str] | None = None
                      ) -> AsyncIterator[EventMessage]:
        """Events of one kind already on the transport, newest first, read-only. Entries
        that cannot be decoded are skipped; with `undecodable`, their native ids are
        appended to it (so `bus inspect` can say what it could not show)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no history")
        yield  # pragma: no cover

    async def lag(self, api_name: str, event_name: str, listener_name: str) -> int:
        """How many events listener `listener_name` has not yet received or acknowledged."""
        raise NotImplementedError(f"{type(self).__name__} cannot report lag")

    async def groups(self, api_name: str, event_name: str) -> list[GroupInfo]:
        """Optional: the listener groups on the stream that carries this event, with their
        consumers (for `bus state`: which consumers sit idle, and what they hold)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list listener groups")

    async def list_dead_letters(self, api_name: str, event_name: str | None = None,
                                start: datetime | None = None, stop: datetime | None = None,
                                limit: int | None = None) -> list[DeadLetter]:
        """Optional: the dead letters of one API's events (of one event when `event_name`
        is given), dead-lettered in [start, stop], newest first, at most `limit`. For
        `bus dead-letters` and the web console (`bus_core.dead_letters`); read-only.
        Malformed dead letters are listed too, with `message` None and `problem` set."""
        raise NotImplementedError(f"{type(self).__name__} cannot list dead letters")

    async def replay_dead_letter(self, letter: DeadLetter) -> str | None:
        """Optional: deliver `letter` (as listed by `list_dead_letters`) again, to the
        listener group that dead-lettered it only, as a new delivery on its stream, and
        remove it from the dead-letter store, atomically where the backend allows. The
        event keeps its id; its headers carry `REPLAY_GROUP_HEADER` (the group: consumers
        of other groups acknowledge it unseen) and `REPLAY_OF_HEADER` (the dead letter's
        id), so a handler can tell a replay. Returns the new entry's native id, or None
        when the dead letter is no longer there (replayed or purged already): replaying
        twice delivers once. A malformed dead letter cannot be replayed (BusError)."""
        raise NotImplementedError(f"{type(self).__name__} cannot replay dead letters")

    async def purge_dead_letter(self, letter: DeadLetter) -> bool:
        """Optional: delete `letter` from the dead-letter store; False if it was gone."""
        raise NotImplementedError(f"{type(self).__name__} cannot purge dead letters")


# Headers of a replayed dead letter (see `EventTransport.replay_dead_letter`).
REPLAY_GROUP_HEADER = "bus-replay-group"
REPLAY_OF_HEADER = "bus-replay-of"


def replayed_for_another_group(headers: dict[str, str] | None, group: str) -> bool:
    """True for an event that is the replay of a dead letter of a listener group other than
    `group`: a consumer of `group` acknowledges it without handing it out. Cheap on the
    usual path (no headers: one test)."""
    if not headers:
        return False
    target = headers.get(REPLAY_GROUP_HEADER)
    return target is not None and target != group


@dataclass(slots=True)
class DeadLetter:
    """One dead-lettered event, as `EventTransport.list_dead_letters` reports it.

    `id` is its id in the dead-letter store (unique per `stream`); `entry_id` the native
    id it had on `stream`; `group` the listener group that gave up on it. `message` is the
    decoded event, or None for a malformed entry (then `problem` says why)."""

    id: str
    stream: str
    group: str
    reason: str
    time: datetime | None
    delivery_count: int | None = None
    entry_id: str | None = None
    api_name: str | None = None
    event_name: str | None = None
    message: EventMessage | None = None
    problem: str | None = None


@dataclass(slots=True)
class ConsumerInfo:
    """One consumer (a process) of a listener group."""

    name: str
    pending: int  # entries delivered to it and not yet acknowledged
    idle: float | None  # seconds since it last read or claimed; None if not tracked


@dataclass(slots=True)
class GroupInfo:
    """One listener group on one stream, as `EventTransport.groups` reports it."""

    stream: str
    name: str
    pending: int
    lag: int | None  # entries not yet read by the group; None if unknown
    consumers: list[ConsumerInfo] = field(default_factory=list)


class SchemaTransport(Transport):
    """Shares each API's schema between services."""

    @abc.abstractmethod
    async def store(self, api_name: str, schema: dict[str, Any], ttl: float | None) -> None:
        """Publish `schema` for `api_name`, expiring after `ttl` seconds unless refreshed."""

    @abc.abstractmethod
    async def load(self) -> dict[str, dict[str, Any]]:
        """Every live API schema, by API name."""


TRANSPORT_KINDS: dict[str, type[Transport]] = {
    "rpc": RpcTransport,
    "result": ResultTransport,
    "event": EventTransport,
    "schema": SchemaTransport,
}
