"""The quickstart service's bus module: what `bus run` imports.

With no config, the bus uses the in-memory transports, so everything runs in one process.
Point BUS_CONFIG at a YAML file to choose other transports.
"""

from __future__ import annotations

import sys

from auth_api import AuthApi

import bus_core
from bus_core import EventMessage

bus = bus_core.create()  # service_name: this folder's name, or bus.service_name in YAML
bus.client.register_api(AuthApi())


def send_welcome_email(event: EventMessage, username: str, email: str, is_admin: bool) -> None:
    # One write per line: the listener runs in a worker thread, beside the caller's prints.
    sys.stdout.write(f"[listener] {event.api_name}.{event.event_name} (id {event.id[:8]}...): "
                     f"welcome {username} <{email}>{' (admin)' if is_admin else ''}\n")
    sys.stdout.flush()


bus.auth.user_registered.listen(send_welcome_email, listener_name="send_welcome_email")
