"""A second process using the quickstart service: calls its RPC and fires its event.

    BUS_CONFIG=redis.yaml python client.py

Needs a worker (`bus run`) on the same Redis. The client registers AuthApi because a service
fires only events of APIs it registers; it runs no worker, so it serves nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from auth_api import AuthApi

import bus_core

bus = bus_core.create(service_name="quickstart_client")
bus.client.register_api(AuthApi())

try:
    ok = bus.auth.check_password(username="admin", password="secret")
    print(f"[client] auth.check_password(username='admin', password='secret') -> {ok}")
    message = bus.auth.user_registered.fire(username="grace", email="grace@example.com")
    print(f"[client] fired auth.user_registered (id {message.id[:8]}...)")
finally:
    bus.client.close()
