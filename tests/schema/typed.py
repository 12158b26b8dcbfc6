"""Types and APIs the schema tests share: one of each kind the type mapping knows, and a
small typed API (`shop`) whose RPCs and events are validated in every direction."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import typing
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal, NamedTuple, Optional, TypedDict, Union

from bus_core import Api, Event, Parameter


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


class Shade(str, enum.Enum):
    LIGHT = "light"
    DARK = "dark"


@dataclasses.dataclass
class Money:
    amount: Decimal
    currency: str = "EUR"


class Point(NamedTuple):
    x: float
    y: float = 0.0


class Profile(TypedDict):
    name: str
    age: int


class Nicknames(TypedDict, total=False):
    nick: str
    aliases: list[str]


class Celsius:
    """Travels as a number through `__to_bus__`, comes back through `__from_bus__`."""

    def __init__(self, degrees: float) -> None:
        self.degrees = degrees

    def __to_bus__(self) -> float:
        return self.degrees

    @classmethod
    def __from_bus__(cls, value: Any) -> Celsius:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"degrees must be a number, got {value!r}")
        return cls(float(value))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Celsius) and other.degrees == self.degrees

    def __hash__(self) -> int:
        return hash(self.degrees)


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    lines: list[Money]
    placed: dt.datetime
    where: Point | None = None
    level: Level = Level.LOW
    tags: dict[str, list[int]] = dataclasses.field(default_factory=dict)


UID = uuid.UUID("12345678-1234-5678-1234-567812345678")
WHEN = dt.datetime(2024, 2, 29, 13, 14, 15, 123456)
WHEN_UTC = dt.datetime(2024, 2, 29, 13, 14, 15, tzinfo=dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class Case:
    """One hint: values that must survive the trip, and wire values its schema refuses."""

    label: str
    hint: Any
    good: tuple[Any, ...]
    bad: tuple[Any, ...]


CASES: tuple[Case, ...] = (
    Case("str", str, ("", "héllo ☃", "123"), (1, None, True, ["a"])),
    Case("int", int, (0, -7, 2**40), ("1", 1.5, True, None)),
    Case("float", float, (0.0, 1.5, -2.25, 1e300), ("1.0", True, None, [1.0])),
    Case("bool", bool, (True, False), (0, 1, "true", None)),
    Case("None", None, (None,), (0, "", False, [])),
    Case("NoneType", type(None), (None,), (0, "null")),
    Case("bytes", bytes, (b"", b"\x00\xffbus"), (1, None, [1, 2])),
    Case("Decimal", Decimal,
         (Decimal("0"), Decimal("-12.50"), Decimal("3.14159"), Decimal("1E-7"),
          Decimal("1E+3"), Decimal("123456789012345678901234567890")),
         ("abc", 1.5, 2, "1.2.3", "", " 1", None)),
    Case("UUID", uuid.UUID, (UID, uuid.UUID(int=0)), (123, None, ["x"])),
    Case("datetime", dt.datetime, (WHEN, WHEN_UTC), (1709212455, None, {"t": 1})),
    Case("date", dt.date, (dt.date(2024, 2, 29),), (20240229, None)),
    Case("time", dt.time, (dt.time(13, 14, 15), dt.time(0, 0, 0, 5)), (46455, None)),
    Case("Enum", Level, (Level.LOW, Level.HIGH), (3, "LOW", True, None, 1.5)),
    Case("str Enum", Shade, (Shade.LIGHT, Shade.DARK), ("grey", "LIGHT", 1, None)),
    Case("list[int]", list[int], ([], [1, 2, 3]), ([1, "a"], "12", {"a": 1}, [1.5], None)),
    Case("typing.List[str]", typing.List[str], (["a"],), ([1],)),  # noqa: UP006
    Case("bare list", list, ([], [1, "a", None]), ("x", {}, None)),
    Case("set[str]", set[str], (set(), {"a", "b"}), (["a", 1], "ab")),
    Case("frozenset[int]", frozenset[int], (frozenset({1, 2}),), ([1, "2"],)),
    Case("tuple[int, str]", tuple[int, str], ((1, "a"), (-1, "")),
         ([1], [1, "a", "b"], ["a", 1], {"0": 1}, [])),
    Case("tuple[int, ...]", tuple[int, ...], ((), (1, 2, 3)), ([1, "a"], [None], "1")),
    Case("bare tuple", tuple, ((), (1, "a")), ("x", {"a": 1})),
    Case("dict[str, int]", dict[str, int], ({}, {"a": 1, "b": -2}),
         ({"a": "x"}, [1], {"a": None}, "a")),
    Case("bare dict", dict, ({}, {"a": [1, {"b": None}]}), ([], "x", None)),
    Case("Mapping[str, float]", Mapping[str, float], ({"pi": 3.14},), ({"pi": "3.14"}, [])),
    Case("typing.Dict", typing.Dict[str, bool], ({"on": True},), ({"on": 1},)),  # noqa: UP006
    Case("Optional[int]", Optional[int], (None, 3), ("3", 1.5, [])),  # noqa: UP045
    Case("int | None", int | None, (None, 0), ("0", False)),
    Case("Union[int, str]", Union[int, str], (1, "a"), (1.5, None, [1])),  # noqa: UP007
    Case("Union[Point, Money]", Union[Point, Money], (Point(1.0, 2.0),),  # noqa: UP007
         ({"x": "a"}, {"amount": 1}, None)),
    Case("Literal[str]", Literal["a", "b"], ("a", "b"), ("c", 1, None)),
    Case("Literal[int]", Literal[1, 2], (1, 2), (3, "1", True, 1.5)),
    Case("Literal mixed", Literal["x", 0], ("x", 0), (False, "0", 1)),
    Case("Any", Any, (1, "a", None, [1, {"x": 2.5}], {"k": [True]}), ()),
    Case("dataclass", Money, (Money(Decimal("1.50")), Money(Decimal("-3"), "USD")),
         ({"currency": "EUR"}, {"amount": 1.5}, {"amount": "1", "extra": 1},
          {"amount": "1", "currency": 5}, ["1", "EUR"], None)),
    Case("NamedTuple", Point, (Point(1.0, 2.5), Point(3.5)),
         ({"x": "a"}, [1.0, 2.0], {"y": 1.0}, {"x": 1.0, "z": 2.0})),
    Case("TypedDict", Profile, ({"name": "ann", "age": 3},),
         ({"name": "ann"}, {"name": "ann", "age": "3"}, {"name": "a", "age": 1, "x": 0})),
    Case("TypedDict total=False", Nicknames, ({}, {"nick": "n", "aliases": ["a"]}),
         ({"nick": 1}, {"aliases": "a"}, {"other": "x"})),
    Case("__to_bus__", Celsius, (Celsius(21.5), Celsius(-40.0)), ("21.5", None, [21.5])),
    Case("nested dataclass", Order,
         (Order(UID, [Money(Decimal("1.10")), Money(Decimal("2"), "GBP")], WHEN_UTC,
                Point(1.0, 2.0), Level.HIGH, {"a": [1, 2], "b": []}),
          Order(UID, [], WHEN)),
         ({"id": str(UID), "lines": [{"amount": 1.1}], "placed": WHEN.isoformat()},
          {"id": str(UID), "lines": [], "placed": WHEN.isoformat(), "level": 3},
          {"id": str(UID), "lines": [], "placed": WHEN.isoformat(), "where": {"x": "1"}},
          {"id": str(UID), "lines": [], "placed": WHEN.isoformat(), "tags": {"a": ["1"]}},
          {"id": str(UID), "lines": []})),
    Case("list[Point | None]", list[Point | None],
         ([Point(1.0, 1.0), None],), ([{"x": 1.0, "y": "1"}], [1.0])),
    Case("dict[str, list[Level]]", dict[str, list[Level]],
         ({"a": [Level.LOW, Level.HIGH]},), ({"a": [3]}, {"a": 1})),
    Case("tuple[Money, list[Shade]]", tuple[Money, list[Shade]],
         ((Money(Decimal("1")), [Shade.DARK]),), ([{"amount": "1"}, ["blue"]],)),
)


class ShopApi(Api):
    """A small shop: typed RPCs and events, validated every way."""

    order_placed = Event(parameters=[Parameter("order_id", uuid.UUID),
                                     Parameter("total", Decimal),
                                     Parameter("note", str, default="")])
    stock_changed = Event(parameters=("sku", "count"))

    class Meta:
        name = "shop"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.bad_total: Any = 2.5  # what `sloppy_total` returns: a float, not a Decimal

    def price(self, sku: str, quantity: int = 1) -> Decimal:
        """The price of `quantity` items.

        :param sku: the stock keeping unit
        :param quantity: how many
        """
        self.calls.append(("price", {"sku": sku, "quantity": quantity}))
        return Decimal("2.50") * quantity

    def total(self, amount: Decimal, money: Money | None = None) -> Decimal:
        """Echo an amount.

        Args:
            amount: an exact amount
            money: the same, with a currency
        """
        self.calls.append(("total", {"amount": amount, "money": money}))
        return amount

    def sloppy_total(self) -> Decimal:
        self.calls.append(("sloppy_total", {}))
        return self.bad_total  # type: ignore[no-any-return]
