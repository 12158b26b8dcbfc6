"""The text and JSON log formatters, and the context the worker puts on its lines."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable

import pytest

from bus_core import Bus, hookimpl
from bus_core.config import BUS_DEFAULTS, config_schema, validate_document
from bus_core.logs import (
    JsonFormatter,
    TextFormatter,
    about,
    configure,
    current_message,
    formatter,
)
from bus_core.messages import EventMessage
from tests.apis import AuthApi
from tests.conftest import Collect
from tests.helpers import eventually, serving

RPC_CONTEXT = {"bus": {"api_name": "auth", "message_id": "m1",
                       "procedure_name": "check_password"}}


def record(message: str = "it failed", extra: dict[str, object] | None = None,
           exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("bad")
        except ValueError:
            info = sys.exc_info()
    made = logging.LogRecord("bus.worker", logging.WARNING, __file__, 1, message, (), info)
    for key, value in (extra or {}).items():
        setattr(made, key, value)
    return made


def test_text_lines_carry_a_suffix_about_the_message() -> None:
    line = TextFormatter().format(record(extra=RPC_CONTEXT))
    assert line.endswith("bus.worker: it failed [api=auth rpc=check_password id=m1]")
    assert "WARNING" in line


def test_text_lines_about_nothing_have_no_suffix() -> None:
    assert TextFormatter().format(record()).endswith("bus.worker: it failed")


def test_the_text_suffix_stays_on_the_first_line_above_a_traceback() -> None:
    first, *rest = TextFormatter().format(record(extra=RPC_CONTEXT, exc=True)).splitlines()
    assert first.endswith("[api=auth rpc=check_password id=m1]")
    assert rest[-1] == "ValueError: bad"


def test_json_lines_carry_the_fields() -> None:
    context = {"bus": {"api_name": "auth", "message_id": "m2", "event_name": "registered",
                       "listener_name": "welcome"}}
    entry = json.loads(JsonFormatter().format(record(extra=context, exc=True)))
    assert entry["level"] == "WARNING" and entry["logger"] == "bus.worker"
    assert entry["message"] == "it failed" and entry["time"].endswith("+00:00")
    assert (entry["api_name"], entry["event_name"], entry["message_id"]) == (
        "auth", "registered", "m2")
    assert entry["listener_name"] == "welcome"
    assert "ValueError: bad" in entry["exception"]


def test_formatter_by_name() -> None:
    assert isinstance(formatter("text"), TextFormatter)
    assert isinstance(formatter("json"), JsonFormatter)
    with pytest.raises(ValueError, match="xml"):
        formatter("xml")


def test_configure_installs_one_handler_on_the_root_logger() -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        configure("DEBUG", "json")
        configure("WARNING", "json")
        handlers = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
        assert len(handlers) == 1 and root.level == logging.WARNING
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_log_format_is_in_the_config() -> None:
    assert BUS_DEFAULTS["log_format"] == "text"
    schema = config_schema()
    validate_document({"bus": {"log_format": "json"}}, schema)
    with pytest.raises(Exception, match="log_format"):
        validate_document({"bus": {"log_format": "xml"}}, schema)


async def test_a_failing_rpc_is_logged_with_its_context(make_bus: Callable[..., Bus],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    server, caller = make_bus(), make_bus()
    server.client.register_api(AuthApi())
    async with serving(server):
        with pytest.raises(Exception):  # noqa: B017 - any remote error
            await caller.auth.fail.call_async(message="no")
    (line,) = [r for r in caplog.records if r.name == "bus.worker" and "raised" in r.getMessage()]
    context = line.bus  # type: ignore[attr-defined]
    assert context["api_name"] == "auth" and context["procedure_name"] == "fail"
    assert context["message_id"]
    assert "[api=auth " in TextFormatter().format(line)


class LogsAround:
    """A plugin logging from inside the client's send path, as a transport or plugin might."""

    @hookimpl
    def bus_before_rpc_call(self, message):
        logging.getLogger("test.plugin").info("plugin saw a call")

    @hookimpl
    def bus_after_event_fire(self, message):
        logging.getLogger("test.plugin").info("plugin saw a fire")


async def test_client_side_lines_carry_the_message_they_are_about(
        make_bus: Callable[..., Bus], collected: Collect) -> None:
    server, caller = make_bus(), make_bus(plugins=[LogsAround()])
    server.client.register_api(AuthApi())
    caller.client.register_api(AuthApi())
    async with serving(server):
        await caller.auth.check_password.call_async(username="a", password="b")
        fired = await caller.auth.user_registered.fire_async(username="a", email="a@x")
    logging.getLogger("test.plugin").info("after everything")
    call = collected.about("plugin saw a call")
    assert (call["api_name"], call["procedure_name"]) == ("auth", "check_password")
    assert call["message_id"] == collected.about("calling auth.check_password()")[
        "message_id"]
    assert collected.about("auth.check_password() answered in")["message_id"] == \
        call["message_id"]
    fire = collected.about("plugin saw a fire")
    assert fire == {"api_name": "auth", "event_name": "user_registered",
                    "message_id": fired.id}
    assert collected.about("after everything") == {}  # the context ends with the call


async def test_handler_code_logs_with_the_message_it_handles(
        make_bus: Callable[..., Bus], collected: Collect) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    handled: list[str] = []

    def sync_handler(event: EventMessage, username: str) -> None:  # runs in the pool
        logging.getLogger("test.handler").info("sync handler for %s", username)
        handled.append(username)

    async def async_handler(event: EventMessage, username: str) -> None:
        logging.getLogger("test.handler").info("async handler for %s", username)
        handled.append(username)

    bus.auth.user_registered.listen(sync_handler, listener_name="sync_one")
    bus.auth.user_registered.listen(async_handler, listener_name="async_one")
    async with serving(bus):
        fired = await bus.auth.user_registered.fire_async(username="ada", email="a@x")
        await eventually(lambda: len(handled) == 2)
    for text, listener in (("sync handler for ada", "sync_one"),
                           ("async handler for ada", "async_one")):
        assert collected.about(text) == {"api_name": "auth", "event_name": "user_registered",
                                         "message_id": fired.id, "listener_name": listener}


def test_bus_formatters_read_the_current_message_themselves() -> None:
    message = EventMessage(api_name="auth", event_name="user_registered", kwargs={})
    token = about(message)
    try:
        line = TextFormatter().format(record("handled"))
    finally:
        current_message.reset(token)
    assert line.endswith(f"handled [api=auth event=user_registered id={message.id}]")
    assert TextFormatter().format(record("handled")).endswith("handled")
