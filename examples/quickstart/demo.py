"""The README's demo: a worker serves an RPC and runs a listener, a client calls the RPC
and fires the event, all in one process on the embedded in-memory transport.

    python3 dev.py demo
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bus import bus

from bus_core import EventMessage

handled = threading.Event()


def say(line: str) -> None:
    """Print a whole line in one write (the listener prints from another thread)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def mark_handled(event: EventMessage, username: str) -> None:
    handled.set()


def main() -> int:
    bus.auth.user_registered.listen(mark_handled, listener_name="demo_done")
    bus.client.start_worker()  # serve RPCs and run listeners in the background
    try:
        ok = bus.auth.check_password(username="admin", password="secret")
        say(f"[client] auth.check_password(username='admin', password='secret') -> {ok}")
        wrong = bus.auth.check_password(username="admin", password="guess")
        say(f"[client] auth.check_password(username='admin', password='guess') -> {wrong}")
        message = bus.auth.user_registered.fire(username="ada", email="ada@example.com")
        say(f"[client] fired auth.user_registered (id {message.id[:8]}...)")
        if not handled.wait(timeout=10):
            print("[demo] the event was not handled within 10s", file=sys.stderr)
            return 1
    finally:
        bus.client.close()
    say("[demo] done: RPC answered, event handled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
