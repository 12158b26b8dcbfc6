"""The transport conformance kit: pytest test classes a transport author runs against their
transport, to learn whether it keeps the promises the kernel relies on.

Use it when you write a transport plugin (or change one): subclass the suites for the kinds
you implement in one of your test modules, and give pytest a fixture named
`bus_transport_factory` that builds your transports on a backend of this test (a fresh
broker, file or database; or a shared one: every test uses API names of its own):

    import pytest
    from bus_core.conformance import EventTransportSuite, RpcTransportSuite

    @pytest.fixture
    def bus_transport_factory(tmp_path):
        def make(kind, **context):
            return MY_CLASSES[kind](path=str(tmp_path / "bus.db"), **context)
        return make

    class TestMyEvents(EventTransportSuite):
        reclaim_after = 2.0   # how long a dead consumer's deliveries take to move on

    class TestMyRpcs(RpcTransportSuite):
        pass

The factory is called as `make(kind, serializer=..., service_name=..., process_name=...)`
with `kind` one of "rpc", "result", "event", "schema", and returns a new, unopened instance;
the kit opens and closes it. The suites need no async plugin: each test runs its own event
loop. Optional parts of a contract (`history`, `lag`, `groups`, `try_lock`/`unlock`) are
skipped, with the reason, when the transport raises NotImplementedError for them.

What is checked: listener groups (every listener name hears every event, consumers of one
name share the load, services do not share groups), acknowledgement, redelivery with its
delay, dead letters, deliveries of a closed consumer reaching another one, `since`,
history, lag, malformed entries, RPC queues (only its APIs, at most `limit`, each call taken
once, expiry), lost workers (optional), locks, return paths and results, schema storage and
TTL; and `BusSuite` runs real clients (`bus_core.create()`) over the transports, given a
`bus_transport_selection` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar, Protocol, TypeVar

try:
    import pytest
except ImportError as exc:  # the kit is for test suites; bus-core does not depend on pytest
    raise ImportError("bus_core.conformance is a pytest suite: pip install pytest") from exc

from bus_core.default_plugins.json_serializer import JsonSerializer
from bus_core.errors import RpcWorkerLost
from bus_core.messages import EventMessage, ResultMessage, RpcMessage, rpc_to_blob
from bus_core.transports import (
    EventConsumer,
    EventDelivery,
    EventTransport,
    MalformedRpc,
    ResultTransport,
    RpcConsumer,
    RpcTransport,
    SchemaTransport,
    Serializer,
    Transport,
    decode_call,
    return_path_problem,
)

__all__ = [
    "BusSuite", "EventTransportSuite", "ResultTransportSuite", "RpcTransportSuite",
    "SchemaTransportSuite", "TransportFactory", "TransportSuite", "Transports",
]

FACTORY_FIXTURE = "bus_transport_factory"
T = TypeVar("T")
_ids = itertools.count(1)


def unique_api_name(prefix: str = "conf") -> str:
    """An API name no other test (nor another process sharing the backend) uses."""
    return f"{prefix}_{os.getpid()}_{next(_ids)}_{uuid.uuid4().hex[:6]}"


class TransportFactory(Protocol):
    """What the `bus_transport_factory` fixture returns: builds one transport of `kind`."""

    def __call__(self, kind: str, *, serializer: Serializer, service_name: str,
                 process_name: str) -> Transport: ...


class GarbageSerializer:
    """Writes bytes no JSON reader accepts: what a broken or foreign peer might send."""

    def dumps(self, value: Any) -> bytes:
        return b"\xff\xfe not json {"

    def loads(self, data: bytes | str) -> Any:
        raise ValueError("the garbage serializer reads nothing")


class Transports:
    """The transports one test made, opened on its loop and closed when it ends."""

    def __init__(self, factory: TransportFactory) -> None:
        self.factory = factory
        self.made: list[Transport] = []
        self.consumers: list[EventConsumer | RpcConsumer] = []
        self.serializer = JsonSerializer()
        self.api = unique_api_name()
        self.other_api = unique_api_name("conf_other")

    async def make(self, kind: str, *, service: str = "svc", process: str = "proc",
                   serializer: Serializer | None = None) -> Any:
        """A new transport of `kind`, opened."""
        transport = self.factory(kind, serializer=serializer or self.serializer,
                                 service_name=service, process_name=process)
        expected = {"rpc": RpcTransport, "result": ResultTransport, "event": EventTransport,
                    "schema": SchemaTransport}[kind]
        if not isinstance(transport, expected):
            pytest.fail(f"{FACTORY_FIXTURE}({kind!r}) returned {type(transport).__name__}, "
                        f"not a {expected.__name__}")
        await transport.open()
        self.made.append(transport)
        return transport

    def keep(self, consumer: T) -> T:
        """Close `consumer` when the test ends (unless the test closes it first)."""
        self.consumers.append(consumer)  # type: ignore[arg-type]
        return consumer

    async def close(self) -> None:
        for consumer in reversed(self.consumers):
            # Closing twice, or after its transport, is not under test here.
            with contextlib.suppress(Exception):
                await consumer.close()
        for transport in reversed(self.made):
            await transport.close()


class TransportSuite:
    """Settings and helpers every suite shares. Override the settings in your subclass."""

    wait: ClassVar[float] = 5.0
    """How long something that must happen may take (reached only when it does not)."""
    quiet: ClassVar[float] = 0.2
    """How long the kit watches for something that must not happen."""
    reclaim_after: ClassVar[float] = 5.0
    """How long the unacknowledged deliveries of a closed consumer may take to reach another
    consumer of the same listener (Redis: its `claim_idle`)."""
    test_timeout: ClassVar[float] = 60.0
    """A hung test fails after this many seconds."""

    @pytest.fixture
    def transports(self, request: pytest.FixtureRequest) -> Transports:
        """The author's factory, wrapped: fails with the fix when no factory is given."""
        try:
            factory = request.getfixturevalue(FACTORY_FIXTURE)
        except pytest.FixtureLookupError:
            pytest.fail(f"the conformance kit needs a fixture named {FACTORY_FIXTURE!r} that "
                        "returns make(kind, *, serializer, service_name, process_name) -> "
                        "a new transport (see bus_core.conformance)", pytrace=False)
        return Transports(factory)

    def run(self, transports: Transports,
            body: Callable[[Transports], Coroutine[Any, Any, None]]) -> None:
        """Run one test body on a fresh event loop, closing what it made."""

        async def main() -> None:
            try:
                await asyncio.wait_for(body(transports), self.test_timeout)
            finally:
                await transports.close()

        asyncio.run(main())

    async def optional(self, call: Awaitable[T], what: str) -> T:
        """Await an optional part of a contract; skip the test if the transport lacks it."""
        try:
            return await call
        except NotImplementedError as exc:
            pytest.skip(f"optional {what} not implemented: {exc}")

    async def until(self, check: Callable[[], Awaitable[bool]], what: str,
                    timeout: float | None = None) -> None:
        """Poll `check` until it holds, failing with `what` after the deadline."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.wait)
        while not await check():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)


# -- events -------------------------------------------------------------------------------


class EventTransportSuite(TransportSuite):
    """The EventTransport and EventConsumer contracts."""

    event: ClassVar[str] = "happened"
    other_event: ClassVar[str] = "also_happened"

    async def fire(self, transport: EventTransport, n: int, *, api: str | None = None,
                   event: str | None = None) -> EventMessage:
        message = EventMessage(api or self._api, event or self.event, {"n": n})
        await transport.send_event(message)
        return message

    async def receive(self, consumer: EventConsumer, limit: int = 100
                      ) -> Sequence[EventDelivery]:
        got = await asyncio.wait_for(consumer.receive(limit), self.wait)
        assert len(got) <= limit, f"receive({limit}) returned {len(got)} deliveries"
        return got

    async def receive_n(self, consumer: EventConsumer, count: int, limit: int = 100,
                        within: float | None = None) -> list[EventDelivery]:
        got: list[EventDelivery] = []
        deadline = time.monotonic() + (within if within is not None else self.wait)
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"received {len(got)} of {count} deliveries")
            try:
                got.extend(await asyncio.wait_for(consumer.receive(limit), left))
            except asyncio.TimeoutError:
                pytest.fail(f"received {len(got)} of {count} deliveries")
        assert len(got) == count, f"received {len(got)} deliveries, expected {count}"
        return got

    async def nothing(self, consumer: EventConsumer) -> None:
        """Assert that `consumer` receives nothing for a while."""
        deadline = time.monotonic() + self.quiet
        while (left := deadline - time.monotonic()) > 0:
            try:
                got = await asyncio.wait_for(consumer.receive(100), left)
            except asyncio.TimeoutError:
                return
            assert not got, f"received {numbers(got)} where nothing was due"

    async def consumer(self, kit: Transports, transport: EventTransport, listener: str,
                       since: str | datetime | None = None,
                       events: Sequence[str] | None = None) -> EventConsumer:
        pairs = [(self._api, event) for event in (events or [self.event])]
        return kit.keep(await transport.open_consumer(pairs, listener, since))

    _api: str = ""

    def go(self, kit: Transports, body: Callable[[Transports], Coroutine[Any, Any, None]]
           ) -> None:
        self._api = kit.api
        self.run(kit, body)

    # listener groups

    def test_every_listener_name_hears_every_event(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            first = await self.consumer(kit, events, "first")
            second = await self.consumer(kit, events, "second")
            for n in range(3):
                await self.fire(events, n)
            assert sorted(numbers(await self.receive_n(first, 3))) == [0, 1, 2]
            assert sorted(numbers(await self.receive_n(second, 3))) == [0, 1, 2]

        self.go(transports, body)

    def test_a_delivery_carries_the_event_as_fired(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            consumer = await self.consumer(kit, events, "reader")
            sent = EventMessage(self._api, self.event, {"n": 7, "text": "ünïcode",
                                                        "items": [1, None, {"a": True}]})
            await events.send_event(sent)
            [delivery] = await self.receive_n(consumer, 1)
            assert delivery.problem is None and delivery.message is not None
            got = delivery.message
            assert (got.api_name, got.event_name, got.kwargs, got.id) == (
                sent.api_name, sent.event_name, sent.kwargs, sent.id)
            assert delivery.delivery_count == 1
            assert isinstance(delivery.native_id, str) and delivery.native_id
            assert isinstance(delivery.stream, str) and delivery.stream
            if sent.native_id is not None:  # set by send_event when the backend has one
                assert sent.native_id == delivery.native_id == got.native_id

        self.go(transports, body)

    def test_receive_waits_for_the_next_event(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            consumer = await self.consumer(kit, events, "waiting")
            waiting = asyncio.ensure_future(self.receive(consumer))
            await asyncio.sleep(self.quiet)  # let it block first
            assert not waiting.done(), "receive() returned with no event fired"
            await self.fire(events, 1)
            assert numbers(await waiting) == [1]

        self.go(transports, body)

    def test_consumers_of_one_listener_share_the_load(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            other = await kit.make("event", process="proc2")
            one = await self.consumer(kit, events, "shared")
            two = await self.consumer(kit, other, "shared")
            for n in range(6):
                await self.fire(events, n)
            got_one: list[EventDelivery] = []
            got_two: list[EventDelivery] = []
            deadline = time.monotonic() + self.wait
            while len(got_one) + len(got_two) < 6 and time.monotonic() < deadline:
                for consumer, got in ((one, got_one), (two, got_two)):
                    with contextlib.suppress(asyncio.TimeoutError):
                        got.extend(await asyncio.wait_for(consumer.receive(2), self.quiet))
            assert set(numbers(got_one)).isdisjoint(numbers(got_two)), \
                "two consumers of one listener were given the same event"
            assert sorted(numbers(got_one) + numbers(got_two)) == list(range(6))
            assert got_one and got_two, "one consumer of a shared listener got nothing"
            await one.acknowledge(got_one)
            await two.acknowledge(got_two)
            await self.nothing(one)
            await self.nothing(two)

        self.go(transports, body)

    def test_a_held_delivery_is_not_given_to_another_consumer(self, transports: Transports
                                                             ) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            other = await kit.make("event", process="proc2")
            one = await self.consumer(kit, events, "shared")
            two = await self.consumer(kit, other, "shared")
            await self.fire(events, 1)
            assert numbers(await self.receive_n(one, 1)) == [1]
            await self.nothing(two)

        self.go(transports, body)

    def test_services_do_not_share_listener_groups(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            mine = await kit.make("event", service="billing")
            theirs = await kit.make("event", service="shipping")
            one = await self.consumer(kit, mine, "audit")
            two = await self.consumer(kit, theirs, "audit")
            await self.fire(mine, 1)
            assert numbers(await self.receive_n(one, 1)) == [1]
            assert numbers(await self.receive_n(two, 1)) == [1]

        self.go(transports, body)

    def test_a_consumer_hears_only_the_events_it_listens_for(self, transports: Transports
                                                            ) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            both = await self.consumer(kit, events, "both",
                                       events=[self.event, self.other_event])
            one = await self.consumer(kit, events, "one")
            await self.fire(events, 1)
            await self.fire(events, 2, event=self.other_event)
            await self.fire(events, 3, api=kit.other_api)
            got = await self.receive_n(both, 2)
            assert sorted((d.message.event_name, d.message.kwargs["n"])  # type: ignore[union-attr]
                          for d in got) == [(self.other_event, 2), (self.event, 1)]
            assert numbers(await self.receive_n(one, 1)) == [1]
            await both.acknowledge(got)
            await self.nothing(both)

        self.go(transports, body)

    # where a new listener starts

    def test_a_new_listener_starts_with_new_events(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            await self.fire(events, 1)
            consumer = await self.consumer(kit, events, "late")
            await self.fire(events, 2)
            assert numbers(await self.receive_n(consumer, 1)) == [2]
            await self.nothing(consumer)

        self.go(transports, body)

    def test_since_zero_starts_at_the_beginning(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            for n in range(3):
                await self.fire(events, n)
            consumer = await self.consumer(kit, events, "replay", since="0")
            assert numbers(await self.receive_n(consumer, 3)) == [0, 1, 2]

        self.go(transports, body)

    def test_since_a_datetime_starts_there(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            await self.fire(events, 1)
            await asyncio.sleep(0.05)  # a timestamp strictly between the two events
            moment = datetime.now(timezone.utc)
            await asyncio.sleep(0.05)
            await self.fire(events, 2)
            consumer = await self.consumer(kit, events, "from_then", since=moment)
            assert numbers(await self.receive_n(consumer, 1)) == [2]
            await self.nothing(consumer)

        self.go(transports, body)

    def test_since_does_not_move_an_existing_listener(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            first = await self.consumer(kit, events, "steady")
            await self.fire(events, 1)
            await first.acknowledge(await self.receive_n(first, 1))
            await first.close()
            again = await self.consumer(kit, events, "steady", since="0")
            await self.nothing(again)
            await self.fire(events, 2)
            assert numbers(await self.receive_n(again, 1)) == [2]

        self.go(transports, body)

    # settling deliveries

    def test_an_acknowledged_event_is_never_delivered_again(self, transports: Transports
                                                           ) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            first = await self.consumer(kit, events, "done")
            for n in range(3):
                await self.fire(events, n)
            await first.acknowledge(await self.receive_n(first, 3))
            await first.close()
            later = await kit.make("event", process="proc2")
            again = await self.consumer(kit, later, "done")
            await self.nothing(again)
            await self.fire(events, 3)
            assert numbers(await self.receive_n(again, 1)) == [3]

        self.go(transports, body)

    def test_a_closed_consumers_unsettled_deliveries_reach_another(
            self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            first = await self.consumer(kit, events, "crashy")
            for n in range(2):
                await self.fire(events, n)
            taken = await self.receive_n(first, 2)
            await first.close()  # "crashed": nothing settled
            later = await kit.make("event", process="proc2")
            again = await self.consumer(kit, later, "crashy")
            got = await self.receive_n(again, 2, within=self.reclaim_after + self.wait)
            assert sorted(numbers(got)) == sorted(numbers(taken))
            assert all(d.delivery_count >= 2 for d in got), \
                "a delivery given again must count its deliveries"

        self.go(transports, body)

    def test_redeliver_gives_it_back_after_the_delay(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            consumer = await self.consumer(kit, events, "retrying")
            await self.fire(events, 1)
            [first] = await self.receive_n(consumer, 1)
            delay = 0.5
            started = time.monotonic()
            await consumer.redeliver(first, delay)
            [second] = await self.receive_n(consumer, 1, within=delay + self.wait)
            assert time.monotonic() - started >= delay * 0.9, "redelivered before its delay"
            assert second.native_id == first.native_id
            assert second.delivery_count == 2
            assert numbers([second]) == [1]
            await consumer.acknowledge([second])
            await self.nothing(consumer)

        self.go(transports, body)

    def test_a_dead_letter_is_not_delivered_again(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            consumer = await self.consumer(kit, events, "strict")
            await self.fire(events, 1)
            await self.fire(events, 2)
            bad, good = sorted(await self.receive_n(consumer, 2),
                               key=lambda d: numbers([d])[0])
            await consumer.dead_letter(bad, "the handler refused it")
            await consumer.acknowledge([good])
            await self.nothing(consumer)
            await consumer.close()
            later = await kit.make("event", process="proc2")
            again = await self.consumer(kit, later, "strict")
            await self.nothing(again)
            try:
                lag = await events.lag(self._api, self.event, "strict")
            except NotImplementedError:
                return
            assert lag == 0, "a dead-lettered event still counts as lag"

        self.go(transports, body)

    def test_a_malformed_entry_is_a_delivery_with_a_problem(self, transports: Transports
                                                           ) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            garbage = await kit.make("event", serializer=GarbageSerializer())
            consumer = await self.consumer(kit, events, "careful")
            await self.fire(garbage, 1)
            await self.fire(events, 2)
            got = await self.receive_n(consumer, 2)
            bad = [d for d in got if d.message is None]
            assert len(bad) == 1, "an undecodable entry must be handed over, to dead-letter"
            assert isinstance(bad[0].problem, str) and bad[0].problem
            assert numbers(got) == [2], "one bad entry must not spoil the good ones"
            await consumer.dead_letter(bad[0], bad[0].problem)
            await consumer.acknowledge([d for d in got if d.message is not None])
            await self.nothing(consumer)

        self.go(transports, body)

    # reading without consuming

    def test_lag_counts_what_a_listener_has_not_settled(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            assert await self.optional(events.lag(self._api, self.event, "nobody"),
                                       "lag") == 0
            consumer = await self.consumer(kit, events, "behind")
            for n in range(3):
                await self.fire(events, n)
            assert await events.lag(self._api, self.event, "behind") == 3
            got = await self.receive_n(consumer, 3)
            assert await events.lag(self._api, self.event, "behind") == 3, \
                "received but not acknowledged is still lag"
            await consumer.acknowledge(got[:1])
            assert await events.lag(self._api, self.event, "behind") == 2
            await consumer.acknowledge(got[1:])
            assert await events.lag(self._api, self.event, "behind") == 0

        self.go(transports, body)

    def test_history_is_newest_first_and_consumes_nothing(self, transports: Transports
                                                         ) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            consumer = await self.consumer(kit, events, "after_history")
            for n in range(3):
                await self.fire(events, n)
            await self.fire(events, 9, event=self.other_event)
            seen = await self.optional(collect(events.history(self._api, self.event)),
                                       "history")
            assert [m.kwargs["n"] for m in seen] == [2, 1, 0]
            assert all(m.event_name == self.event and m.native_id for m in seen)
            assert sorted(numbers(await self.receive_n(consumer, 3))) == [0, 1, 2]

        self.go(transports, body)

    def test_history_keeps_to_its_time_window(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            await self.fire(events, 1)
            await asyncio.sleep(0.05)
            start = datetime.now(timezone.utc)
            await asyncio.sleep(0.05)
            await self.fire(events, 2)
            await asyncio.sleep(0.05)
            stop = datetime.now(timezone.utc)
            await asyncio.sleep(0.05)
            await self.fire(events, 3)
            window = await self.optional(
                collect(events.history(self._api, self.event, start=start, stop=stop)),
                "history")
            assert [m.kwargs["n"] for m in window] == [2]
            since = await collect(events.history(self._api, self.event, start=start))
            assert [m.kwargs["n"] for m in since] == [3, 2]
            until = await collect(events.history(self._api, self.event, stop=stop))
            assert [m.kwargs["n"] for m in until] == [2, 1]

        self.go(transports, body)

    def test_history_skips_and_reports_undecodable_entries(self, transports: Transports
                                                          ) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            garbage = await kit.make("event", serializer=GarbageSerializer())
            await self.fire(events, 1)
            await self.fire(garbage, 2)
            await self.fire(events, 3)
            undecodable: list[str] = []
            seen = await self.optional(
                collect(events.history(self._api, self.event, undecodable=undecodable)),
                "history")
            assert [m.kwargs["n"] for m in seen] == [3, 1]
            assert len(undecodable) == 1 and isinstance(undecodable[0], str)

        self.go(transports, body)

    def test_dead_letters_are_listed_replayed_once_and_purged(self, transports: Transports
                                                              ) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            strict = await self.consumer(kit, events, "strict")
            bystander = await self.consumer(kit, events, "bystander")
            first, second = (await self.fire(events, 1)), (await self.fire(events, 2))
            taken = sorted(await self.receive_n(strict, 2), key=lambda d: numbers([d])[0])
            await bystander.acknowledge(await self.receive_n(bystander, 2))
            for delivery in taken:
                await strict.dead_letter(delivery, f"refused {numbers([delivery])[0]}")
            letters = await self.optional(events.list_dead_letters(self._api, self.event),
                                          "dead-letter listing")
            assert [letter.reason for letter in letters] == ["refused 2", "refused 1"], \
                "dead letters are listed newest first, with their reason"
            for letter, delivery, sent in zip(letters, reversed(taken), (second, first),
                                              strict=True):
                assert letter.message is not None and letter.message.id == sent.id
                assert letter.message.kwargs == sent.kwargs
                assert letter.entry_id == delivery.native_id and letter.group
            assert len(await events.list_dead_letters(self._api, self.event, limit=1)) == 1
            assert await events.list_dead_letters(kit.other_api) == []

            older = letters[1]
            new_id = await self.optional(events.replay_dead_letter(older), "dead-letter replay")
            assert isinstance(new_id, str) and new_id
            [again] = await self.receive_n(strict, 1)
            assert again.message is not None and again.message.id == first.id, \
                "a replayed event keeps its id"
            await strict.acknowledge([again])
            await self.nothing(bystander)  # replayed to the group that gave up on it only
            assert await events.replay_dead_letter(older) is None, "replayed twice"
            await self.nothing(strict)

            newer = letters[0]
            assert await self.optional(events.purge_dead_letter(newer), "purge") is True
            assert await events.purge_dead_letter(newer) is False
            assert await events.list_dead_letters(self._api, self.event) == []

        self.go(transports, body)

    def test_groups_show_what_each_consumer_holds(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            events = await kit.make("event")
            consumer = await self.consumer(kit, events, "watched")
            await self.fire(events, 1)
            await self.receive_n(consumer, 1)
            groups = await self.optional(events.groups(self._api, self.event), "groups")
            held = [g for g in groups if g.pending == 1]
            assert len(held) == 1, f"expected one group holding one entry: {groups}"
            assert sum(c.pending for c in held[0].consumers) == 1

        self.go(transports, body)


# -- RPCs and results ---------------------------------------------------------------------


class _CallsSuite(TransportSuite):
    procedure: ClassVar[str] = "do_it"

    async def call(self, kit: Transports, rpcs: RpcTransport, results: ResultTransport,
                   n: int, *, api: str | None = None, timeout: float = 30.0) -> RpcMessage:
        message = RpcMessage(api or kit.api, self.procedure, {"n": n})
        message.return_path = results.get_return_path(message)
        await rpcs.call_rpc(message, timeout=timeout)
        return message

    async def take(self, consumer: RpcConsumer, count: int, limit: int = 100
                   ) -> list[RpcMessage | MalformedRpc]:
        got: list[RpcMessage | MalformedRpc] = []
        deadline = time.monotonic() + self.wait
        while len(got) < count:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                batch = await asyncio.wait_for(consumer.receive(limit), left)
            except asyncio.TimeoutError:
                pytest.fail(f"received {len(got)} of {count} calls")
            assert len(batch) <= limit, f"receive({limit}) returned {len(batch)} calls"
            got.extend(batch)
        assert len(got) == count, f"received {len(got)} calls, expected {count}"
        return got

    async def no_call(self, consumer: RpcConsumer) -> None:
        try:
            got = await asyncio.wait_for(consumer.receive(100), self.quiet)
        except asyncio.TimeoutError:
            return
        pytest.fail(f"received {len(got)} call(s) where none was due")


class RpcTransportSuite(_CallsSuite):
    """The RpcTransport and RpcConsumer contracts (return paths come from the factory's
    "result" transport, as they do in a client)."""

    reports_lost_workers: ClassVar[bool] = False
    """Set True when the result transport raises RpcWorkerLost once the consumer that took
    a call closed without answering it (memory, Redis); False skips that test."""

    def test_a_call_reaches_a_consumer_of_its_api(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            rpcs, results = await kit.make("rpc"), await kit.make("result")
            consumer = kit.keep(await rpcs.open_consumer([kit.api]))
            sent = RpcMessage(kit.api, self.procedure, {"n": 1, "text": "ünï"},
                              headers={"traceparent": "00-abc-def-01"})
            sent.return_path = results.get_return_path(sent)
            await rpcs.call_rpc(sent, timeout=30)
            [got] = await self.take(consumer, 1)
            assert isinstance(got, RpcMessage), f"a good call arrived malformed: {got}"
            assert (got.api_name, got.procedure_name, got.kwargs, got.id, got.return_path,
                    got.headers) == (sent.api_name, sent.procedure_name, sent.kwargs,
                                     sent.id, sent.return_path, sent.headers)

        self.run(transports, body)

    def test_receive_waits_for_the_next_call(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            rpcs, results = await kit.make("rpc"), await kit.make("result")
            consumer = kit.keep(await rpcs.open_consumer([kit.api]))
            waiting = asyncio.ensure_future(asyncio.wait_for(consumer.receive(10), self.wait))
            await asyncio.sleep(self.quiet)
            assert not waiting.done(), "receive() returned with no call queued"
            sent = await self.call(kit, rpcs, results, 1)
            [got] = await waiting
            assert isinstance(got, RpcMessage) and got.id == sent.id

        self.run(transports, body)

    def test_a_consumer_takes_only_calls_of_its_apis(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            rpcs, results = await kit.make("rpc"), await kit.make("result")
            mine = kit.keep(await rpcs.open_consumer([kit.api]))
            await self.call(kit, rpcs, results, 1, api=kit.other_api)
            await self.call(kit, rpcs, results, 2)
            [got] = await self.take(mine, 1)
            assert isinstance(got, RpcMessage) and got.kwargs == {"n": 2}
            await self.no_call(mine)
            theirs = kit.keep(await rpcs.open_consumer([kit.other_api, "unused_api"]))
            [other] = await self.take(theirs, 1)
            assert isinstance(other, RpcMessage) and other.kwargs == {"n": 1}

        self.run(transports, body)

    def test_receive_takes_at_most_limit(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            rpcs, results = await kit.make("rpc"), await kit.make("result")
            consumer = kit.keep(await rpcs.open_consumer([kit.api]))
            for n in range(5):
                await self.call(kit, rpcs, results, n)
            got = await self.take(consumer, 5, limit=2)
            assert sorted(c.kwargs["n"] for c in got if isinstance(c, RpcMessage)) == \
                [0, 1, 2, 3, 4]

        self.run(transports, body)

    def test_each_call_is_taken_once(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            rpcs, results = await kit.make("rpc"), await kit.make("result")
            other = await kit.make("rpc", process="proc2")
            one = kit.keep(await rpcs.open_consumer([kit.api]))
            two = kit.keep(await other.open_consumer([kit.api]))
            for n in range(6):
                await self.call(kit, rpcs, results, n)
            taken: list[int] = []
            deadline = time.monotonic() + self.wait
            while len(taken) < 6 and time.monotonic() < deadline:
                for consumer in (one, two):
                    try:
                        batch = await asyncio.wait_for(consumer.receive(2), self.quiet)
                    except asyncio.TimeoutError:
                        continue
                    taken += [c.kwargs["n"] for c in batch if isinstance(c, RpcMessage)]
            assert sorted(taken) == list(range(6)), f"calls taken: {sorted(taken)}"
            await self.no_call(one)
            await self.no_call(two)

        self.run(transports, body)

    def test_an_expired_call_is_dropped_unseen(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            rpcs, results = await kit.make("rpc"), await kit.make("result")
            await self.call(kit, rpcs, results, 1, timeout=0.3)
            await asyncio.sleep(0.6)  # its caller has given up: no worker may run it now
            await self.call(kit, rpcs, results, 2)
            consumer = kit.keep(await rpcs.open_consumer([kit.api]))
            [got] = await self.take(consumer, 1)
            assert isinstance(got, RpcMessage) and got.kwargs == {"n": 2}
            await self.no_call(consumer)

        self.run(transports, body)

    def test_a_malformed_call_arrives_as_malformed(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            rpcs, results = await kit.make("rpc"), await kit.make("result")
            garbage = await kit.make("rpc", serializer=GarbageSerializer())
            consumer = kit.keep(await rpcs.open_consumer([kit.api]))
            await self.call(kit, garbage, results, 1)
            await self.call(kit, rpcs, results, 2)
            got = await self.take(consumer, 2)
            bad = [c for c in got if isinstance(c, MalformedRpc)]
            assert len(bad) == 1 and bad[0].problem, "the bad call must come as MalformedRpc"
            assert [c.kwargs["n"] for c in got if isinstance(c, RpcMessage)] == [2]

        self.run(transports, body)

    def test_a_call_round_trips_to_its_caller(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            rpcs, results = await kit.make("rpc"), await kit.make("result")
            worker_results = await kit.make("result", process="worker")
            consumer = kit.keep(await rpcs.open_consumer([kit.api]))
            sent = await self.call(kit, rpcs, results, 20)
            waiting = asyncio.ensure_future(
                results.receive_result(sent, sent.return_path, self.wait))
            [call] = await self.take(consumer, 1)
            assert isinstance(call, RpcMessage)
            answer = ResultMessage(rpc_message_id=call.id, result=call.kwargs["n"] * 2)
            await worker_results.send_result(call, answer, call.return_path)
            got = await waiting
            assert (got.rpc_message_id, got.result, got.error) == (sent.id, 40, False)

        self.run(transports, body)

    def test_a_caller_learns_that_its_worker_stopped_without_answering(
            self, transports: Transports) -> None:
        if not self.reports_lost_workers:
            pytest.skip("reports_lost_workers is False: callers of this transport wait for "
                        "their timeout when a worker dies")

        async def body(kit: Transports) -> None:
            rpcs, results = await kit.make("rpc"), await kit.make("result")
            worker = await kit.make("rpc", process="worker")
            consumer = kit.keep(await worker.open_consumer([kit.api]))
            consumer.idempotent_rpcs = frozenset({(kit.api, self.procedure)})
            sent = await self.call(kit, rpcs, results, 1)
            waiting = asyncio.ensure_future(
                results.receive_result(sent, sent.return_path, self.test_timeout))
            [call] = await self.take(consumer, 1)
            assert isinstance(call, RpcMessage)
            await consumer.close()  # stopped, the call unanswered
            try:
                await asyncio.wait_for(waiting, self.wait)
            except RpcWorkerLost as lost:
                assert lost.idempotent is True, "the worker declared the RPC idempotent"
            except asyncio.TimeoutError:
                pytest.fail(f"the caller still waits {self.wait}s after its worker stopped")
            else:
                pytest.fail("a result arrived for a call nobody answered")

        self.run(transports, body)

    # locks (optional)

    def test_a_lock_has_one_owner_at_a_time(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            rpcs = await kit.make("rpc")
            other = await kit.make("rpc", process="proc2")
            name = f"{kit.api}_lock"
            assert await self.optional(rpcs.try_lock(name, "alice", 30), "locks") is True
            assert await other.try_lock(name, "bob", 30) is False
            assert await rpcs.try_lock(name, "alice", 30) is True, "its owner may extend it"
            await other.unlock(name, "bob")  # not bob's: nothing happens
            assert await other.try_lock(name, "bob", 30) is False
            await rpcs.unlock(name, "alice")
            assert await other.try_lock(name, "bob", 30) is True

        self.run(transports, body)

    def test_a_lock_expires_after_its_ttl(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            rpcs = await kit.make("rpc")
            name = f"{kit.api}_lease"
            assert await self.optional(rpcs.try_lock(name, "alice", 0.3), "locks") is True
            assert await rpcs.try_lock(name, "bob", 30) is False

            async def free() -> bool:
                return await rpcs.try_lock(name, "bob", 30)

            await self.until(free, "the lock to expire")

        self.run(transports, body)

    def test_locks_belong_to_one_service(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            mine = await kit.make("rpc", service="billing")
            theirs = await kit.make("rpc", service="shipping")
            name = f"{kit.api}_nightly"
            assert await self.optional(mine.try_lock(name, "a", 30), "locks") is True
            assert await theirs.try_lock(name, "b", 30) is True

        self.run(transports, body)


class ResultTransportSuite(_CallsSuite):
    """The ResultTransport contract: return paths, sending and receiving results."""

    def test_its_return_paths_are_its_own_and_accepted(self, transports: Transports
                                                      ) -> None:
        async def body(kit: Transports) -> None:
            results = await kit.make("result")
            scheme = type(results).return_path_scheme
            assert scheme, "set return_path_scheme, e.g. 'mybackend://'"
            message = RpcMessage(kit.api, self.procedure, {})
            path = results.get_return_path(message)
            assert path.startswith(scheme)
            assert type(results).check_return_path(path[len(scheme):], message) is None
            assert return_path_problem(path, message) is None
            message.return_path = path
            decoded = decode_call(kit.serializer, kit.serializer.dumps(rpc_to_blob(message)))
            assert isinstance(decoded, RpcMessage), f"its own call is refused: {decoded}"

        self.run(transports, body)

    def test_a_result_reaches_the_caller_waiting_for_it(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            results = await kit.make("result")
            worker = await kit.make("result", process="worker")
            call = RpcMessage(kit.api, self.procedure, {})
            call.return_path = results.get_return_path(call)
            waiting = asyncio.ensure_future(
                results.receive_result(call, call.return_path, self.wait))
            await asyncio.sleep(self.quiet)
            assert not waiting.done()
            sent = ResultMessage(rpc_message_id=call.id, result={"ok": ["ü", 1, None]})
            await worker.send_result(call, sent, call.return_path)
            got = await waiting
            assert (got.rpc_message_id, got.result, got.error, got.id) == (
                call.id, sent.result, False, sent.id)

        self.run(transports, body)

    def test_a_result_sent_first_waits_for_its_caller(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            results = await kit.make("result")
            worker = await kit.make("result", process="worker")
            call = RpcMessage(kit.api, self.procedure, {})
            call.return_path = results.get_return_path(call)
            await worker.send_result(call, ResultMessage(call.id, 5), call.return_path)
            got = await results.receive_result(call, call.return_path, self.wait)
            assert got.result == 5

        self.run(transports, body)

    def test_an_error_result_keeps_its_trace(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            results = await kit.make("result")
            call = RpcMessage(kit.api, self.procedure, {})
            call.return_path = results.get_return_path(call)
            sent = ResultMessage(call.id, "ValueError: no", error=True, trace="Traceback...")
            await results.send_result(call, sent, call.return_path)
            got = await results.receive_result(call, call.return_path, self.wait)
            assert (got.error, got.result, got.trace) == (True, "ValueError: no",
                                                          "Traceback...")

        self.run(transports, body)

    def test_each_caller_gets_its_own_result(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            results = await kit.make("result")
            worker = await kit.make("result", process="worker")
            calls = [RpcMessage(kit.api, self.procedure, {"n": n}) for n in range(3)]
            for call in calls:
                call.return_path = results.get_return_path(call)
            waiting = [asyncio.ensure_future(
                results.receive_result(c, c.return_path, self.wait)) for c in calls]
            for call in reversed(calls):
                await worker.send_result(call, ResultMessage(call.id, call.kwargs["n"]),
                                         call.return_path)
            got = await asyncio.gather(*waiting)
            assert [r.result for r in got] == [0, 1, 2]
            assert [r.rpc_message_id for r in got] == [c.id for c in calls]

        self.run(transports, body)

    def test_no_result_is_a_timeout(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            results = await kit.make("result")
            call = RpcMessage(kit.api, self.procedure, {})
            call.return_path = results.get_return_path(call)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await results.receive_result(call, call.return_path, 0.3)
            took = time.monotonic() - started
            assert 0.25 <= took < 2.0, f"timed out after {took:.2f}s, not 0.3s"

        self.run(transports, body)


# -- schemas ------------------------------------------------------------------------------


class SchemaTransportSuite(TransportSuite):
    """The SchemaTransport contract: store with a TTL, load what is live."""

    schema_ttl: ClassVar[float] = 1.0
    """A short TTL the backend honours (Redis counts whole seconds)."""

    def test_a_stored_schema_is_loaded_by_others(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            mine = await kit.make("schema", service="billing")
            theirs = await kit.make("schema", service="shipping")
            schema = {"name": kit.api, "rpcs": {"pay": {"parameters": {"amount": "ü"}}},
                      "events": {}}
            await mine.store(kit.api, schema, None)
            await mine.store(kit.other_api, {"name": kit.other_api}, 60)
            loaded = await theirs.load()
            assert loaded.get(kit.api) == schema
            assert loaded.get(kit.other_api) == {"name": kit.other_api}

        self.run(transports, body)

    def test_storing_again_replaces(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            schemas = await kit.make("schema")
            await schemas.store(kit.api, {"version": 1}, 60)
            await schemas.store(kit.api, {"version": 2}, 60)
            assert (await schemas.load()).get(kit.api) == {"version": 2}

        self.run(transports, body)

    def test_a_schema_expires_after_its_ttl(self, transports: Transports) -> None:
        async def body(kit: Transports) -> None:
            schemas = await kit.make("schema")
            await schemas.store(kit.api, {"short": True}, self.schema_ttl)
            await schemas.store(kit.other_api, {"long": True}, None)
            assert kit.api in await schemas.load()

            async def gone() -> bool:
                return kit.api not in await schemas.load()

            await self.until(gone, "the schema to expire", self.schema_ttl + self.wait)
            assert (await schemas.load()).get(kit.other_api) == {"long": True}

        self.run(transports, body)


# -- a whole bus ----------------------------------------------------------------------------

SELECTION_FIXTURE = "bus_transport_selection"


class BusSuite(TransportSuite):
    """The transports under a real Bus: a worker process's client serving an API and a
    listener, and a caller's client, as `bus_core.create()` builds them from a config.

    Needs a fixture named `bus_transport_selection` returning, per kind ("rpc", "result",
    "event", "schema"), the config's selection, e.g. `{"sqlite": {"path": ...}}`. Set
    `plugins` to the plugin modules to register when they are not installed (found through
    their entry point)."""

    plugins: ClassVar[Sequence[object]] = ()

    @pytest.fixture
    def buses(self, request: pytest.FixtureRequest) -> Any:
        try:
            selection = request.getfixturevalue(SELECTION_FIXTURE)
        except pytest.FixtureLookupError:
            pytest.fail(f"BusSuite needs a fixture named {SELECTION_FIXTURE!r} that returns "
                        "{kind: {transport_name: {options}}} for rpc, result, event and "
                        "schema (see bus_core.conformance)", pytrace=False)
        import bus_core

        config = {
            "bus": {"schema": {"transport": selection["schema"]}, "drain_timeout": 5},
            "apis": {"default": {
                "rpc_transport": selection["rpc"], "result_transport": selection["result"],
                "event_transport": selection["event"], "rpc_timeout": self.wait,
                "redelivery_delay": 0, "max_deliveries": 2,
            }},
        }
        made: list[Any] = []

        def make(service_name: str) -> Any:
            bus = bus_core.create(config, plugins=list(self.plugins),
                                  service_name=service_name)
            made.append(bus)
            return bus

        yield make
        for bus in reversed(made):
            bus.client.close()

    @staticmethod
    def api_class(name: str) -> type:
        """An API named `name`: RPCs `add` and `fail`, event `happened(n)`."""
        from bus_core import Api, Event

        def add(self: Any, a: int, b: int) -> int:
            return a + b

        def fail(self: Any) -> None:
            raise ValueError("refused on purpose")

        meta = type("Meta", (), {"name": name})
        return type("ConformanceApi", (Api,), {
            "Meta": meta, "happened": Event(parameters=["n"]), "add": add, "fail": fail})

    def until_sync(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.wait
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.02)

    def test_a_call_is_served_by_a_worker_and_answered(self, buses: Any) -> None:
        from bus_core import RemoteError

        name = unique_api_name()
        service, caller = buses("conformance_service"), buses("conformance_caller")
        service.client.register_api(self.api_class(name)())
        service.client.start_worker()
        assert caller.client.call_rpc(name, "add", {"a": 2, "b": 3}) == 5
        with pytest.raises(RemoteError, match="refused on purpose"):
            caller.client.call_rpc(name, "fail", {})

    def test_an_event_reaches_each_listener_once(self, buses: Any) -> None:
        name = unique_api_name()
        service, listener = buses("conformance_service"), buses("conformance_listener")
        service.client.register_api(self.api_class(name)())
        heard: list[int] = []
        listener.client.listen((name, "happened"), lambda event, n: heard.append(n),
                               listener_name="hear")
        listener.client.start_worker()
        for n in range(3):
            service.client.fire(name, "happened", {"n": n})
        self.until_sync(lambda: len(heard) >= 3, "three events to be handled")
        time.sleep(self.quiet)  # nothing more may come: each was acknowledged once
        assert sorted(heard) == [0, 1, 2]

    def test_a_failing_handler_is_retried_then_dead_lettered(self, buses: Any) -> None:
        name = unique_api_name()
        service, listener = buses("conformance_service"), buses("conformance_listener")
        service.client.register_api(self.api_class(name)())
        tries: list[int] = []

        def handler(event: Any, n: int) -> None:
            tries.append(n)
            raise RuntimeError("this handler always fails")

        listener.client.listen((name, "happened"), handler, listener_name="fragile")
        listener.client.start_worker()
        service.client.fire(name, "happened", {"n": 1})
        self.until_sync(lambda: len(tries) >= 2, "the event to be delivered twice")
        time.sleep(self.quiet + 0.5)  # max_deliveries is 2: dead-lettered, never a third
        assert tries == [1, 1]


# -- helpers ------------------------------------------------------------------------------


def numbers(deliveries: Sequence[EventDelivery]) -> list[int]:
    """The `n` of each decodable delivery, in order."""
    return [d.message.kwargs["n"] for d in deliveries if d.message is not None]


async def collect(messages: Any) -> list[EventMessage]:
    """An async iterator's items as a list."""
    return [message async for message in messages]
