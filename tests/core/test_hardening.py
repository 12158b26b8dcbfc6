"""Hostile input the kernel sees, by class: parameters a sender adds, error results that
would leak the worker's code, names that would forge log lines or metric series, values no
timer can use, arguments no encoder can walk, and a start that fails part way."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

import pytest

from bus_core import Bus, EventMessage, InvalidArguments, RemoteError, hookimpl
from bus_core.errors import TransportError
from bus_core.logs import JsonFormatter, TextFormatter, Throttle, current_message
from tests.apis import AuthApi
from tests.conftest import memory_config
from tests.helpers import EventRecorder, event_transport, eventually, serving


class KwargsRecorder(EventRecorder):
    """A handler taking exactly the event's declared parameters, recording what it got."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, event: EventMessage, username: str,  # type: ignore[override]
                       email: str) -> None:
        self.calls.append({"username": username, "email": email})
        await super().__call__(event)

# -- parameters an event's API does not declare ------------------------------------------------


class UndeclaredSeen:
    """A throwaway plugin recording bus_on_undeclared_parameters."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, list[str]]] = []

    @hookimpl
    def bus_on_undeclared_parameters(self, client: Any, message: EventMessage,
                                     listener_name: str, parameter_names: list[str]) -> None:
        assert message.kwargs.keys() >= set(parameter_names)  # still on the message
        self.seen.append((message.canonical_name, listener_name, parameter_names))


async def send_raw_event(bus: Bus, **kwargs: Any) -> EventMessage:
    """Put an auth.user_registered entry on the transport as a newer or foreign sender
    would: with whatever parameters it likes."""
    message = EventMessage(api_name="auth", event_name="user_registered", kwargs=kwargs)
    await (await event_transport(bus)).send_event(message)
    return message


async def test_undeclared_parameters_are_dropped_logged_once_and_reported(
        make_bus: Callable[..., Bus], caplog: pytest.LogCaptureFixture) -> None:
    plugin = UndeclaredSeen()
    bus = make_bus(plugins=[plugin])
    bus.client.register_api(AuthApi())
    recorder = KwargsRecorder()
    bus.auth.user_registered.listen(recorder, listener_name="welcome")
    async with serving(bus):
        for n in range(3):
            await send_raw_event(bus, username=f"u{n}", email="e", plan="gold", tier=n)
        events = await recorder.wait_for(3)
    assert recorder.calls == [
        {"username": f"u{n}", "email": "e"} for n in range(3)]
    assert len(events) == 3
    assert plugin.seen == [("auth.user_registered", "welcome", ["plan", "tier"])] * 3
    lines = [r.getMessage() for r in caplog.records if "does not declare" in r.getMessage()]
    assert len(lines) == 2, lines  # once per API/event/parameter, not per event
    assert any("'plan'" in line for line in lines) and any("'tier'" in line for line in lines)


async def test_strict_parameters_dead_letters_an_event_with_undeclared_parameters(
        broker_name: str, make_bus: Callable[..., Bus]) -> None:
    config = memory_config(broker_name)
    config["bus"] = {"strict_parameters": True}
    plugin = UndeclaredSeen()
    bus = make_bus(config=config, plugins=[plugin])
    bus.client.register_api(AuthApi())
    recorder = KwargsRecorder()
    bus.auth.user_registered.listen(recorder, listener_name="welcome")
    transport = await event_transport(bus)
    async with serving(bus):
        await send_raw_event(bus, username="x", email="e", plan="gold")
        await bus.auth.user_registered.fire_async(username="ok", email="e")
        await recorder.wait_for(1)
        await eventually(lambda: transport.dead_letters("auth", "user_registered"))
    assert [kwargs["username"] for kwargs in recorder.calls] == ["ok"]
    (letter,) = transport.dead_letters("auth", "user_registered")
    assert "'plan'" in letter.reason and "strict_parameters" in letter.reason
    assert plugin.seen == []  # refused, not delivered
    assert await transport.lag("auth", "user_registered", "welcome") == 0


# -- error results: tracebacks only when wanted --------------------------------------------------


@pytest.mark.parametrize("send_tracebacks", [True, False])
async def test_send_tracebacks_false_sends_only_the_type_and_message(
        broker_name: str, make_bus: Callable[..., Bus], send_tracebacks: bool) -> None:
    config = memory_config(broker_name)
    config["bus"] = {"send_tracebacks": send_tracebacks}
    bus = make_bus(config=config)
    bus.client.register_api(AuthApi())
    async with serving(bus):
        with pytest.raises(RemoteError) as caught:
            await bus.auth.fail.call_async(message="no such user")
    error = caught.value
    assert (error.remote_type, error.remote_message) == ("ValueError", "no such user")
    shows_code = "Traceback" in error.remote_traceback or "apis.py" in error.remote_traceback
    assert shows_code is send_tracebacks
    if not send_tracebacks:
        assert error.remote_traceback.strip() == "ValueError: no such user"


# -- values no timer or encoder can use ---------------------------------------------------------


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -math.inf, 1e309, 0, -1, "2", True])
async def test_a_timeout_that_is_not_a_finite_positive_number_is_refused(
        make_bus: Callable[..., Bus], timeout: Any) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    with pytest.raises(InvalidArguments, match="positive number of seconds"):
        await bus.auth.check_password.call_async(username="a", password="b",
                                                 bus_options={"timeout": timeout})
    with pytest.raises(InvalidArguments, match="positive number of seconds"):
        await bus.auth.user_registered.fire_async(username="a", email="b",
                                                  bus_options={"timeout": timeout})


def self_containing_list() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def self_containing_dict() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["me"] = loop
    return loop


def deeply_nested(depth: int) -> Any:
    value: Any = "bottom"
    for n in range(depth):
        value = [value] if n % 2 else {"down": value}
    return value


@pytest.mark.parametrize("make_value", [self_containing_list, self_containing_dict,
                                        lambda: deeply_nested(100_000)],
                         ids=["list-in-itself", "dict-in-itself", "nested-100k"])
async def test_an_argument_no_encoder_can_walk_is_refused_clearly(
        make_bus: Callable[..., Bus], make_value: Callable[[], Any]) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    with pytest.raises(InvalidArguments, match="nests too deeply"):
        await bus.auth.accepts_anything.call_async(kwargs=make_value())
    with pytest.raises(InvalidArguments, match="nests too deeply"):
        await bus.auth.user_registered.fire_async(username=make_value(), email="e")


# -- text logs: one record, one line ------------------------------------------------------------


CONTROL = [chr(c) for c in (*range(0x20), 0x7F, 0x85, 0x2028, 0x2029)]


@pytest.mark.parametrize("character", CONTROL, ids=[f"U+{ord(c):04X}" for c in CONTROL])
def test_text_logs_escape_every_line_break_and_control_character(character: str) -> None:
    forged = f"check{character}2026-01-01 00:00:00,000 ERROR   bus.worker: forged"
    record = logging.LogRecord("bus.worker", logging.WARNING, __file__, 1,
                               "dropped %s() call", (forged,), None)
    record.bus = {"api_name": f"auth{character}x", "message_id": "1"}
    line = TextFormatter().format(record)
    assert len(line.splitlines()) == 1, repr(line)
    assert character not in line
    assert "forged" in line  # escaped, not dropped


def test_text_logs_keep_a_traceback_below_the_one_line_message() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        import sys
        record = logging.LogRecord("bus", logging.ERROR, __file__, 1, "failed: %s",
                                   ("a\nb",), sys.exc_info())
    text = TextFormatter().format(record)
    first, _, rest = text.partition("\n")
    assert first.endswith("failed: a\\nb")
    assert rest.startswith("Traceback")


def test_json_logs_are_one_line_whatever_the_message() -> None:
    token = current_message.set({"api_name": "a\nb"})
    try:
        record = logging.LogRecord("bus", logging.INFO, __file__, 1, "x\ny\u2028z", (), None)
        assert len(JsonFormatter().format(record).splitlines()) == 1
    finally:
        current_message.reset(token)


def test_a_flood_of_one_kind_of_trouble_logs_one_line_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    throttle = Throttle(logging.getLogger("bus.test"), interval=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="bus.test"):
        for n in range(1000):
            throttle.warning("malformed reply %d", n)
        now[0] += 10
        throttle.warning("malformed reply %d", 1000)
    assert [r.getMessage() for r in caplog.records] == [
        "malformed reply 0",
        "malformed reply 1000 (and 999 more like it in the last 10s)"]


# -- a start that fails part way leaves nothing running -------------------------------------------


class RefusingListenerPlugin:
    """Makes every listener's consumer refuse to open, as a transport with refused
    credentials does (a TransportError that retrying cannot fix)."""

    @hookimpl
    def bus_worker_started(self, client: Any, worker: Any) -> None:  # not reached
        raise AssertionError("the worker must not report started")


async def test_a_listener_that_cannot_start_stops_the_rpc_loop_it_started_with(
        make_bus: Callable[..., Bus], monkeypatch: pytest.MonkeyPatch) -> None:
    bus = make_bus(plugins=[RefusingListenerPlugin()])
    bus.client.register_api(AuthApi())
    bus.auth.user_registered.listen(EventRecorder(), listener_name="welcome")
    transport = await event_transport(bus)

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise TransportError("Redis refused the credentials")

    monkeypatch.setattr(transport, "open_consumer", refuse)
    before = set(asyncio.all_tasks())
    worker = bus.client.worker()
    with pytest.raises(TransportError, match="refused the credentials"):
        await worker.start()
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() - before if not t.done()
            and t is not asyncio.current_task()]
    assert left == [], left  # the RPC loop it had begun is gone
    assert worker not in bus.client.running_workers


async def test_an_event_this_process_does_not_know_is_never_called_undeclared(
        broker_name: str, make_bus: Callable[..., Bus], caplog: pytest.LogCaptureFixture
        ) -> None:
    """A listener of another service's API, whose definition this process lacks, with a
    handler taking fewer parameters than the sender sends: not the sender's fault, so no
    notice, and strict_parameters does not refuse it."""
    config = memory_config(broker_name)
    config["bus"] = {"strict_parameters": True}
    plugin = UndeclaredSeen()
    listener_bus = make_bus(config=config, plugins=[plugin], service_name="mailer")
    got: list[str] = []

    async def only_the_name(event: EventMessage, username: str) -> None:
        got.append(username)

    listener_bus.client.listen([("auth", "user_registered")], only_the_name,
                               listener_name="welcome")
    async with serving(listener_bus):
        await send_raw_event(listener_bus, username="ann", email="e", plan="gold")
        await eventually(lambda: got == ["ann"])
    assert plugin.seen == []
    assert not [r for r in caplog.records if "does not declare" in r.getMessage()]
