"""The shop the console how-to (docs/howto/console.md) looks at: RPCs and events with typed
parameters (so the console draws real forms), and a shipping listener that fails while the
file named by $SHOP_SHIPPING_DOWN exists, to make dead letters worth replaying.

    export BUS_CONFIG=bus.yaml REDIS_URL=redis://127.0.0.1:16500/0
    bus run                        # terminal 1: the shop
    bus web --allow-writes         # terminal 2, from another folder: the console
"""

from __future__ import annotations

import datetime as dt
import enum
import os
from pathlib import Path

import bus_core
from bus_core import Api, Event, Parameter

SHIPPING_DOWN = Path(os.environ.get("SHOP_SHIPPING_DOWN", "shipping-down"))


class Wrapping(enum.Enum):
    PLAIN = "plain"
    GIFT = "gift"


class ShopApi(Api):
    """A small shop: prices, orders and shipments."""

    ordered = Event(parameters=[Parameter("item", str), Parameter("qty", int)])
    shipped = Event(parameters=[Parameter("item", str), Parameter("qty", int)])

    class Meta:
        name = "shop"

    def price(self, item: str, qty: int = 1, wrapping: Wrapping = Wrapping.PLAIN,
              deliver_on: dt.date | None = None) -> dict:
        """The price of `qty` of `item`.

        :param item: what to buy, e.g. apple
        :param qty: how many (at least one)
        """
        total = 2.5 * qty + (1.0 if wrapping is Wrapping.GIFT else 0.0)
        return {"item": item, "qty": qty, "total": total,
                "deliver_on": deliver_on.isoformat() if deliver_on else None}

    def tag(self, tags: list[str]) -> list[str]:
        """The tags, sorted."""
        return sorted(tags)


bus = bus_core.create(service_name="shop")
bus.client.register_api(ShopApi())


async def ship(event: bus_core.EventMessage, item: str, qty: int) -> None:
    """Ship an order; fails while shipping is down (the event is then dead-lettered)."""
    if SHIPPING_DOWN.exists():
        raise RuntimeError(f"shipping is down, cannot ship {qty} x {item}")
    replay = (event.headers or {}).get("bus-replay-of")
    print(f"[ship] shipping {qty} x {item}" + (f" (replay of dead letter {replay})"
                                                 if replay else ""), flush=True)
    await bus.shop.shipped.fire_async(item=item, qty=qty)


bus.shop.ordered.listen(ship, listener_name="ship")
