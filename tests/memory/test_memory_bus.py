"""The memory transports end to end, through buses: what a user of the bus relies on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from bus_memory import MemoryResultTransport, get_broker

from bus_core import Api, Bus, Event, EventMessage, RemoteError, RpcTimeout
from bus_core.messages import RpcMessage
from tests.apis import AuthApi
from tests.conftest import memory_config
from tests.helpers import EventRecorder as Recorder
from tests.helpers import event_transport, eventually, serving

WAIT = 5.0
QUIET = 0.1  # how long we watch for something that must not happen


class CounterApi(Api):
    """Counts the calls it serves."""

    ticked = Event(parameters=("n",))

    class Meta:
        name = "counter"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def bump(self, n: int) -> int:
        self.calls.append(n)
        return len(self.calls)




def with_event_options(broker: str, **options: Any) -> dict[str, Any]:
    config = memory_config(broker)
    config["apis"]["default"]["event_transport"] = {"memory": {"broker": broker, **options}}
    return config




# -- fan-out and load sharing ----------------------------------------------------------------


async def test_listener_names_fan_out_and_same_names_share(make_bus: Callable[..., Bus],
                                                           broker_name: str) -> None:
    config = with_event_options(broker_name, batch_size=1)
    # "one" holds every event it takes until "two" has worked: with room for fewer than all
    # 20 at once, it cannot take them all, so "two" must get a share.
    config["apis"]["default"]["max_concurrent_events"] = 4
    firing = make_bus(config=config)
    firing.client.register_api(AuthApi())
    one = make_bus(config=config, process_name="one")
    two = make_bus(config=config, process_name="two")
    other_listener = make_bus(config=config, process_name="three")
    other_service = make_bus(config=config, service_name="billing")
    two_has_worked = asyncio.Event()
    handled: dict[str, list[str]] = {"one": [], "two": [], "three": [], "billing": []}

    def recorder(name: str) -> Callable[..., Any]:
        async def handle(event: EventMessage, username: str, email: str) -> None:
            handled[name].append(username)
            if name == "two":
                two_has_worked.set()
            elif name == "one":
                await two_has_worked.wait()  # hold one back so two must take a share
        return handle

    one.auth.user_registered.listen(recorder("one"), listener_name="welcome")
    two.auth.user_registered.listen(recorder("two"), listener_name="welcome")
    other_listener.auth.user_registered.listen(recorder("three"), listener_name="audit")
    other_service.auth.user_registered.listen(recorder("billing"), listener_name="welcome")
    names = [f"user{n}" for n in range(20)]
    async with serving(one), serving(two), serving(other_listener), serving(other_service):
        for name in names:
            await firing.auth.user_registered.fire_async(username=name, email="e")
        await eventually(lambda: all(
            len(handled[key]) == 20 for key in ("three", "billing")
        ) and len(handled["one"]) + len(handled["two"]) == 20)
    assert handled["one"] and handled["two"]
    assert sorted(handled["one"] + handled["two"]) == sorted(names)
    assert handled["three"] == handled["billing"] == names


# -- acknowledgement, redelivery, dead letters -------------------------------------------


async def test_a_failed_event_is_redelivered_until_it_succeeds(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus(max_deliveries=5)
    bus.client.register_api(AuthApi())
    attempts: list[str] = []
    done = asyncio.Event()

    async def flaky(event: EventMessage, username: str, email: str) -> None:
        attempts.append(event.id)
        if len(attempts) < 3:
            raise ValueError("not yet")
        done.set()

    bus.auth.user_registered.listen(flaky, listener_name="flaky")
    async with serving(bus):
        sent = await bus.auth.user_registered.fire_async(username="a", email="e")
        await asyncio.wait_for(done.wait(), WAIT)
    transport = await event_transport(bus)
    assert attempts == [sent.id] * 3
    assert await transport.lag("auth", "user_registered", "flaky") == 0
    assert transport.dead_letters("auth", "user_registered") == []


async def test_an_event_failing_max_deliveries_times_is_dead_lettered(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus(max_deliveries=3)
    bus.client.register_api(AuthApi())
    attempts: list[str] = []

    async def broken(event: EventMessage, username: str, email: str) -> None:
        attempts.append(username)
        raise ValueError(f"cannot welcome {username}")

    bus.auth.user_registered.listen(broken, listener_name="broken")
    transport = await event_transport(bus)
    async with serving(bus):
        sent = await bus.auth.user_registered.fire_async(username="ann", email="e")
        await eventually(lambda: transport.dead_letters("auth", "user_registered"))
        (letter,) = transport.dead_letters("auth", "user_registered")
    assert attempts == ["ann"] * 3
    assert "ValueError: cannot welcome ann" in letter.reason
    assert "'broken'" in letter.reason and "3 deliveries" in letter.reason
    assert letter.native_id == sent.native_id
    assert await transport.lag("auth", "user_registered", "broken") == 0


async def test_on_error_acknowledge_drops_the_event_after_logging(
        make_bus: Callable[..., Bus], caplog: pytest.LogCaptureFixture) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    seen = Recorder()

    async def fails_on_ann(event: EventMessage, username: str, email: str) -> None:
        await seen(event)
        if username == "ann":
            raise ValueError("no ann")

    bus.auth.user_registered.listen(fails_on_ann, listener_name="lenient",
                                    on_error="acknowledge")
    async with serving(bus):
        first = await bus.auth.user_registered.fire_async(username="ann", email="e")
        second = await bus.auth.user_registered.fire_async(username="bob", email="e")
        await seen.wait_for(2)
        await asyncio.sleep(QUIET)  # a redelivery would come back meanwhile
    transport = await event_transport(bus)
    assert [e.id for e in seen.seen] == [first.id, second.id]
    assert await transport.lag("auth", "user_registered", "lenient") == 0
    assert transport.dead_letters() == []
    assert any("no ann" in r.getMessage() and "acknowledge" in r.getMessage()
               for r in caplog.records)


async def test_on_error_stop_stops_the_worker_and_leaves_the_event_pending(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    attempts: list[str] = []

    async def strict(event: EventMessage, username: str, email: str) -> None:
        attempts.append(event.id)
        raise RuntimeError("stop the line")

    bus.auth.user_registered.listen(strict, listener_name="strict", on_error="stop",
                                    since="0")
    sent = await bus.auth.user_registered.fire_async(username="a", email="e")
    worker = bus.client.worker()
    await asyncio.wait_for(worker.run(), WAIT)  # returns by itself
    assert isinstance(worker.failure, RuntimeError)
    assert attempts == [sent.id]
    transport = await event_transport(bus)
    assert await transport.lag("auth", "user_registered", "strict") == 1
    assert transport.dead_letters() == []

    later = make_bus(process_name="later")
    seen = Recorder()
    later.auth.user_registered.listen(seen, listener_name="strict")
    async with serving(later):
        (again,) = await seen.wait_for(1)
    assert again.id == sent.id


# -- since -----------------------------------------------------------------------------------


async def test_listen_since(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    old = await bus.auth.user_registered.fire_async(username="old", email="e")
    from_start, new_only = Recorder(), Recorder()
    bus.auth.user_registered.listen(from_start, listener_name="from_start", since="0")
    bus.auth.user_registered.listen(new_only, listener_name="new_only")
    async with serving(bus):
        new = await bus.auth.user_registered.fire_async(username="new", email="e")
        assert [e.id for e in await from_start.wait_for(2)] == [old.id, new.id]
        assert [e.id for e in await new_only.wait_for(1)] == [new.id]


async def test_a_restarted_listener_resumes_where_it_stopped(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    seen = Recorder()
    bus.auth.user_registered.listen(seen, listener_name="resume", since="0")
    await bus.auth.user_registered.fire_async(username="one", email="e")
    async with serving(bus):
        await seen.wait_for(1)
    missed = await bus.auth.user_registered.fire_async(username="two", email="e")
    async with serving(bus):
        await seen.wait_for(2)
        await asyncio.sleep(QUIET)
    assert [e.kwargs["username"] for e in seen.seen] == ["one", "two"]
    assert seen.seen[1].id == missed.id


# -- RPC ------------------------------------------------------------------------------------


async def test_an_rpc_not_taken_in_time_times_out_and_never_runs(
        make_bus: Callable[..., Bus]) -> None:
    caller = make_bus()
    with pytest.raises(RpcTimeout) as raised:
        await caller.counter.bump.call_async(n=1, bus_options={"timeout": 0.2})
    text = str(raised.value)
    assert "counter.bump()" in text and "0.2s" in text and "'counter'" in text

    server = make_bus()
    api = server.client.register_api(CounterApi())
    assert isinstance(api, CounterApi)
    async with serving(server):
        assert await caller.counter.bump.call_async(n=2) == 1
    assert api.calls == [2]  # the expired call was dropped unseen


async def test_rpc_round_trip_and_remote_error(make_bus: Callable[..., Bus]) -> None:
    server, caller = make_bus(), make_bus(service_name="caller")
    server.client.register_api(AuthApi())
    async with serving(server):
        assert await caller.auth.check_password.call_async(username="admin",
                                                           password="secret") is True
        with pytest.raises(RemoteError) as raised:
            await caller.auth.fail.call_async(message="kaput")
    assert raised.value.remote_type == "ValueError"
    assert raised.value.remote_message == "kaput"


def test_sync_calls_from_many_threads(make_bus: Callable[..., Bus]) -> None:
    server, caller = make_bus(), make_bus(service_name="caller")
    server.client.register_api(AuthApi())
    server.client.start_worker()
    errors: list[BaseException] = []
    answers: list[str] = []

    def run(thread: int) -> None:
        try:
            for n in range(20):
                answers.append(caller.auth.slow_echo(value=f"{thread}-{n}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(answers) == sorted(f"{t}-{n}" for t in range(6) for n in range(20))


# -- malformed input ---------------------------------------------------------------------


async def test_malformed_calls_never_crash_the_worker(make_bus: Callable[..., Bus],
                                                      broker_name: str) -> None:
    server, caller = make_bus(), make_bus(service_name="caller")
    server.client.register_api(AuthApi())
    broker = get_broker(broker_name)
    serializer = caller.client.serializer
    results = MemoryResultTransport(broker=broker_name, serializer=serializer,
                                    service_name="caller", process_name="p")
    stub = RpcMessage(api_name="auth", procedure_name="check_password", kwargs={},
                      id="bad-call-1")
    return_path = results.get_return_path(stub)
    async with serving(server):
        broker.push_call("auth", b"\x00\xffgarbage", time.monotonic() + 10)
        broker.push_call("auth", b"[1, 2, 3]", time.monotonic() + 10)
        no_procedure = {"metadata": {"id": stub.id, "api_name": "auth",
                                     "return_path": return_path}, "kwargs": {}}
        broker.push_call("auth", serializer.dumps(no_procedure), time.monotonic() + 10)
        reply = await results.receive_result(stub, return_path, timeout=WAIT)
        assert reply.error is True
        assert reply.rpc_message_id == stub.id
        assert "procedure_name" in str(reply.result)
        assert "MalformedMessage" in str(reply.result)
        # ... and it keeps serving valid calls.
        assert await caller.auth.check_password.call_async(username="admin",
                                                           password="secret") is True


async def test_malformed_events_are_dead_lettered_and_others_flow(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    seen = Recorder()
    bus.auth.user_registered.listen(seen, listener_name="robust")
    transport = await event_transport(bus)
    stream = get_broker(broker_name).stream(transport.stream_name("auth", "user_registered"))
    serializer = bus.client.serializer
    async with serving(bus):
        stream.append(b"\x00garbage")
        stream.append(serializer.dumps({"metadata": {"id": "x", "api_name": "auth"},
                                        "kwargs": {}}))
        stream.append(serializer.dumps({"kwargs": {"username": "a"}}))
        good = await bus.auth.user_registered.fire_async(username="good", email="e")
        await seen.wait_for(1)
        await eventually(lambda: len(transport.dead_letters("auth", "user_registered")) == 3)
        after = await bus.auth.user_registered.fire_async(username="after", email="e")
        await seen.wait_for(2)
    assert [e.id for e in seen.seen] == [good.id, after.id]
    letters = transport.dead_letters("auth", "user_registered")
    assert all(letter.reason.startswith("malformed:") for letter in letters)
    assert "event_name" in letters[1].reason
    assert "metadata" in letters[2].reason
    assert letters[0].data == b"\x00garbage"
    assert await transport.lag("auth", "user_registered", "robust") == 0


# -- threads ---------------------------------------------------------------------------------


def test_events_fired_from_many_threads_are_handled_once(make_bus: Callable[..., Bus]) -> None:
    firing = [make_bus(), make_bus()]
    for bus in firing:
        bus.client.register_api(AuthApi())
    serving_bus = make_bus(process_name="server")
    threads, per_thread = 6, 40
    lock = threading.Lock()
    handled: list[str] = []
    all_handled = threading.Event()

    def handle(event: EventMessage, username: str, email: str) -> None:
        with lock:
            handled.append(username)
            if len(handled) == threads * per_thread:
                all_handled.set()

    serving_bus.auth.user_registered.listen(handle, listener_name="count")
    serving_bus.client.start_worker()
    go = threading.Barrier(threads)

    def fire(thread: int) -> None:
        go.wait()
        for n in range(per_thread):
            firing[thread % 2].auth.user_registered.fire(username=f"{thread}-{n}", email="e")

    workers = [threading.Thread(target=fire, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert all_handled.wait(WAIT)
    serving_bus.client.stop_worker()
    assert sorted(handled) == sorted(f"{t}-{n}" for t in range(threads)
                                     for n in range(per_thread))


# -- history, lag, trimming --------------------------------------------------------------


async def test_history_and_lag_through_a_bus(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    release = asyncio.Event()
    started = asyncio.Event()
    done = Recorder()

    async def slow(event: EventMessage, username: str, email: str) -> None:
        started.set()
        await release.wait()
        await done(event)

    bus.auth.user_registered.listen(slow, listener_name="slow", ordered=True)
    transport = await event_transport(bus)
    async with serving(bus):
        sent = [await bus.auth.user_registered.fire_async(username=f"u{n}", email="e")
                for n in range(3)]
        await asyncio.wait_for(started.wait(), WAIT)
        assert await transport.lag("auth", "user_registered", "slow") == 3
        history = [m async for m in transport.history("auth", "user_registered")]
        assert [m.id for m in history] == [m.id for m in reversed(sent)]
        assert history[0].kwargs == {"username": "u2", "email": "e"}
        window = [m async for m in transport.history("auth", "user_registered",
                                                     start=sent[1].time, stop=sent[1].time)]
        assert [m.id for m in window] == [sent[1].id]
        release.set()
        await done.wait_for(3)
    assert await transport.lag("auth", "user_registered", "slow") == 0


async def test_max_stream_length_from_config(make_bus: Callable[..., Bus],
                                             broker_name: str) -> None:
    bus = make_bus(config=with_event_options(broker_name, max_stream_length=2))
    bus.client.register_api(AuthApi())
    for n in range(5):
        await bus.auth.user_registered.fire_async(username=f"u{n}", email="e")
    transport = await event_transport(bus)
    assert [m.kwargs["username"] async for m in transport.history("auth", "user_registered")
            ] == ["u4", "u3"]
