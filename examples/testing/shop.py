"""The code under test of docs/howto/testing.md: a shop that asks the auth service to check a
password (an RPC) and announces each order (an event)."""

from __future__ import annotations

import uuid

from bus_core import Api, Bus, Event, Parameter


class AuthApi(Api):
    """The auth service's API (in real life, imported from that service's package)."""

    class Meta:
        name = "auth"

    def check_password(self, username: str, password: str) -> bool:
        """True when `password` is right for `username`."""
        raise NotImplementedError("served by the auth service")


class ShopApi(Api):
    """This service's API: it fires `order_placed`."""

    order_placed = Event(parameters=[
        Parameter("order_id", str),
        Parameter("username", str),
        Parameter("total", float),
    ])

    class Meta:
        name = "shop"


def place_order(bus: Bus, username: str, password: str, total: float) -> str | None:
    """Place an order for `username` if the password is right; return its id (or None)."""
    if not bus.auth.check_password(username=username, password=password):
        return None
    order_id = uuid.uuid4().hex
    bus.shop.order_placed.fire(order_id=order_id, username=username, total=total)
    return order_id
