"""The compiled message path says and does exactly what the general one does: for every
declared type and every kind of value, the plan a fire or call uses gives the same wire
form (or the same error) as checking each value in full, and a listener's plan casts as the
general cast does."""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import math
import typing
import uuid
from decimal import Decimal
from typing import Any, Literal

import pytest

from bus_core import EventMessage, Parameter, RpcMessage
from bus_core.api import MISSING
from bus_core.errors import InvalidArguments, WireError
from bus_core.message_path import (
    HandlerArguments,
    OutgoingCall,
    OutgoingEvent,
    ServedRpc,
    cast_kwargs,
    check_arguments,
    passing_types,
    wire_kwargs,
)


class Colour(enum.Enum):
    RED = "red"


HINTS: list[Any] = [Any, object, str, int, float, bool, str | None, int | None,
                    float | None, str | int, Literal["a", "b"], list[int], dict[str, int],
                    dt.datetime, uuid.UUID, Decimal, Colour, bytes]
VALUES: list[Any] = ["a", "", "b", 0, 7, -1, True, False, 1.5, 0.0, math.inf, math.nan, None,
                     [1, 2], {"k": 1}, dt.datetime(2026, 1, 1), uuid.UUID(int=1),
                     Decimal("1.5"), Colour.RED, b"x", object()]


def _event(kwargs: dict[str, Any]) -> EventMessage:
    return EventMessage(api_name="api", event_name="happened", kwargs=kwargs)


def _call(kwargs: dict[str, Any]) -> RpcMessage:
    return RpcMessage(api_name="api", procedure_name="run", kwargs=kwargs)


def _outcome(run: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", run(*args)
    except (InvalidArguments, WireError) as exc:
        return type(exc).__name__, str(exc)


class _Event:
    def __init__(self, parameters: tuple[Parameter, ...]) -> None:
        self.name = "happened"
        self.parameters = parameters


@pytest.mark.parametrize("hint", HINTS, ids=str)
def test_a_fire_converts_and_refuses_every_value_as_the_general_path(hint: Any) -> None:
    parameters = (Parameter("value", hint), Parameter("note", str, "none"))
    outgoing = OutgoingEvent("api", _Event(parameters), 1)
    for value in VALUES:
        compiled = _outcome(outgoing.wire, {"value": value})
        general = _outcome(wire_kwargs, "api.happened", {"note": "none", "value": value},
                           parameters)
        assert compiled == general, (hint, value)


@pytest.mark.parametrize("hint", HINTS, ids=str)
def test_a_listener_casts_every_value_as_the_general_cast(hint: Any) -> None:
    arguments = HandlerArguments({"value": hint}, frozenset({"value"}), frozenset({"value"}),
                                 False)
    for value in VALUES:
        compiled = _outcome(arguments.select, _event({"value": value}), "l")
        general = _outcome(cast_kwargs, "api.happened", {"value": value}, {"value": hint})
        assert repr(compiled) == repr(general), (hint, value)  # repr: NaN is not NaN
        if compiled[0] == "ok":
            assert type(compiled[1]["value"]) is type(general[1]["value"])


class _Rpc:
    def __init__(self, parameters: tuple[Parameter, ...], accepts_extra: bool) -> None:
        self.parameters = parameters
        self.accepts_extra = accepts_extra


SHAPES = [{}, {"a": 1}, {"b": "x"}, {"a": 1, "b": "x"}, {"a": 1, "c": 2},
          {"a": 1, "b": "x", "c": 2}, {"c": 2}]


@pytest.mark.parametrize("accepts_extra", [False, True])
def test_every_shape_of_arguments_is_judged_as_the_general_check(accepts_extra: bool) -> None:
    parameters = (Parameter("a", int), Parameter("b", str, "default"))
    rpc = _Rpc(parameters, accepts_extra)
    call = OutgoingCall("api", "run", rpc)
    served = ServedRpc(print, False, rpc, {"a": int, "b": str})
    for kwargs in SHAPES:
        general = _outcome(check_arguments, "api.run()", parameters, accepts_extra, kwargs)
        assert _outcome(call.wire, kwargs)[0] == general[0], kwargs
        if general[0] != "ok":
            assert _outcome(call.wire, kwargs) == general
            assert _outcome(served.arguments, _call(kwargs)) == general
        else:
            assert served.arguments(_call(dict(kwargs))) == kwargs


def test_a_handler_gets_only_the_parameters_it_names_and_is_told_what_is_missing() -> None:
    arguments = HandlerArguments({"n": int}, frozenset({"n", "m"}), frozenset({"n"}), False)
    assert arguments.select(_event({"n": 1, "extra": 2}), "l") == {"n": 1}
    with pytest.raises(WireError, match="lacks parameter\\(s\\) n that listener 'l'"):
        arguments.select(_event({"m": 1}), "l")
    taking_all = HandlerArguments({}, frozenset(), frozenset(), True)
    assert taking_all.select(_event({"x": 1}), "l") == {"x": 1}


def test_only_exact_and_optional_exact_hints_skip_the_check() -> None:
    assert passing_types(typing.Any) is None and passing_types(object) is None
    assert passing_types(str) == {str}
    assert passing_types(int | None) == {int, type(None)}
    for hint in (Literal["a"], list[int], dt.datetime, Colour, str | list[int]):
        assert passing_types(hint) == frozenset(), hint


def test_defaults_are_filled_in_and_converted_like_given_values() -> None:
    when = dt.datetime(2026, 1, 1)
    parameters = (Parameter("a", int), Parameter("at", dt.datetime, when),
                  Parameter("tag", str, MISSING))
    outgoing = OutgoingEvent("api", _Event(parameters), 3)
    assert outgoing.wire({"a": 1, "tag": "t"}) == {"at": when.isoformat(), "a": 1, "tag": "t"}
    assert outgoing.version == 3
    for combination in itertools.product([1, "x"], ["t", 2]):
        kwargs = dict(zip(("a", "tag"), combination, strict=True))
        assert _outcome(outgoing.wire, kwargs) == _outcome(
            wire_kwargs, "api.happened", {"at": when, **kwargs}, parameters)


def test_the_quick_event_decoding_decodes_exactly_as_the_general_one() -> None:
    from bus_core.messages import _event_from_any_blob, event_from_blob

    good = {"metadata": {"id": "e-1", "api_name": "auth", "event_name": "registered",
                         "version": 2}, "kwargs": {"username": "a"}}
    _same_decoding(event_from_blob, _event_from_any_blob, _variants(good, {
        "id": [None, "", 7, "a\nb", "x" * 300], "api_name": [None, "", "bad name", 3, "a.b"],
        "event_name": [None, "", "a.b", "ok_name"],
        "version": [None, "3", 2.0, True, "x", [], 10 ** 30]}))


def _outcome_any(run: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", run(*args)
    except Exception as exc:
        return type(exc).__name__, str(exc)


def vars_of(message: EventMessage) -> dict[str, Any]:
    return {name: getattr(message, name) for name in type(message).__slots__}


def _variants(good: dict[str, Any], replacements: dict[str, list[Any]]) -> list[Any]:
    variants: list[Any] = [good, {**good, "headers": {"traceparent": "00-x"}},
                           {**good, "headers": {"k": 1}}, {"metadata": good["metadata"]},
                           [], "text", None, {"metadata": []}, {**good, "kwargs": []}]
    for key, values in replacements.items():
        for value in values:
            metadata = dict(good["metadata"])
            if value is None:
                del metadata[key]
            else:
                metadata[key] = value
            variants.append({**good, "metadata": metadata})
    return variants


def _same_decoding(quick_decode: Any, general_decode: Any, blobs: list[Any]) -> None:
    for blob in blobs:
        quick = _outcome_any(quick_decode, blob)
        general = _outcome_any(general_decode, blob)
        if quick[0] == "ok":
            quick = ("ok", vars_of(quick[1]))
            general = ("ok", vars_of(general[1]))
        assert quick == general, blob


def test_the_quick_call_and_result_decoding_decode_exactly_as_the_general_ones() -> None:
    from bus_core.messages import (
        _result_from_any_blob,
        _rpc_from_any_blob,
        result_from_blob,
        rpc_from_blob,
    )

    call = {"metadata": {"id": "c-1", "api_name": "auth", "procedure_name": "check",
                         "return_path": "redis+key://bus:reply:p:" + "0" * 32},
            "kwargs": {"a": 1}}
    _same_decoding(rpc_from_blob, _rpc_from_any_blob, _variants(call, {
        "id": [None, "", 7, "a\nb", "x" * 300], "api_name": [None, "", "bad name", 3],
        "procedure_name": [None, "", "a.b"], "return_path": [None, "", 5, "x"]}))
    result = {"metadata": {"id": "r-1", "rpc_message_id": "c-1", "error": False},
              "kwargs": {"result": [1, 2]}}
    _same_decoding(result_from_blob, _result_from_any_blob, _variants(result, {
        "id": [None, "", 7, "a\nb"], "rpc_message_id": [None, "", 3, "x" * 300],
        "error": [None, True, 1, "yes", 0], "trace": ["Traceback ...", 5, ""]}))


async def test_an_event_learns_its_declaration_once_its_api_becomes_known(make_bus) -> None:
    """A listener of an API this process does not know cannot call a parameter undeclared;
    once the API is registered here (or described by a plugin), it can, without a restart."""
    import asyncio

    from bus_core import hookimpl
    from tests.apis import AuthApi
    from tests.helpers import event_transport, serving

    reported: list[list[str]] = []

    class Watch:
        @hookimpl
        def bus_on_undeclared_parameters(self, client: Any, message: Any, listener_name: str,
                                         parameter_names: list[str]) -> None:
            reported.append(parameter_names)

    bus = make_bus(plugins=[Watch()])
    heard: list[str] = []
    bus.client.listen("auth.user_registered",
                      lambda event, **kwargs: heard.append(kwargs["username"]),
                      listener_name="welcome")

    async def send(username: str) -> None:
        transport = await event_transport(bus)
        await transport.send_event(EventMessage(
            api_name="auth", event_name="user_registered",
            kwargs={"username": username, "email": "e", "plan": "gold"}))
        while username not in heard:
            await asyncio.sleep(0.005)

    async with serving(bus):
        await send("before")
        assert reported == []  # nothing is declared: nothing is undeclared
        bus.client.register_api(AuthApi())
        await send("after")
    assert reported == [["plan"]]
