"""The API of the example's `orders` service: typed, documented, one RPC and one event."""

from __future__ import annotations

import dataclasses
import enum
import itertools
from typing import Annotated

from bus_core import Api, Event, Parameter


class Shipping(enum.Enum):
    STANDARD = "standard"
    EXPRESS = "express"


@dataclasses.dataclass
class Line:
    sku: str
    quantity: int = 1


@dataclasses.dataclass
class Receipt:
    order_id: int
    total_cents: int


PRICES = {"tea": 450, "mug": 1200}


class OrdersApi(Api):
    """Orders: take them, announce them."""

    order_placed = Event(parameters=[
        Parameter("order_id", int),
        Parameter("customer", str),
        Parameter("total_cents", Annotated[int, "Order total in cents"]),
        Parameter("express", bool, default=False),
    ])

    class Meta:
        name = "orders"

    def __init__(self) -> None:
        self.ids = itertools.count(1001)
        self.placed = 0  # calls that reached the procedure

    def place_order(self, customer: str, lines: list[Line],
                    shipping: Shipping = Shipping.STANDARD,
                    note: str | None = None) -> Receipt:
        """Place an order and return its receipt.

        :param customer: the customer's account name
        :param lines: what to send
        :param shipping: how fast to send it
        :param note: a message for the packers
        """
        self.placed += 1
        total = sum(PRICES.get(line.sku, 0) * line.quantity for line in lines)
        return Receipt(order_id=next(self.ids), total_cents=total)
