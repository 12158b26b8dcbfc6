"""An order, saved by the web app, and its shipment, made by the orders worker's listener."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)
    quantity = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)


class Shipment(models.Model):
    """One per order: the transactional listener makes it once, however often the
    order_placed event is delivered (the inbox)."""

    order = models.OneToOneField(Order, on_delete=models.CASCADE, related_name="shipment")
    event_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
