"""The worker's reliability behaviour: concurrency limits, start/stop functions, scheduled
tasks, draining, the serving flags, and bad calls and events that must not stop it."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from bus_memory import MemoryResultTransport, get_broker

from bus_core import Api, Bus, Event, EventMessage, RemoteError, RpcTimeout
from bus_core.messages import RpcMessage, rpc_to_blob
from tests.apis import AuthApi
from tests.conftest import memory_config
from tests.helpers import EventRecorder as Recorder
from tests.helpers import event_transport, eventually, serving

WAIT = 5.0  # upper bound for what must happen; never reached when it does
QUIET = 0.1  # how long we watch for something that must not happen


class Barrier:
    """asyncio.Barrier for Python 3.10: `wait()` returns once `parties` tasks wait."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.everyone = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.everyone.set()
        await self.everyone.wait()


class GateApi(Api):
    """RPCs that report when they are running and wait until they are let go."""

    tick = Event(parameters=("n",))

    class Meta:
        name = "gate"

    def __init__(self, barrier_parties: int = 0) -> None:
        self.active = 0
        self.max_active = 0
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.expect = 0
        self.barrier = Barrier(barrier_parties) if barrier_parties else None
        self.thread_barrier = threading.Barrier(barrier_parties or 1, timeout=WAIT)
        self.calls: list[int] = []

    async def hold(self, n: int) -> int:
        self.calls.append(n)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        if self.active >= self.expect:
            self.entered.set()
        try:
            await self.release.wait()
        finally:
            self.active -= 1
        return n

    async def meet(self, n: int) -> int:
        assert self.barrier is not None
        await self.barrier.wait()
        return n

    def meet_in_threads(self, n: int) -> int:
        self.thread_barrier.wait()  # raises BrokenBarrierError unless all run at once
        return n

    def add(self, a: int, b: int) -> int:
        return a + b

    def big(self, size: int) -> str:
        return "x" * size




def config_with(broker: str, bus: dict[str, Any] | None = None,
                **api_default: Any) -> dict[str, Any]:
    config = memory_config(broker, **api_default)
    config["bus"].update(bus or {})
    return config




# -- RPC concurrency -------------------------------------------------------------------------


async def test_rpcs_run_concurrently(make_bus: Callable[..., Bus]) -> None:
    server, caller = make_bus(), make_bus(service_name="caller")
    server.client.register_api(GateApi(barrier_parties=5))
    async with serving(server):
        # Five calls that each wait for all five: they finish only if they run at once.
        calls = [caller.gate.meet.call_async(n=n) for n in range(5)]
        assert sorted(await asyncio.gather(*calls)) == [0, 1, 2, 3, 4]


async def test_sync_rpcs_run_concurrently_in_threads(make_bus: Callable[..., Bus]) -> None:
    server, caller = make_bus(), make_bus(service_name="caller")
    server.client.register_api(GateApi(barrier_parties=4))
    async with serving(server):
        calls = [caller.gate.meet_in_threads.call_async(n=n) for n in range(4)]
        assert sorted(await asyncio.gather(*calls)) == [0, 1, 2, 3]


async def test_max_concurrent_rpcs_caps_rpcs_in_flight(make_bus: Callable[..., Bus]) -> None:
    server = make_bus(max_concurrent_rpcs=3)
    caller = make_bus(service_name="caller")
    api = GateApi()
    api.expect = 3
    server.client.register_api(api)
    async with serving(server):
        calls = asyncio.gather(*(caller.gate.hold.call_async(n=n) for n in range(5)))
        await asyncio.wait_for(api.entered.wait(), WAIT)
        await asyncio.sleep(QUIET)  # give a fourth call every chance to start
        assert api.active == 3
        api.release.set()
        assert sorted(await asyncio.wait_for(calls, WAIT)) == [0, 1, 2, 3, 4]
    assert api.max_active == 3
    assert sorted(api.calls) == [0, 1, 2, 3, 4]


# -- listener concurrency ----------------------------------------------------------------


class Gate:
    """An event handler that holds every event until released, tracking overlap."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.finished: list[int] = []
        self.active = 0
        self.max_active = 0
        self.release = asyncio.Event()
        self.first_started = asyncio.Event()
        self.all_finished = asyncio.Event()
        self.expect = 0

    async def __call__(self, event: EventMessage, n: int) -> None:
        self.started.append(n)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.first_started.set()
        try:
            await self.release.wait()
        finally:
            self.active -= 1
        self.finished.append(n)
        if len(self.finished) == self.expect:
            self.all_finished.set()


@pytest.mark.parametrize("how", [
    {"listen": {"ordered": True}},
    {"listen": {"max_concurrency": 1}},
    {"config": {"ordered": True}},
], ids=["ordered", "max_concurrency=1", "config-ordered"])
async def test_an_ordered_listener_handles_one_event_at_a_time(
        make_bus: Callable[..., Bus], how: dict[str, Any]) -> None:
    bus = make_bus(**how.get("config", {}))
    bus.client.register_api(GateApi())
    gate = Gate()
    gate.expect = 4
    bus.gate.tick.listen(gate, listener_name="ordered", **how.get("listen", {}))
    async with serving(bus):
        for n in range(4):
            await bus.gate.tick.fire_async(n=n)
        await asyncio.wait_for(gate.first_started.wait(), WAIT)
        await asyncio.sleep(QUIET)  # give a second handler every chance to start
        assert gate.started == [0]
        gate.release.set()
        await asyncio.wait_for(gate.all_finished.wait(), WAIT)
    assert gate.started == gate.finished == [0, 1, 2, 3]
    assert gate.max_active == 1


async def test_max_concurrency_caps_a_listener(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(GateApi())
    gate = Gate()
    gate.expect = 5
    bus.gate.tick.listen(gate, listener_name="capped", max_concurrency=2)
    async with serving(bus):
        for n in range(5):
            await bus.gate.tick.fire_async(n=n)
        await eventually(lambda: gate.active == 2)
        await asyncio.sleep(QUIET)
        assert gate.active == 2
        gate.release.set()
        await asyncio.wait_for(gate.all_finished.wait(), WAIT)
    assert gate.max_active == 2
    assert sorted(gate.finished) == [0, 1, 2, 3, 4]


async def test_an_unordered_listener_handles_events_concurrently(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(GateApi())
    barrier = Barrier(4)
    seen = Recorder()

    async def meet(event: EventMessage, n: int) -> None:
        await barrier.wait()  # completes only if four handlers run at once
        await seen(event)

    bus.gate.tick.listen(meet, listener_name="parallel")
    async with serving(bus):
        for n in range(4):
            await bus.gate.tick.fire_async(n=n)
        assert len(await seen.wait_for(4)) == 4


# -- start and stop functions ------------------------------------------------------------


def test_on_start_and_on_stop_run_in_order_with_start_and_stop_worker(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    calls: list[str] = []

    @bus.client.on_start
    def start_sync() -> None:
        calls.append("start sync")

    @bus.client.on_start
    async def start_async() -> None:
        calls.append("start async")

    @bus.client.on_stop
    async def stop_async() -> None:
        calls.append("stop async")

    @bus.client.on_stop
    def stop_sync() -> None:
        calls.append("stop sync")

    bus.client.start_worker()
    assert calls == ["start sync", "start async"]
    assert bus.auth.check_password(username="admin", password="secret") is True
    bus.client.stop_worker()
    assert calls == ["start sync", "start async", "stop async", "stop sync"]


async def test_serve_runs_start_functions_before_serving_and_stops_on_request(
        make_bus: Callable[..., Bus]) -> None:
    server, caller = make_bus(), make_bus(service_name="caller")
    server.client.register_api(AuthApi())
    calls: list[str] = []
    may_finish_starting = asyncio.Event()
    starting = asyncio.Event()

    @server.client.on_start
    async def warm_up() -> None:
        starting.set()
        await may_finish_starting.wait()
        calls.append("started")

    @server.client.on_stop
    def goodbye() -> None:
        calls.append("stopped")

    stop = asyncio.Event()
    serve = asyncio.ensure_future(server.client.serve(stop=stop))
    await asyncio.wait_for(starting.wait(), WAIT)
    call = asyncio.ensure_future(caller.auth.slow_echo.call_async(value="hi"))
    await asyncio.sleep(QUIET)
    assert not call.done()  # nothing is served before the start functions finished
    may_finish_starting.set()
    assert await asyncio.wait_for(call, WAIT) == "hi"
    assert calls == ["started"]
    stop.set()
    await asyncio.wait_for(serve, WAIT)
    assert calls == ["started", "stopped"]


# -- scheduled tasks -----------------------------------------------------------------------


async def test_every_runs_repeatedly_and_stops_with_the_worker(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    runs: list[float] = []

    @bus.client.every(seconds=0.01)
    async def tick() -> None:
        runs.append(time.monotonic())

    async with serving(bus):
        await eventually(lambda: len(runs) >= 3)
    stopped_at = len(runs)
    await asyncio.sleep(0.05)
    assert len(runs) == stopped_at
    assert all(later > earlier for earlier, later in itertools.pairwise(runs))


async def test_a_raising_task_keeps_being_scheduled(make_bus: Callable[..., Bus],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    bus = make_bus()
    runs: list[int] = []

    @bus.client.every(seconds=0.01)
    def flaky() -> None:  # sync: runs in the thread pool
        runs.append(1)
        raise RuntimeError("task failed")

    async with serving(bus):
        await eventually(lambda: len(runs) >= 3)
    assert any("flaky" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_also_run_immediately(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    ran: list[str] = []
    ran_now = asyncio.Event()

    @bus.client.every(seconds=3600, also_run_immediately=True)
    async def now() -> None:
        ran.append("now")
        ran_now.set()

    @bus.client.every(seconds=3600)
    async def later() -> None:
        ran.append("later")

    async with serving(bus):
        await asyncio.wait_for(ran_now.wait(), WAIT)
        await asyncio.sleep(QUIET)
    assert ran == ["now"]


# -- draining --------------------------------------------------------------------------------


async def test_stop_waits_for_an_event_in_flight_and_acknowledges_it(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    calls: list[str] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(event: EventMessage, username: str, email: str) -> None:
        started.set()
        await release.wait()
        calls.append("handled")

    bus.client.on_stop(lambda: calls.append("on_stop"))
    bus.auth.user_registered.listen(slow, listener_name="slow")
    transport = await event_transport(bus)
    worker = bus.client.worker()
    await worker.start()
    await bus.auth.user_registered.fire_async(username="a", email="e")
    await asyncio.wait_for(started.wait(), WAIT)
    stopping = asyncio.ensure_future(worker.stop())
    await asyncio.sleep(QUIET)
    assert not stopping.done()  # waiting for the handler
    release.set()
    await asyncio.wait_for(stopping, WAIT)
    assert calls == ["handled", "on_stop"]
    assert await transport.lag("auth", "user_registered", "slow") == 0


async def test_stop_waits_for_an_rpc_in_flight_and_sends_its_result(
        make_bus: Callable[..., Bus]) -> None:
    server, caller = make_bus(), make_bus(service_name="caller")
    api = GateApi()
    api.expect = 1
    server.client.register_api(api)
    worker = server.client.worker()
    await worker.start()
    call = asyncio.ensure_future(caller.gate.hold.call_async(n=7))
    await asyncio.wait_for(api.entered.wait(), WAIT)
    stopping = asyncio.ensure_future(worker.stop())
    await asyncio.sleep(QUIET)
    assert not stopping.done()
    api.release.set()
    await asyncio.wait_for(stopping, WAIT)
    assert await asyncio.wait_for(call, WAIT) == 7


async def test_a_handler_beyond_drain_timeout_is_cancelled_and_redelivered(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    config = config_with(broker_name, bus={"drain_timeout": 0.2})
    bus = make_bus(config=config)
    bus.client.register_api(AuthApi())
    started = asyncio.Event()
    cancelled: list[str] = []

    async def stuck(event: EventMessage, username: str, email: str) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never finishes on its own
        except asyncio.CancelledError:
            cancelled.append(event.id)
            raise

    bus.auth.user_registered.listen(stuck, listener_name="stuck")
    transport = await event_transport(bus)
    worker = bus.client.worker()
    await worker.start()
    sent = await bus.auth.user_registered.fire_async(username="a", email="e")
    await asyncio.wait_for(started.wait(), WAIT)
    await asyncio.wait_for(worker.stop(), WAIT)
    assert cancelled == [sent.id]
    assert await transport.lag("auth", "user_registered", "stuck") == 1

    next_worker = make_bus(config=config, process_name="next")
    seen = Recorder()
    next_worker.auth.user_registered.listen(seen, listener_name="stuck")
    async with serving(next_worker):
        (again,) = await seen.wait_for(1)
    assert again.id == sent.id
    assert await transport.lag("auth", "user_registered", "stuck") == 0


# -- serving flags -------------------------------------------------------------------------


async def test_worker_without_rpcs_serves_no_rpcs(make_bus: Callable[..., Bus]) -> None:
    server, caller = make_bus(), make_bus(service_name="caller")
    server.client.register_api(AuthApi())
    seen = Recorder()
    server.auth.user_registered.listen(seen, listener_name="still_listening")
    async with serving(server, rpcs=False) as worker:
        assert worker.api_names == []
        with pytest.raises(RpcTimeout):
            await caller.auth.slow_echo.call_async(value="x", bus_options={"timeout": 0.2})
        await server.auth.user_registered.fire_async(username="a", email="e")
        await seen.wait_for(1)


async def test_worker_without_events_runs_no_listeners(make_bus: Callable[..., Bus]) -> None:
    server, caller = make_bus(), make_bus(service_name="caller")
    server.client.register_api(AuthApi())
    seen = Recorder()
    server.auth.user_registered.listen(seen, listener_name="later", since="0")
    async with serving(server, events=False) as worker:
        assert worker.listener_names == []
        sent = await server.auth.user_registered.fire_async(username="a", email="e")
        assert await caller.auth.slow_echo.call_async(value="x") == "x"  # it is serving
        await asyncio.sleep(QUIET)
        assert seen.seen == []
    async with serving(server):  # the event was left for the listener
        (event,) = await seen.wait_for(1)
    assert event.id == sent.id


async def test_worker_without_tasks_runs_no_tasks(make_bus: Callable[..., Bus]) -> None:
    server, caller = make_bus(), make_bus(service_name="caller")
    server.client.register_api(AuthApi())
    ran: list[str] = []

    @server.client.every(seconds=0.01, also_run_immediately=True)
    async def task() -> None:
        ran.append("ran")

    async with serving(server, tasks=False):
        assert await caller.auth.slow_echo.call_async(value="x") == "x"
        await asyncio.sleep(QUIET)
    assert ran == []


# -- bad calls -----------------------------------------------------------------------------


@pytest.mark.parametrize(("procedure", "kwargs", "remote_type", "named"), [
    ("no_such_rpc", {}, "UnknownRpc", "'no_such_rpc'"),
    ("add", {"a": 1}, "InvalidArguments", "'b'"),
    ("add", {"a": 1, "b": 2, "c": 3}, "InvalidArguments", "'c'"),
    ("add", {"a": "one", "b": 2}, "WireError", "'a'"),
], ids=["unknown-rpc", "missing-argument", "unknown-argument", "uncastable-value"])
async def test_a_bad_call_gets_an_error_and_the_worker_keeps_serving(
        make_bus: Callable[..., Bus], procedure: str, kwargs: dict[str, Any],
        remote_type: str, named: str) -> None:
    server = make_bus()
    server.client.register_api(GateApi())
    caller = make_bus(service_name="caller")  # does not know GateApi: no local checks
    async with serving(server):
        with pytest.raises(RemoteError) as raised:
            await caller.client.call_rpc_async("gate", procedure, kwargs)
        assert raised.value.remote_type == remote_type
        assert named in raised.value.remote_message
        assert await caller.client.call_rpc_async("gate", "add", {"a": 1, "b": 2}) == 3


async def test_a_call_for_an_api_the_worker_does_not_serve_gets_an_error(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    server = make_bus()
    server.client.register_api(AuthApi())
    serializer = server.client.serializer
    results = MemoryResultTransport(broker=broker_name, serializer=serializer,
                                    service_name="caller", process_name="p")
    stray = RpcMessage(api_name="billing", procedure_name="charge", kwargs={})
    stray.return_path = results.get_return_path(stray)
    async with serving(server):
        # A call for "billing" that arrives on the queue this worker consumes.
        get_broker(broker_name).push_call("auth", serializer.dumps(rpc_to_blob(stray)),
                                          time.monotonic() + 10)
        reply = await results.receive_result(stray, stray.return_path, timeout=WAIT)
        assert reply.error is True
        assert "UnknownApi" in str(reply.result) and "'billing'" in str(reply.result)
        assert await server.auth.check_password.call_async(username="a", password="b") is False


# -- bad events ----------------------------------------------------------------------------


async def test_an_event_that_cannot_be_cast_is_dead_lettered_without_retries(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus(max_deliveries=5)
    bus.client.register_api(GateApi())
    handled: list[int] = []

    async def typed(event: EventMessage, n: int) -> None:
        handled.append(n)

    bus.gate.tick.listen(typed, listener_name="typed")
    transport = await event_transport(bus, "gate")
    async with serving(bus):
        bad = await bus.gate.tick.fire_async(n="not a number")
        await eventually(lambda: transport.dead_letters("gate", "tick"))
        await bus.gate.tick.fire_async(n=5)
        await eventually(lambda: handled == [5])
    (letter,) = transport.dead_letters("gate", "tick")
    assert letter.native_id == bad.native_id
    assert "after 1 deliveries" in letter.reason
    assert "WireError" in letter.reason and "'n'" in letter.reason
    assert await transport.lag("gate", "tick", "typed") == 0


async def test_an_event_lacking_a_required_parameter_is_dead_lettered(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(GateApi())
    handled: list[Any] = []

    async def needs_more(event: EventMessage, n: Any, colour: str) -> None:
        handled.append(n)

    bus.gate.tick.listen(needs_more, listener_name="needs_more")
    transport = await event_transport(bus, "gate")
    async with serving(bus):
        await bus.gate.tick.fire_async(n=1)
        await eventually(lambda: transport.dead_letters("gate", "tick"))
    (letter,) = transport.dead_letters("gate", "tick")
    assert "colour" in letter.reason and "after 1 deliveries" in letter.reason
    assert handled == []


# -- kernel bugs: these fail until bus_core/worker.py is fixed ----------------------------


async def test_a_result_too_large_to_send_reaches_the_caller_as_an_error(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    """The worker must answer, not leave the caller to time out (bus_core/worker.py,
    Worker._send_result catches MalformedMessage, but MessageTooLarge is not one)."""
    config = config_with(broker_name, bus={"max_message_size": 4096})
    server = make_bus(config=config)
    server.client.register_api(GateApi())
    caller = make_bus(config=config, service_name="caller")
    async with serving(server):
        with pytest.raises(RemoteError) as raised:
            await caller.gate.big.call_async(size=8192, bus_options={"timeout": 1})
        assert "max_message_size" in str(raised.value)
        assert await caller.gate.big.call_async(size=10) == "x" * 10


async def test_a_malformed_call_with_an_unusable_return_path_is_only_logged(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    """Worker._send_result retries a MalformedMessage failure with the same bad return path,
    outside any handler: the error escapes the task ("Task exception was never retrieved")."""
    server = make_bus()
    server.client.register_api(AuthApi())
    unhandled: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: unhandled.append(ctx))
    blob = {"metadata": {"id": "x1", "api_name": "auth", "return_path": "elsewhere://x"},
            "kwargs": {}}
    async with serving(server):
        get_broker(broker_name).push_call("auth", server.client.serializer.dumps(blob),
                                          time.monotonic() + 10)
        assert await server.auth.check_password.call_async(username="a", password="b") is False
        await asyncio.sleep(QUIET)
    assert unhandled == []


async def test_a_malformed_call_without_an_id_still_gets_an_error_result(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    """The worker promises an error result to any malformed call whose return path it can
    read; Worker._answer_malformed also demands an id and otherwise stays silent."""
    server = make_bus()
    server.client.register_api(AuthApi())
    serializer = server.client.serializer
    results = MemoryResultTransport(broker=broker_name, serializer=serializer,
                                    service_name="caller", process_name="p")
    stub = RpcMessage(api_name="auth", procedure_name="check_password", kwargs={})
    stub.return_path = results.get_return_path(stub)
    blob = {"metadata": {"api_name": "auth", "procedure_name": "check_password",
                         "return_path": stub.return_path}, "kwargs": {}}
    async with serving(server):
        get_broker(broker_name).push_call("auth", serializer.dumps(blob),
                                          time.monotonic() + 10)
        reply = await results.receive_result(stub, stub.return_path, timeout=1)
    assert reply.error is True
    assert "'id'" in str(reply.result)


def test_on_error_stop_stops_a_background_worker(make_bus: Callable[..., Bus]) -> None:
    """A listener with on_error='stop' stops `worker.run()`, but a worker started with
    start_worker() keeps handling later events: Worker.fail() only resolves the future
    run() waits on."""
    bus = make_bus()
    bus.client.register_api(AuthApi())
    handled: list[str] = []
    failed = threading.Event()

    def strict(event: EventMessage, username: str, email: str) -> None:
        handled.append(username)
        if username == "bad":
            failed.set()
            raise RuntimeError("stop the line")

    bus.auth.user_registered.listen(strict, listener_name="strict", on_error="stop")
    worker = bus.client.start_worker()
    bus.auth.user_registered.fire(username="bad", email="e")
    assert failed.wait(WAIT)
    deadline = time.monotonic() + 1
    while not worker.stopping and time.monotonic() < deadline:
        time.sleep(0.005)
    assert isinstance(worker.failure, RuntimeError)
    assert worker.stopping, "the worker kept running after on_error='stop'"
    bus.auth.user_registered.fire(username="after", email="e")
    time.sleep(QUIET)
    assert handled == ["bad"]
