"""The API of the outbox tests (also imported by their subprocess scripts)."""

from __future__ import annotations

from bus_core import Api, Event, Parameter


class ShopApi(Api):
    """Orders: one event per line of an order, `position` its place in the transaction."""

    order_placed = Event(parameters=[Parameter("order_id", int), Parameter("position", int)])

    class Meta:
        name = "shop"


ORDERS_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.orders (order_id bigint PRIMARY KEY, lines int NOT NULL);
CREATE TABLE IF NOT EXISTS {schema}.handled (
    id bigserial PRIMARY KEY, listener text NOT NULL, message_id text NOT NULL,
    order_id bigint NOT NULL, position int NOT NULL);
"""
