"""The web app's bus client: one per process, shared by the request threads, made on first
use (`ShopConfig.ready()` makes it at start-up, so a bad config stops the boot).

Creating a client connects nothing; its first call starts a background event-loop thread and
opens Redis connections. A gunicorn worker forked from a master that already used the client
(`--preload`) starts its own thread and connections on its first call: Bus forgets the
parent's in a forked child.
"""

from __future__ import annotations

import logging
import os
import threading

from services.accounts_api import AccountsApi
from services.orders_api import OrdersApi

import bus_core
from bus_core import Bus

logger = logging.getLogger("shop.bus")

_lock = threading.Lock()
_bus: Bus | None = None
_closed = False


def get_bus() -> Bus:
    """This process's bus client, created on first use (thread-safe: gthread workers call it
    from several request threads at once)."""
    global _bus
    bus = _bus
    if bus is not None:
        return bus
    with _lock:
        if _closed:
            raise RuntimeError("the bus client of this process was closed at worker exit")
        if _bus is None:
            # service_name: the web app's own name; config from $BUS_CONFIG.
            _bus = bus_core.create(service_name="shop")
            # Registered to fire accounts.user_signed_up and to check arguments before
            # sending; this process runs no worker, so it serves no RPCs.
            _bus.client.register_api(AccountsApi())
            # To fire orders.order_placed (orders/views.py); with outbox.yaml a fire inside
            # transaction.atomic() goes to the outbox in that transaction.
            _bus.client.register_api(OrdersApi())
        return _bus


def close_bus() -> None:
    """Close this process's client (gunicorn's worker_exit hook): stop its loop thread and
    close its Redis connections. Later calls of get_bus() fail rather than reconnect."""
    global _bus, _closed
    with _lock:
        bus, _bus, _closed = _bus, None, True
    if bus is not None:
        bus.close()
        logger.info("closed the bus client of process %s", os.getpid())
