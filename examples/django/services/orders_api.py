"""The orders API: the event the web app fires when an order is saved, declared once.

The web app fires it from inside the transaction that saves the order, so with the outbox
(`outbox.yaml`) it is published exactly when the order commits. The orders worker
(`bus run --bus orders.listeners`) listens to it transactionally.
"""

from __future__ import annotations

from bus_core import Api, Event, Parameter


class OrdersApi(Api):
    """Orders placed in the shop."""

    order_placed = Event(parameters=[
        Parameter("order_id", int),
        Parameter("item", str),
        Parameter("quantity", int),
    ])

    class Meta:
        name = "orders"
