"""Calling, firing and listening through a bus client: the user's view."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import bus_core
from bus_core import (
    EventMessage,
    InvalidArguments,
    RemoteError,
    RpcTimeout,
    UnknownApi,
    UnknownEvent,
    UnknownRpc,
)
from tests.apis import AuthApi, TypesApi


@pytest.fixture
def served(make_bus):
    """(server bus with AuthApi and a worker, caller bus without the API class)."""
    server = make_bus()
    server.client.register_api(AuthApi())
    server.client.start_worker()
    caller = make_bus(service_name="caller")
    return server, caller


def test_sync_call_returns_the_result(served):
    _, caller = served
    assert caller.auth.check_password(username="admin", password="secret") is True
    assert caller.auth.check_password(username="admin", password="nope") is False


async def test_async_call_runs_on_the_callers_loop(served):
    _, caller = served
    loop = asyncio.get_running_loop()
    result = await caller.auth.slow_echo.call_async(value="hi")
    assert result == "hi"
    # The caller's loop got its own transports: no hop through the background thread.
    assert loop in caller.client._states


async def test_many_async_calls_in_flight_at_once(served):
    _, caller = served
    values = [f"v{i}" for i in range(50)]
    results = await asyncio.gather(
        *(caller.auth.slow_echo.call_async(value=v, delay=0.01) for v in values))
    assert results == values


def test_sync_calls_from_many_threads(served):
    _, caller = served
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(
            lambda i: caller.auth.slow_echo(value=str(i)), range(40)))
    assert results == [str(i) for i in range(40)]


async def test_sync_call_from_inside_async_code_works_and_warns_once(served):
    _, caller = served
    # A sync call made while an event loop runs in this thread still works, but blocks
    # that loop, so the user is told (once) to use the async form there.
    with pytest.warns(RuntimeWarning, match="blocks its event loop"):
        assert caller.auth.check_password(username="admin", password="secret") is True
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert caller.auth.check_password(username="admin", password="nope") is False


def test_remote_exception_names_type_message_and_traceback(served):
    _, caller = served
    with pytest.raises(RemoteError) as caught:
        caller.auth.fail(message="card declined")
    error = caught.value
    assert error.remote_type == "ValueError"
    assert error.remote_message == "card declined"
    assert "raise ValueError(message)" in error.remote_traceback
    assert "auth.fail() raised ValueError: card declined" in str(error)


def test_timeout_names_api_rpc_and_timeout(make_bus):
    caller = make_bus(rpc_timeout=0.2)  # nobody serves "billing"
    with pytest.raises(RpcTimeout) as caught:
        caller.billing.charge(amount=3)
    text = str(caught.value)
    assert "billing.charge()" in text and "0.2s" in text and "'billing'" in text


def test_per_call_timeout_overrides_config(make_bus):
    caller = make_bus(rpc_timeout=30)
    with pytest.raises(RpcTimeout, match=r"0.1s \(bus_options timeout\)"):
        caller.billing.charge(amount=3, bus_options={"timeout": 0.1})
    for bad in (0, -1, "soon", True):
        with pytest.raises(InvalidArguments, match="positive number of seconds"):
            caller.billing.charge(amount=3, bus_options={"timeout": bad})


def test_values_are_checked_against_declared_types_before_sending(served):
    import datetime as dt

    server, _ = served
    with pytest.raises(InvalidArguments, match=r"user_deleted parameter 'hard': expected bool"):
        server.auth.user_deleted.fire(username="a", hard="yes")
    with pytest.raises(InvalidArguments, match=r"check_password\(\) parameter 'username'"):
        server.auth.check_password(username=42, password="x")
    with pytest.raises(InvalidArguments, match="JSON has no NaN"):
        server.auth.slow_echo(value="x", delay=float("nan"))
    with pytest.raises(InvalidArguments, match="cannot send a value of type"):
        server.auth.user_registered.fire(username=object(), email="b")
    # The check is on the wire form: a date sent for a str arrives as its ISO string.
    assert server.auth.check_password(username=dt.date(2020, 1, 1), password="x") is False


def test_since_must_be_a_position(make_bus):
    bus = make_bus()
    for bad in (42, "yesterday", "12-x", ""):
        with pytest.raises(InvalidArguments, match=f"since={bad!r}"):
            bus.auth.user_registered.listen(lambda e, **kw: None, listener_name="x", since=bad)
    for good in ("$", "0", "0-0", "1700000000000-3", "1700000000000"):
        bus.auth.user_registered.listen(lambda e, **kw: None, listener_name=f"ok{good}",
                                        since=good)


def test_bus_options_are_a_dict_of_known_options(make_bus):
    caller = make_bus()
    with pytest.raises(InvalidArguments, match=r"bus_options must be a dict .* got 5"):
        caller.billing.charge(amount=3, bus_options=5)
    with pytest.raises(InvalidArguments, match="unknown bus_options 'timout'; known: timeout"):
        caller.billing.charge(amount=3, bus_options={"timout": 1})


def test_positional_arguments_are_refused_with_the_keyword_form(served):
    server, _ = served
    with pytest.raises(InvalidArguments) as caught:
        server.auth.check_password("admin", "secret")
    assert "keyword arguments only" in str(caught.value)
    assert "bus.auth.check_password(username=..., password=...)" in str(caught.value)
    with pytest.raises(InvalidArguments, match=r"user_registered.fire\(username=\.\.\."):
        server.auth.user_registered.fire("bob")


def test_unknown_rpc_of_a_local_api_is_named_before_sending(served):
    server, _ = served
    with pytest.raises(UnknownRpc, match="no RPC 'chek_password'.*check_password"):
        server.auth.chek_password(username="a", password="b")


def test_bad_arguments_of_a_local_api_are_refused_before_sending(served):
    server, _ = served
    with pytest.raises(InvalidArguments, match="unknown parameter.*'pasword'"):
        server.auth.check_password(username="a", pasword="b")
    with pytest.raises(InvalidArguments, match="missing required parameter.*'password'"):
        server.auth.check_password(username="a")


def test_unknown_arguments_to_a_remote_api_get_a_remote_error(served):
    _, caller = served  # the caller has no AuthApi class, so the worker must refuse
    with pytest.raises(RemoteError) as caught:
        caller.auth.check_password(username="a", pasword="b")
    assert caught.value.remote_type == "InvalidArguments"
    assert "pasword" in caught.value.remote_message


def test_calling_an_rpc_the_worker_does_not_have(served):
    _, caller = served
    with pytest.raises(RemoteError) as caught:
        caller.auth.no_such_rpc()
    assert caught.value.remote_type == "UnknownRpc"


def test_firing_an_unregistered_api_is_refused(make_bus):
    bus = make_bus()
    with pytest.raises(UnknownApi, match="not registered on this client"):
        bus.auth.user_registered.fire(username="a", email="b")


def test_unknown_event_of_a_local_api_is_named(served):
    server, _ = served
    with pytest.raises(UnknownEvent, match="no event 'user_registerd'"):
        server.auth.user_registerd.fire(username="a")
    with pytest.raises(UnknownEvent):
        server.auth.user_registerd.listen(lambda e: None, listener_name="x")


def test_event_arguments_are_checked(served):
    server, _ = served
    with pytest.raises(InvalidArguments, match="missing required parameter.*'email'"):
        server.auth.user_registered.fire(username="a")
    with pytest.raises(InvalidArguments, match="unknown parameter"):
        server.auth.user_registered.fire(username="a", email="b", extra=1)


def test_listener_name_is_required(make_bus):
    bus = make_bus()
    with pytest.raises(TypeError):
        bus.auth.user_registered.listen(lambda e, **kw: None)  # type: ignore[call-arg]
    with pytest.raises(InvalidArguments, match="listener_name"):
        bus.auth.user_registered.listen(lambda e, **kw: None, listener_name="")


def test_handler_must_take_the_event_first(make_bus):
    bus = make_bus()

    def no_positional(*, username: str) -> None: ...

    with pytest.raises(InvalidArguments, match="first argument"):
        bus.auth.user_registered.listen(no_positional, listener_name="x")


def test_message_ids_are_uuids(served):
    import uuid

    server, _ = served
    message = server.auth.user_registered.fire(username="a", email="b")
    assert str(uuid.UUID(message.id)) == message.id


def _collect(bus, events, listener_name):
    got: list[tuple[EventMessage, dict]] = []
    done = threading.Event()

    def handler(event: EventMessage, **kwargs) -> None:
        got.append((event, kwargs))
        done.set()

    bus.client.listen(events, handler, listener_name=listener_name)
    return got, done


def test_listener_gets_the_event_context_and_parameters(make_bus):
    bus = make_bus()
    bus.client.register_api(AuthApi())
    got, done = _collect(bus, bus.auth.user_registered, "welcome")
    bus.client.start_worker()
    fired = bus.auth.user_registered.fire(username="ada", email="ada@example.com")
    assert done.wait(5)
    event, kwargs = got[0]
    assert kwargs == {"username": "ada", "email": "ada@example.com"}
    assert (event.api_name, event.event_name, event.id) == ("auth", "user_registered", fired.id)
    assert event.time is not None


def test_one_handler_listens_to_several_events(make_bus):
    bus = make_bus()
    bus.client.register_api(AuthApi())
    got: list[str] = []
    both = threading.Event()

    def handler(event: EventMessage, username: str, **rest) -> None:
        got.append(f"{event.event_name}:{username}")
        if len(got) == 2:
            both.set()

    bus.client.listen([bus.auth.user_registered, "auth.user_deleted"], handler,
                      listener_name="audit")
    bus.client.start_worker()
    bus.auth.user_registered.fire(username="a", email="x")
    bus.auth.user_deleted.fire(username="b")
    assert both.wait(5)
    assert sorted(got) == ["user_deleted:b", "user_registered:a"]


def test_defaults_of_event_parameters_are_sent(make_bus):
    bus = make_bus()
    bus.client.register_api(AuthApi())
    message = bus.auth.user_deleted.fire(username="a")
    assert message.kwargs == {"username": "a", "hard": False}


def test_async_handlers_and_fire_async(make_bus):
    bus = make_bus()
    bus.client.register_api(AuthApi())
    seen = threading.Event()

    async def handler(event: EventMessage, username: str, email: str) -> None:
        await asyncio.sleep(0)
        seen.set()

    bus.auth.user_registered.listen(handler, listener_name="async_handler")
    bus.client.start_worker()

    async def fire() -> EventMessage:
        return await bus.auth.user_registered.fire_async(username="a", email="b")

    asyncio.run(fire())
    assert seen.wait(5)


def test_sync_handlers_run_in_the_thread_pool(make_bus):
    bus = make_bus()
    bus.client.register_api(AuthApi())
    threads: list[str] = []
    seen = threading.Event()

    def handler(event: EventMessage, username: str, email: str) -> None:
        threads.append(threading.current_thread().name)
        seen.set()

    bus.auth.user_registered.listen(handler, listener_name="sync_handler")
    bus.client.start_worker()
    bus.auth.user_registered.fire(username="a", email="b")
    assert seen.wait(5)
    assert threads[0].startswith("bus-handler")


def test_a_sync_call_from_a_sync_handler_works(make_bus):
    """Handlers run in the thread pool, so they can call RPCs synchronously."""
    bus = make_bus()
    bus.client.register_api(AuthApi())
    answers: list[bool] = []
    seen = threading.Event()

    def handler(event: EventMessage, username: str, email: str) -> None:
        answers.append(bus.auth.check_password(username=username, password="secret"))
        seen.set()

    bus.auth.user_registered.listen(handler, listener_name="calls_back")
    bus.client.start_worker()
    bus.auth.user_registered.fire(username="admin", email="b")
    assert seen.wait(5)
    assert answers == [True]


def test_two_clients_in_one_process_are_independent(make_bus, broker_name):
    first = make_bus(service_name="one")
    second = bus_core.create(
        {"apis": {"default": {"rpc_timeout": 9}}}, service_name="two",
        plugins=[type("P", (), {})()],
    )
    try:
        first.client.register_api(AuthApi())
        assert "auth" not in second.client.apis
        assert second.client.config.api("auth").rpc_timeout == 9
        assert first.client.config.api("auth").rpc_timeout == 2
        assert first.client.plugins is not second.client.plugins
        assert len(second.client.plugins.infos) == len(first.client.plugins.infos) + 1
    finally:
        second.client.close()


def test_values_round_trip_through_an_rpc(make_bus):
    import datetime as dt
    import uuid
    from decimal import Decimal

    from tests.apis import Address, Colour, Point

    server = make_bus()
    server.client.register_api(TypesApi())
    server.client.start_worker()
    when = dt.datetime(2024, 2, 29, 23, 59, 1, 500, tzinfo=dt.timezone.utc)
    ident = uuid.uuid4()
    blob = bytes(range(256))
    result = server.my_company.types.echo(
        when=when, day=dt.date(2024, 1, 2), at=dt.time(12, 30), ident=ident,
        amount=Decimal("10.25"), blob=blob, colour=Colour.BLUE,
        address=Address("Main", 3), point=Point(1.5, -2.0), tags={"b", "a"}, pair=(1, "x"),
    )
    # The worker saw real Python types (cast back from the wire by the method's hints)...
    assert result["types"] == ["datetime", "date", "time", "UUID", "Decimal", "bytes",
                               "Colour", "Address", "Point", "set", "tuple"]
    # ... and the caller gets wire values back for a `dict` return type.
    assert result["when"] == when.isoformat()
    assert result["blob"] is not None and result["amount"] == "10.25"
    assert result["maybe"] is None
    # A typed return value is cast back on the caller's side.
    assert server.my_company.types.address_of(street="High") == Address("High", 7)


def test_odd_unicode_and_binary_round_trip(make_bus):
    server = make_bus()
    server.client.register_api(AuthApi())
    server.client.start_worker()
    for value in ["", "ü∑ß ❤ 𝄞", "\u0000nul", "\ud800 lone", "a\nb\tc\"'\\", "‮rtl"]:
        assert server.auth.slow_echo(value=value) == value


def test_a_listener_added_while_the_worker_runs_starts_at_once(make_bus):
    bus = make_bus()
    bus.client.register_api(AuthApi())
    bus.client.start_worker()
    got, done = _collect(bus, bus.auth.user_registered, "late_listener")
    bus.auth.user_registered.fire(username="late", email="x")
    assert done.wait(5)
    assert got[0][1]["username"] == "late"


async def test_listen_async_waits_until_the_listener_consumes(make_bus):
    bus = make_bus()
    bus.client.register_api(AuthApi())
    stop = asyncio.Event()
    serving = asyncio.create_task(bus.client.serve(stop=stop))
    while not bus.client.running_workers:
        await asyncio.sleep(0.001)
    received: asyncio.Queue[str] = asyncio.Queue()

    async def handler(event: EventMessage, username: str, email: str) -> None:
        await received.put(username)

    await bus.auth.user_registered.listen_async(handler, listener_name="async_late")
    await bus.auth.user_registered.fire_async(username="now", email="x")
    assert await asyncio.wait_for(received.get(), 5) == "now"
    stop.set()
    await serving
    await bus.client.close_async()
