"""The web app's bus client: one per process, created in the process that uses it.

Why not `bus = bus_core.create()` at import time, as a service's bus module does? Creating a
client starts nothing, but its first call starts a background event-loop thread and opens
Redis connections. gunicorn forks its workers from the master, and a forked child gets a copy
of the client without that thread (and with the parent's sockets): a client used in the
master before the fork hangs forever on its first call in a worker. So the client is made on
first use, and forgotten in a child right after any fork (`os.register_at_fork`), which keeps
`gunicorn --preload` safe too.
"""

from __future__ import annotations

import logging
import os
import threading

from services.accounts_api import AccountsApi

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


def _forget_after_fork() -> None:
    """In a forked child: drop the parent's client (its loop thread did not survive the fork,
    and closing it would wait on that thread) and the parent's lock."""
    global _bus, _lock, _closed
    _bus, _lock, _closed = None, threading.Lock(), False


if hasattr(os, "register_at_fork"):  # POSIX, where gunicorn runs
    os.register_at_fork(after_in_child=_forget_after_fork)
