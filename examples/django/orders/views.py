"""Views of the orders app: save an order and fire its event in one transaction."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST
from shop.bus import get_bus

from orders.models import Order, Shipment

MAX_QUANTITY = 100


class TooMany(Exception):
    """An order over MAX_QUANTITY, found after the order row and its event were written."""


@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """POST item, quantity -> 201 {order, event_id}. The order row and the order_placed event
    commit together: the event is written to the outbox in this transaction, and the relay
    publishes it after the commit. An error before the commit rolls both back (400 here)."""
    item = request.POST.get("item", "").strip()
    try:
        quantity = int(request.POST.get("quantity", ""))
    except ValueError:
        quantity = 0
    if not item or quantity < 1:
        return JsonResponse({"error": "bad_request",
                             "message": "item and a positive quantity are required"},
                            status=400)
    try:
        with transaction.atomic():
            order = Order.objects.create(item=item, quantity=quantity)
            event = get_bus().orders.order_placed.fire(order_id=order.id, item=item,
                                                       quantity=quantity)
            if quantity > MAX_QUANTITY:  # a check that fails late: nothing is kept or sent
                raise TooMany(f"at most {MAX_QUANTITY} of an item per order")
    except TooMany as exc:
        return JsonResponse({"error": "bad_request", "message": str(exc)}, status=400)
    return JsonResponse({"order": {"id": order.id, "item": item, "quantity": quantity},
                         "event_id": event.id}, status=201)


@require_GET
def order_detail(request: HttpRequest, order_id: int) -> JsonResponse:
    """GET -> the order and whether the orders worker has made its shipment yet."""
    order = Order.objects.filter(id=order_id).first()
    if order is None:
        return JsonResponse({"error": "not_found", "message": f"no order {order_id}"},
                            status=404)
    shipment = Shipment.objects.filter(order=order).first()
    return JsonResponse({"order": {"id": order.id, "item": order.item,
                                   "quantity": order.quantity},
                         "shipment": None if shipment is None else {
                             "event_id": shipment.event_id}})
