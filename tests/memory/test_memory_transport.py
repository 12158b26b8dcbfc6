"""The memory transports used directly: the semantics a network transport must share."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from bus_memory import (
    MemoryEventTransport,
    MemoryResultTransport,
    MemoryRpcTransport,
    MemorySchemaTransport,
    get_broker,
)

from bus_core.default_plugins.json_serializer import JsonSerializer
from bus_core.errors import MalformedMessage
from bus_core.messages import EventMessage, ResultMessage, RpcMessage
from bus_core.serialization import SizeLimitedSerializer
from bus_core.transports import EventConsumer, EventDelivery, MalformedRpc

API, EVENT = "auth", "user_registered"
WAIT = 5.0  # generous upper bound for things that must happen; never reached when they do
QUIET = 0.05  # how long we watch for something that must not happen
BATCH = 100  # the most a test consumer takes at once


def _context(service: str = "svc", process: str = "proc") -> dict[str, Any]:
    return {"serializer": SizeLimitedSerializer(JsonSerializer(), 1024 * 1024),
            "service_name": service, "process_name": process}


def events(broker: str, *, service: str = "svc", **options: Any) -> MemoryEventTransport:
    return MemoryEventTransport(broker=broker, **_context(service), **options)


def rpcs(broker: str, **options: Any) -> MemoryRpcTransport:
    return MemoryRpcTransport(broker=broker, **_context(), **options)


def results(broker: str, **options: Any) -> MemoryResultTransport:
    return MemoryResultTransport(broker=broker, **_context(), **options)


async def fire(transport: MemoryEventTransport, n: int, event: str = EVENT) -> EventMessage:
    message = EventMessage(API, event, {"n": n})
    await transport.send_event(message)
    return message


async def fire_many(transport: MemoryEventTransport, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        await fire(transport, n)


async def receive(consumer: EventConsumer) -> Sequence[EventDelivery]:
    return await asyncio.wait_for(consumer.receive(BATCH), WAIT)


async def receive_n(consumer: EventConsumer, count: int) -> list[EventDelivery]:
    got: list[EventDelivery] = []
    while len(got) < count:
        got.extend(await receive(consumer))
    assert len(got) == count, f"received {len(got)} deliveries, expected {count}"
    return got


async def assert_nothing(consumer: EventConsumer) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(consumer.receive(BATCH), QUIET)


def numbers(deliveries: Sequence[EventDelivery]) -> list[int]:
    return [d.message.kwargs["n"] for d in deliveries if d.message is not None]


# -- listeners and groups ----------------------------------------------------------------


async def test_every_listener_name_receives_every_event(broker_name: str) -> None:
    transport = events(broker_name)
    first = await transport.open_consumer([(API, EVENT)], "first")
    second = await transport.open_consumer([(API, EVENT)], "second")
    await fire_many(transport, 3)
    assert numbers(await receive_n(first, 3)) == [0, 1, 2]
    assert numbers(await receive_n(second, 3)) == [0, 1, 2]


async def test_consumers_sharing_a_listener_name_share_the_load(broker_name: str) -> None:
    transport = events(broker_name, batch_size=2)
    one = await transport.open_consumer([(API, EVENT)], "shared")
    two = await events(broker_name, batch_size=2).open_consumer([(API, EVENT)], "shared")
    await fire_many(transport, 8)
    got_one: list[EventDelivery] = []
    got_two: list[EventDelivery] = []
    while len(got_one) + len(got_two) < 8:
        got_one.extend(await receive(one))
        got_two.extend(await receive(two))
    assert got_one and got_two
    assert set(numbers(got_one)).isdisjoint(numbers(got_two))
    assert sorted(numbers(got_one) + numbers(got_two)) == list(range(8))
    await one.acknowledge(got_one)
    await two.acknowledge(got_two)
    await assert_nothing(one)
    await assert_nothing(two)


async def test_a_held_delivery_is_not_given_to_another_consumer(broker_name: str) -> None:
    transport = events(broker_name)
    one = await transport.open_consumer([(API, EVENT)], "shared")
    two = await transport.open_consumer([(API, EVENT)], "shared")
    await fire(transport, 1)
    assert numbers(await receive(one)) == [1]
    await assert_nothing(two)


async def test_different_service_names_are_different_groups(broker_name: str) -> None:
    billing = events(broker_name, service="billing")
    mail = events(broker_name, service="mail")
    billing_consumer = await billing.open_consumer([(API, EVENT)], "audit")
    mail_consumer = await mail.open_consumer([(API, EVENT)], "audit")
    await fire_many(billing, 2)
    assert numbers(await receive_n(billing_consumer, 2)) == [0, 1]
    assert numbers(await receive_n(mail_consumer, 2)) == [0, 1]


async def test_one_consumer_can_listen_to_several_events(broker_name: str) -> None:
    transport = events(broker_name)
    consumer = await transport.open_consumer([(API, EVENT), (API, "user_deleted")], "both")
    await fire(transport, 1)
    await fire(transport, 2, event="user_deleted")
    got = await receive_n(consumer, 2)
    assert sorted((d.message.event_name, d.message.kwargs["n"]) for d in got  # type: ignore
                  ) == [("user_deleted", 2), ("user_registered", 1)]


async def test_a_waiting_consumer_is_woken_by_a_new_event(broker_name: str) -> None:
    transport = events(broker_name)
    consumer = await transport.open_consumer([(API, EVENT)], "waiting")
    waiting = asyncio.ensure_future(receive(consumer))
    await asyncio.sleep(0)
    assert not waiting.done()
    sent = await fire(transport, 7)
    (delivery,) = await waiting
    assert delivery.message is not None
    assert delivery.message.id == sent.id
    assert delivery.message.native_id == sent.native_id == delivery.native_id
    assert delivery.message.time == sent.time is not None
    assert delivery.delivery_count == 1


# -- acknowledgement, redelivery, dead letters -------------------------------------------


async def test_acknowledged_events_are_never_delivered_again(broker_name: str) -> None:
    transport = events(broker_name)
    consumer = await transport.open_consumer([(API, EVENT)], "acks")
    await fire_many(transport, 2)
    got = await receive_n(consumer, 2)
    await consumer.acknowledge(got)
    assert await transport.lag(API, EVENT, "acks") == 0
    await consumer.close()
    again = await transport.open_consumer([(API, EVENT)], "acks")
    await assert_nothing(again)


async def test_redelivered_event_comes_back_with_a_higher_delivery_count(
        broker_name: str) -> None:
    transport = events(broker_name)
    consumer = await transport.open_consumer([(API, EVENT)], "retry")
    await fire(transport, 1)
    (first,) = await receive(consumer)
    assert first.delivery_count == 1
    await consumer.redeliver(first, 0)
    (second,) = await receive(consumer)
    assert (second.native_id, second.delivery_count) == (first.native_id, 2)
    await consumer.redeliver(second, 0)
    (third,) = await receive(consumer)
    assert third.delivery_count == 3
    assert third.message is not None and third.message.kwargs == {"n": 1}


async def test_redelivery_waits_for_its_delay(broker_name: str) -> None:
    transport = events(broker_name)
    consumer = await transport.open_consumer([(API, EVENT)], "delayed")
    await fire(transport, 1)
    (first,) = await receive(consumer)
    started = time.monotonic()
    await consumer.redeliver(first, 0.2)
    (again,) = await receive(consumer)
    assert time.monotonic() - started >= 0.19
    assert again.delivery_count == 2


async def test_a_later_event_is_not_blocked_by_a_delayed_redelivery(broker_name: str) -> None:
    transport = events(broker_name)
    consumer = await transport.open_consumer([(API, EVENT)], "delayed")
    await fire(transport, 1)
    (first,) = await receive(consumer)
    await consumer.redeliver(first, 60)
    await fire(transport, 2)
    assert numbers(await receive(consumer)) == [2]


async def test_dead_letter_keeps_the_entry_and_reason_and_settles_it(broker_name: str) -> None:
    transport = events(broker_name)
    consumer = await transport.open_consumer([(API, EVENT)], "dlq")
    sent = await fire(transport, 1)
    (delivery,) = await receive(consumer)
    await consumer.dead_letter(delivery, "ValueError: boom")
    (letter,) = transport.dead_letters(API, EVENT)
    assert letter.reason == "ValueError: boom"
    assert letter.native_id == sent.native_id
    assert letter.group == transport.group_name("dlq")
    assert transport.serializer.loads(letter.data)["metadata"]["id"] == sent.id
    assert transport.dead_letters(API, "other_event") == []
    assert await transport.lag(API, EVENT, "dlq") == 0
    await consumer.close()
    await assert_nothing(await transport.open_consumer([(API, EVENT)], "dlq"))


async def test_closing_a_consumer_releases_what_it_held(broker_name: str) -> None:
    """A consumer that goes away (a crash) gives its unacknowledged deliveries back."""
    transport = events(broker_name)
    crashing = await transport.open_consumer([(API, EVENT)], "shared")
    survivor = await transport.open_consumer([(API, EVENT)], "shared")
    await fire_many(transport, 3)
    held = await receive_n(crashing, 3)
    await crashing.acknowledge(held[:1])
    await assert_nothing(survivor)
    await crashing.close()
    taken = await receive_n(survivor, 2)
    assert numbers(taken) == [1, 2]
    assert [d.delivery_count for d in taken] == [2, 2]


async def test_a_closed_consumer_cannot_receive(broker_name: str) -> None:
    consumer = await events(broker_name).open_consumer([(API, EVENT)], "closed")
    await consumer.close()
    await consumer.close()  # idempotent
    with pytest.raises(Exception, match="closed"):
        await consumer.receive(BATCH)


# -- since ----------------------------------------------------------------------------------


async def test_a_new_listener_starts_at_new_events_by_default(broker_name: str) -> None:
    transport = events(broker_name)
    await fire_many(transport, 2)
    consumer = await transport.open_consumer([(API, EVENT)], "late")
    await assert_nothing(consumer)
    await fire(transport, 2)
    assert numbers(await receive(consumer)) == [2]


async def test_since_zero_starts_at_the_beginning(broker_name: str) -> None:
    transport = events(broker_name)
    await fire_many(transport, 3)
    consumer = await transport.open_consumer([(API, EVENT)], "replay", since="0")
    assert numbers(await receive_n(consumer, 3)) == [0, 1, 2]


async def test_since_a_datetime_starts_at_events_from_then(broker_name: str) -> None:
    transport = events(broker_name)
    await fire_many(transport, 2)
    old = await fire(transport, 2)
    assert old.time is not None
    await fire_many(transport, 2, start=3)
    consumer = await transport.open_consumer([(API, EVENT)], "from-then", since=old.time)
    assert numbers(await receive_n(consumer, 3)) == [2, 3, 4]
    naive = old.time.astimezone(timezone.utc).replace(tzinfo=None)
    other = await transport.open_consumer([(API, EVENT)], "naive-utc", since=naive)
    assert numbers(await receive_n(other, 3)) == [2, 3, 4]
    future = await transport.open_consumer([(API, EVENT)], "future",
                                           since=datetime.now(timezone.utc) + timedelta(1))
    await assert_nothing(future)


async def test_since_an_entry_id_starts_after_it(broker_name: str) -> None:
    transport = events(broker_name)
    await fire(transport, 0)
    marker = await fire(transport, 1)
    await fire(transport, 2)
    assert marker.native_id is not None
    consumer = await transport.open_consumer([(API, EVENT)], "after", since=marker.native_id)
    assert numbers(await receive(consumer)) == [2]


async def test_a_nonsense_since_is_refused(broker_name: str) -> None:
    with pytest.raises(ValueError, match="since"):
        await events(broker_name).open_consumer([(API, EVENT)], "bad", since="yesterday")


async def test_an_existing_listener_keeps_its_position(broker_name: str) -> None:
    transport = events(broker_name)
    await fire_many(transport, 2)
    first = await transport.open_consumer([(API, EVENT)], "kept", since="0")
    await first.acknowledge(await receive_n(first, 2))
    await first.close()
    await fire(transport, 2)
    # `since` applies only when the group is new: a restart resumes where it left off.
    again = await transport.open_consumer([(API, EVENT)], "kept", since="0")
    assert numbers(await receive(again)) == [2]
    await assert_nothing(again)


# -- RPC and results -------------------------------------------------------------------------


def call(api: str = API, name: str = "check_password", **kwargs: Any) -> RpcMessage:
    message = RpcMessage(api_name=api, procedure_name=name, kwargs=kwargs)
    message.return_path = f"memory://{api}.{name}:result:{message.id}"
    return message


async def test_calls_are_received_by_the_consumer_of_their_api(broker_name: str) -> None:
    transport = rpcs(broker_name)
    auth = await transport.open_consumer([API])
    other = await transport.open_consumer(["other"])
    sent = call(username="a")
    await transport.call_rpc(sent, timeout=5)
    (received,) = await asyncio.wait_for(auth.receive(BATCH), WAIT)
    assert received == sent
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(other.receive(BATCH), QUIET)


async def test_each_call_is_taken_by_one_consumer(broker_name: str) -> None:
    transport = rpcs(broker_name, batch_size=1)
    one, two = await transport.open_consumer([API]), await transport.open_consumer([API])
    sent = [call(n=n) for n in range(4)]
    for message in sent:
        await transport.call_rpc(message, timeout=5)
    taken = []
    for consumer in (one, two, one, two):
        taken.extend(await asyncio.wait_for(consumer.receive(BATCH), WAIT))
    assert [m.id for m in taken] == [m.id for m in sent]
    assert transport.broker.queued_calls(API) == 0


async def test_a_waiting_rpc_consumer_is_woken_by_a_call(broker_name: str) -> None:
    transport = rpcs(broker_name)
    consumer = await transport.open_consumer([API])
    waiting = asyncio.ensure_future(asyncio.wait_for(consumer.receive(BATCH), WAIT))
    await asyncio.sleep(0)
    assert not waiting.done()
    await transport.call_rpc(call(), timeout=5)
    assert len(await waiting) == 1


async def test_an_expired_call_is_dropped_unseen(broker_name: str) -> None:
    transport = rpcs(broker_name)
    expired, live = call(n=1), call(n=2)
    await transport.call_rpc(expired, timeout=0.01)
    await asyncio.sleep(0.03)  # let it expire: nothing to await but the clock
    await transport.call_rpc(live, timeout=5)
    consumer = await transport.open_consumer([API])
    assert [m.id for m in await asyncio.wait_for(consumer.receive(BATCH), WAIT)] == [live.id]
    assert transport.broker.queued_calls(API) == 0


async def test_a_result_waits_for_its_caller(broker_name: str) -> None:
    transport = results(broker_name)
    message = call()
    path = transport.get_return_path(message)
    reply = ResultMessage(rpc_message_id=message.id, result={"ok": True})
    await transport.send_result(message, reply, path)  # before anyone waits
    received = await transport.receive_result(message, path, timeout=WAIT)
    assert (received.rpc_message_id, received.result, received.error) == (
        message.id, {"ok": True}, False)


async def test_a_waiting_caller_is_woken_by_its_result_only(broker_name: str) -> None:
    transport = results(broker_name)
    mine, theirs = call(), call()
    waiting = asyncio.ensure_future(
        transport.receive_result(mine, transport.get_return_path(mine), timeout=WAIT))
    await asyncio.sleep(0)
    await transport.send_result(theirs, ResultMessage(theirs.id, "theirs"),
                                transport.get_return_path(theirs))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await transport.send_result(mine, ResultMessage(mine.id, "mine"),
                                transport.get_return_path(mine))
    assert (await waiting).result == "mine"


async def test_receive_result_times_out(broker_name: str) -> None:
    transport = results(broker_name)
    message = call()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=message.id):
        await transport.receive_result(message, transport.get_return_path(message), 0.1)
    assert time.monotonic() - started >= 0.09
    assert transport.broker.result_waiters == {}  # no waiter left behind


async def test_an_error_result_round_trips(broker_name: str) -> None:
    transport = results(broker_name)
    message = call()
    path = transport.get_return_path(message)
    await transport.send_result(message, ResultMessage(message.id, "ValueError('x')",
                                                       error=True, trace="tb"), path)
    received = await transport.receive_result(message, path, timeout=WAIT)
    assert (received.error, received.trace, received.result) == (True, "tb", "ValueError('x')")


async def test_a_foreign_return_path_is_refused(broker_name: str) -> None:
    transport = results(broker_name)
    message = call()
    with pytest.raises(MalformedMessage, match="memory://"):
        await transport.send_result(message, ResultMessage(message.id, 1), "redis+key://x")


async def test_an_expired_result_is_not_returned(broker_name: str) -> None:
    transport = results(broker_name, result_ttl=0.01)
    message = call()
    path = transport.get_return_path(message)
    await transport.send_result(message, ResultMessage(message.id, 1), path)
    await asyncio.sleep(0.03)  # let it expire
    with pytest.raises(TimeoutError):
        await transport.receive_result(message, path, timeout=QUIET)


# -- malformed input ---------------------------------------------------------------------


async def test_undecodable_call_bytes_become_a_malformed_rpc(broker_name: str) -> None:
    transport = rpcs(broker_name)
    transport.broker.push_call(API, b"\xff not json", time.monotonic() + 5)
    (item,) = await asyncio.wait_for((await transport.open_consumer([API])).receive(BATCH), WAIT)
    assert isinstance(item, MalformedRpc)
    assert item.return_path is None and item.id is None
    assert item.raw == b"\xff not json"
    assert "decode" in item.problem


async def test_a_call_missing_metadata_keeps_its_return_path(broker_name: str) -> None:
    transport = rpcs(broker_name)
    # A return path of the form callers write: the per-call key of this call's id.
    path = f"memory://{API}.check:result:abc"
    blob = {"metadata": {"id": "abc", "api_name": API, "return_path": path}, "kwargs": {}}
    transport.broker.push_call(API, transport.serializer.dumps(blob), time.monotonic() + 5)
    (item,) = await asyncio.wait_for((await transport.open_consumer([API])).receive(BATCH), WAIT)
    assert isinstance(item, MalformedRpc)
    assert (item.return_path, item.id) == (path, "abc")
    assert "procedure_name" in item.problem


async def test_a_garbage_event_entry_is_delivered_as_malformed(broker_name: str) -> None:
    transport = events(broker_name)
    consumer = await transport.open_consumer([(API, EVENT)], "robust")
    get_broker(broker_name).stream(f"{API}.{EVENT}").append(b"{{{")
    await fire(transport, 1)
    bad, good = await receive_n(consumer, 2)
    assert bad.message is None and bad.problem and bad.raw == b"{{{"
    assert numbers([good]) == [1]
    await consumer.dead_letter(bad, f"malformed: {bad.problem}")
    assert [letter.data for letter in transport.dead_letters(API, EVENT)] == [b"{{{"]


# -- history and lag -------------------------------------------------------------------------


async def test_history_is_newest_first_within_a_time_window(broker_name: str) -> None:
    transport = events(broker_name)
    sent = [await fire(transport, n) for n in range(5)]
    get_broker(broker_name).stream(f"{API}.{EVENT}").append(b"garbage")  # skipped
    everything = [m async for m in transport.history(API, EVENT)]
    assert [m.kwargs["n"] for m in everything] == [4, 3, 2, 1, 0]
    assert [m.id for m in everything] == [m.id for m in reversed(sent)]
    assert all(m.native_id and m.time for m in everything)
    start, stop = sent[1].time, sent[3].time
    window = [m.kwargs["n"] async for m in transport.history(API, EVENT, start, stop)]
    assert window == [3, 2, 1]
    assert [m async for m in transport.history(API, "never_fired")] == []


async def test_lag_counts_unread_and_unacknowledged(broker_name: str) -> None:
    transport = events(broker_name, batch_size=2)
    assert await transport.lag(API, EVENT, "nobody") == 0
    consumer = await transport.open_consumer([(API, EVENT)], "slow")
    await fire_many(transport, 5)
    assert await transport.lag(API, EVENT, "slow") == 5
    got = await receive(consumer)  # two taken, not yet acknowledged
    assert await transport.lag(API, EVENT, "slow") == 5
    await consumer.acknowledge(got[:1])
    assert await transport.lag(API, EVENT, "slow") == 4
    await consumer.acknowledge(got[1:])
    assert await transport.lag(API, EVENT, "slow") == 3


async def test_groups_list_each_listener_with_its_consumers_and_what_they_hold(
        broker_name: str) -> None:
    transport = events(broker_name, batch_size=2)
    assert await transport.groups(API, EVENT) == []
    slow = await transport.open_consumer([(API, EVENT)], "slow")
    await transport.open_consumer([(API, EVENT)], "idle")
    await fire_many(transport, 5)
    await receive(slow)  # two taken, not yet acknowledged
    by_name = {g.name: g for g in await transport.groups(API, EVENT)}
    assert set(by_name) == {"svc-slow", "svc-idle"}
    slow_group = by_name["svc-slow"]
    assert (slow_group.pending, slow_group.lag) == (2, 3)
    assert [(c.pending, c.idle) for c in slow_group.consumers] == [(2, None)]
    assert (by_name["svc-idle"].pending, by_name["svc-idle"].lag) == (0, 5)


# -- trimming ------------------------------------------------------------------------------


async def test_streams_are_trimmed_to_max_stream_length(broker_name: str) -> None:
    transport = events(broker_name, max_stream_length=3)
    await fire_many(transport, 6)
    assert [m.kwargs["n"] async for m in transport.history(API, EVENT)] == [5, 4, 3]
    consumer = await transport.open_consumer([(API, EVENT)], "replay", since="0")
    assert numbers(await receive_n(consumer, 3)) == [3, 4, 5]


async def test_lag_does_not_count_trimmed_events(broker_name: str) -> None:
    transport = events(broker_name, max_stream_length=3)
    consumer = await transport.open_consumer([(API, EVENT)], "behind")
    await fire_many(transport, 10)
    assert await transport.lag(API, EVENT, "behind") == 3
    assert numbers(await receive_n(consumer, 3)) == [7, 8, 9]


async def test_a_pending_entry_trimmed_away_is_skipped(broker_name: str) -> None:
    transport = events(broker_name, max_stream_length=2)
    crashing = await transport.open_consumer([(API, EVENT)], "shared")
    await fire(transport, 0)
    await receive(crashing)
    await crashing.close()  # releases event 0 ...
    await fire_many(transport, 2, start=1)  # ... which is then trimmed away
    survivor = await transport.open_consumer([(API, EVENT)], "shared")
    assert numbers(await receive_n(survivor, 2)) == [1, 2]
    assert await transport.lag(API, EVENT, "shared") == 2


# -- threads -------------------------------------------------------------------------------


@pytest.fixture
def eager_thread_switching() -> Any:
    """Switch threads as often as possible, so races show up in a short test."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_concurrent_appends_get_unique_offsets(broker_name: str,
                                               eager_thread_switching: None) -> None:
    stream = get_broker(broker_name).stream(f"{API}.{EVENT}")
    go = threading.Barrier(4)

    def append() -> None:
        go.wait()
        for _ in range(10_000):
            stream.append(b"{}")

    threads = [threading.Thread(target=append) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    offsets = [entry.offset for entry in stream.entries]
    assert offsets == list(range(1, 40_001))


async def test_events_fired_from_many_threads_are_each_delivered_once(
        broker_name: str, eager_thread_switching: None) -> None:
    threads, per_thread = 8, 150
    transport = events(broker_name)
    consumer = await transport.open_consumer([(API, EVENT)], "threaded")
    go = threading.Barrier(threads)

    def produce(thread: int) -> None:
        async def send() -> None:
            own = events(broker_name)  # its own instance on its own loop, like a client
            go.wait()
            for n in range(per_thread):
                await own.send_event(EventMessage(API, EVENT, {"n": thread * 1000 + n}))

        asyncio.run(send())

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    got = await receive_n(consumer, threads * per_thread)
    for worker in workers:
        worker.join()
    await consumer.acknowledge(got)
    expected = sorted(t * 1000 + n for t in range(threads) for n in range(per_thread))
    assert sorted(numbers(got)) == expected
    assert len({d.native_id for d in got}) == len(got)
    assert await transport.lag(API, EVENT, "threaded") == 0


async def test_calls_from_many_threads_are_each_received_once(
        broker_name: str, eager_thread_switching: None) -> None:
    threads, per_thread = 6, 100
    transport = rpcs(broker_name)
    consumer = await transport.open_consumer([API])

    def produce(thread: int) -> None:
        async def send() -> None:
            own = rpcs(broker_name)
            for n in range(per_thread):
                await own.call_rpc(call(n=thread * 1000 + n), timeout=30)

        asyncio.run(send())

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    got: list[Any] = []
    while len(got) < threads * per_thread:
        got.extend(await asyncio.wait_for(consumer.receive(BATCH), WAIT))
    for worker in workers:
        worker.join()
    assert sorted(m.kwargs["n"] for m in got) == sorted(
        t * 1000 + n for t in range(threads) for n in range(per_thread))


# -- schemas ---------------------------------------------------------------------------------


async def test_schemas_are_stored_loaded_and_expire(broker_name: str) -> None:
    transport = MemorySchemaTransport(broker=broker_name, **_context())
    other = MemorySchemaTransport(broker=broker_name, **_context(service="other"))
    await transport.store("auth", {"rpcs": {"a": 1}}, ttl=None)
    await transport.store("short", {"rpcs": {}}, ttl=0.05)
    assert await other.load() == {"auth": {"rpcs": {"a": 1}}, "short": {"rpcs": {}}}
    await asyncio.sleep(0.08)  # past the TTL
    assert await other.load() == {"auth": {"rpcs": {"a": 1}}}
    await transport.store("short", {"rpcs": {"b": 2}}, ttl=60)  # storing again refreshes
    assert (await other.load())["short"] == {"rpcs": {"b": 2}}


async def test_a_bad_schema_does_not_hide_the_good_ones(broker_name: str) -> None:
    transport = MemorySchemaTransport(broker=broker_name, **_context())
    await transport.store("good", {"ok": True}, ttl=None)
    get_broker(broker_name).store_schema("bad", b"not json", None)
    assert await transport.load() == {"good": {"ok": True}}


async def test_brokers_are_isolated_by_name(broker_name: str) -> None:
    here = events(broker_name)
    elsewhere = events(broker_name + "-elsewhere")
    consumer = await elsewhere.open_consumer([(API, EVENT)], "isolated")
    await fire(here, 1)
    await assert_nothing(consumer)
