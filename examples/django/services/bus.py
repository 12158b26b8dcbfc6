"""The accounts service's bus module: what `bus run --bus services.bus` serves.

It serves AccountsService (the implementation of the declared AccountsApi) and runs one
listener, which "sends" a welcome email for each `accounts.user_signed_up` the web app fires:
it appends a JSON line to the file named by $ACCOUNTS_OUTBOX, or prints it when that is
unset.
"""

from __future__ import annotations

import json
import os
import sys
import threading

import bus_core
from bus_core import EventMessage
from services.accounts import AccountsService

bus = bus_core.create(service_name="accounts")  # config: $BUS_CONFIG
bus.client.register_api(AccountsService())

_outbox_lock = threading.Lock()


def send_welcome_email(event: EventMessage, user_id: int, username: str, email: str) -> None:
    """Runs in the worker's thread pool once per sign-up (again if it raises)."""
    line = json.dumps({"event_id": event.id, "user_id": user_id, "username": username,
                       "to": email, "subject": f"Welcome, {username}!"})
    outbox = os.environ.get("ACCOUNTS_OUTBOX")
    if not outbox:
        sys.stdout.write(f"[welcome email] {line}\n")
        sys.stdout.flush()
        return
    with _outbox_lock, open(outbox, "a", encoding="utf-8") as file:
        file.write(line + "\n")


bus.accounts.user_signed_up.listen(send_welcome_email, listener_name="send_welcome_email")
