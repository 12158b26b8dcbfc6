"""APIs the tests share."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import NamedTuple

from bus_core import Api, Event, Parameter


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Address:
    street: str
    number: int


class Point(NamedTuple):
    x: float
    y: float


@dataclasses.dataclass
class OrderPlaced:
    order_id: uuid.UUID
    total: Decimal
    note: str = ""


class AuthApi(Api):
    """Accounts."""

    user_registered = Event(parameters=("username", "email"))
    user_deleted = Event(parameters=[Parameter("username", str),
                                     Parameter("hard", bool, default=False)])

    class Meta:
        name = "auth"

    def check_password(self, username: str, password: str) -> bool:
        return username == "admin" and password == "secret"

    async def slow_echo(self, value: str, delay: float = 0.0) -> str:
        await asyncio.sleep(delay)
        return value

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def accepts_anything(self, **kwargs: object) -> dict:
        return dict(kwargs)


class TypesApi(Api):
    """Every wire type, both ways."""

    order_placed = Event(OrderPlaced)

    class Meta:
        name = "my_company.types"

    def echo(self, when: dt.datetime, day: dt.date, at: dt.time, ident: uuid.UUID,
             amount: Decimal, blob: bytes, colour: Colour, address: Address, point: Point,
             tags: set[str], pair: tuple[int, str], maybe: int | None = None
             ) -> dict:
        return {
            "when": when, "day": day, "at": at, "ident": ident, "amount": amount, "blob": blob,
            "colour": colour, "address": address, "point": point, "tags": sorted(tags),
            "pair": pair, "maybe": maybe,
            "types": [type(v).__name__ for v in (when, day, at, ident, amount, blob, colour,
                                                  address, point, tags, pair)],
        }

    def address_of(self, street: str) -> Address:
        return Address(street=street, number=7)
