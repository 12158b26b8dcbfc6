"""The text and JSON log formatters, and the context the worker puts on its lines."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable

import pytest

from bus_core import Bus
from bus_core.config import BUS_DEFAULTS, config_schema, validate_document
from bus_core.logs import JsonFormatter, TextFormatter, configure, formatter
from tests.apis import AuthApi
from tests.helpers import serving

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
