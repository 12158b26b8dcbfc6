"""The orders worker: `bus run --bus orders.listeners` (with BUS_CONFIG=outbox.yaml).

It runs the outbox relay (plugins.outbox.relay: true), which publishes the order_placed
events the web app's transactions committed, and one transactional listener that makes the
order's shipment with the Django ORM. `transactional=True` runs the handler inside
`transaction.atomic()` together with the inbox mark of (listener, event id): a redelivered
or re-published event finds the mark and is acknowledged without running again.
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()

from services.orders_api import OrdersApi  # noqa: E402

import bus_core  # noqa: E402  (after django.setup(): the handler imports models)
from bus_core import EventMessage  # noqa: E402
from orders.models import Order, Shipment  # noqa: E402

bus = bus_core.create(service_name="orders")  # config: $BUS_CONFIG (outbox.yaml)
bus.client.register_api(OrdersApi())


def ship_order(event: EventMessage, order_id: int, item: str, quantity: int) -> None:
    """Runs in transaction.atomic(), with the inbox mark: once per order_placed event."""
    order = Order.objects.get(id=order_id)
    Shipment.objects.create(order=order, event_id=event.id)


bus.orders.order_placed.listen(ship_order, listener_name="ship_order", transactional=True)
