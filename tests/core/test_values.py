"""Values on the wire: Lightbus-compatible JSON forms, and casting back by type hints."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid
from decimal import Decimal
from typing import Any, Literal, NamedTuple, Optional, TypedDict

import pytest

from bus_core import WireError
from bus_core.default_plugins.json_serializer import JsonSerializer
from bus_core.values import from_wire, to_wire, wire_problem


class Size(enum.Enum):
    S = 1
    L = 3


@dataclasses.dataclass
class Inner:
    when: dt.date
    tags: list[str]


@dataclasses.dataclass
class Outer:
    inner: Inner
    ratio: float = 1.0


class Pair(NamedTuple):
    left: int
    right: str


class Movie(TypedDict):
    title: str
    year: int


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents

    def __to_bus__(self) -> int:
        return self.cents

    @classmethod
    def __from_bus__(cls, value: int) -> Money:
        return cls(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and other.cents == self.cents


CASES: list[tuple[Any, Any, Any]] = [
    # (python value, expected wire form, hint to cast back with)
    (dt.datetime(2021, 3, 30, 12, 0, tzinfo=dt.timezone.utc), "2021-03-30T12:00:00+00:00",
     dt.datetime),
    (dt.datetime(2021, 3, 30, 12, 0), "2021-03-30T12:00:00", dt.datetime),
    (dt.date(2021, 3, 30), "2021-03-30", dt.date),
    (dt.time(8, 15, 30), "08:15:30", dt.time),
    (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678",
     uuid.UUID),
    (Decimal("-10.50"), "-10.50", Decimal),
    (b"\x00\xffbinary", "AP9iaW5hcnk=", bytes),
    (Size.L, 3, Size),
    ({"a", "b"}, None, set[str]),
    ((1, "x"), [1, "x"], tuple[int, str]),
    ((1, 2, 3), [1, 2, 3], tuple[int, ...]),
    (Pair(1, "r"), {"left": 1, "right": "r"}, Pair),
    (Outer(Inner(dt.date(2020, 1, 1), ["t"])), {"inner": {"when": "2020-01-01", "tags": ["t"]},
                                                 "ratio": 1.0}, Outer),
    ({"title": "Heat", "year": 1995}, {"title": "Heat", "year": 1995}, Movie),
    ({"k": Decimal("1.5")}, {"k": "1.5"}, dict[str, Decimal]),
    (Money(250), 250, Money),
    (None, None, Optional[int]),  # noqa: UP045  (users still write Optional)
    (5, 5, Optional[int]),  # noqa: UP045
    ("on", "on", Literal["on", "off"]),
    ([dt.date(2020, 1, 2)], ["2020-01-02"], list[dt.date]),
    (3 + 4j, "(3+4j)", complex),
    ("ü∑ß 😀 \ud800", "ü∑ß 😀 \ud800", str),
]


@pytest.mark.parametrize(("value", "wire", "hint"), CASES,
                         ids=[type(c[0]).__name__ + str(i) for i, c in enumerate(CASES)])
def test_round_trip_through_json(value: Any, wire: Any, hint: Any):
    encoded = to_wire(value)
    if wire is not None:
        assert encoded == wire
    serializer = JsonSerializer()
    received = serializer.loads(serializer.dumps(encoded))
    assert from_wire(received, hint) == value


def test_json_matches_the_lightbus_encoder():
    data = JsonSerializer().dumps({"b": "é", "a": [1, True, None]})
    assert data == b'{"a": [1, true, null], "b": "\\u00e9"}'  # sorted keys, ASCII escapes


def test_nan_is_refused_because_no_peer_can_read_it():
    with pytest.raises(ValueError):
        JsonSerializer().dumps(float("nan"))


def test_unsendable_values_are_named():
    with pytest.raises(WireError, match="cannot send a value of type object"):
        to_wire(object())


@pytest.mark.parametrize(("value", "hint", "expected"), [
    ("abc", int, "expected int, got 'abc'"),
    ("yesterday", dt.date, "expected date"),
    ("not base64!", bytes, "expected bytes"),
    (7, Size, "one of [1, 3]"),
    ({"left": 1}, Pair, "expected Pair"),
    ("maybe", Literal["on", "off"], "one of"),
    ("x", Optional[int], "expected int"),  # noqa: UP045
    (1, str, "expected str"),
    (True, int, "expected int"),
    ([1], dict[str, int], "an object"),
])
def test_values_that_do_not_fit_the_hint_are_refused(value: Any, hint: Any, expected: str):
    with pytest.raises(WireError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        from_wire(value, hint)


def test_unannotated_values_pass_through():
    payload = {"any": [1, {"x": None}]}
    assert from_wire(payload, Any) is payload


def test_wire_problem_finds_types_that_cannot_travel():
    class Opaque:
        pass

    assert wire_problem(int) is None
    assert wire_problem(Outer) is None
    assert wire_problem(Money) is None
    assert "Opaque" in (wire_problem(list[Opaque]) or "")
    assert "Opaque" in (wire_problem(dict[str, Opaque]) or "")


def test_large_binary_round_trips():
    blob = bytes(range(256)) * 1000
    wire = json.loads(json.dumps(to_wire(blob)))
    assert from_wire(wire, bytes) == blob


def test_a_bad_decimal_says_so_plainly():
    with pytest.raises(WireError) as refused:
        from_wire("x", Decimal)
    assert str(refused.value) == "expected Decimal, got 'x' (not a decimal number)"
    assert from_wire(1.5, Decimal) == Decimal("1.5")  # a peer's number is taken as written
