"""A listener process for the crash tests: `python slow_consumer.py CONFIG_JSON`.

It listens to `auth.user_registered` as listener `LISTENER` of service `SERVICE` (process
`PROCESS`). The handler adds the username to the Redis set `STARTED`, and, for the first
`HANG_AFTER` events, then to `HANDLED`; every later event hangs in its handler, as a stuck
or slow handler would, until the process is killed. It prints READY once it consumes.

CONFIG_JSON: {"config": {...bus config...}, "service": ..., "process": ..., "listener": ...,
"started": key, "handled": key, "hang_after": n}
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import redis

import bus_core


def main() -> None:
    spec = json.loads(sys.argv[1])
    url = spec["config"]["apis"]["default"]["event_transport"]["redis"]["url"]
    store = redis.Redis.from_url(url)
    lock = threading.Lock()
    finished = 0

    def handle(event: Any, username: str, email: str) -> None:
        nonlocal finished
        store.sadd(spec["started"], username)
        with lock:
            finishing = finished < spec["hang_after"]
            if finishing:
                finished += 1
        if not finishing:
            time.sleep(3600)  # stuck: this process is killed while the event is in flight
        store.sadd(spec["handled"], username)

    bus = bus_core.create(spec["config"], service_name=spec["service"],
                          process_name=spec["process"])
    bus.client.listen("auth.user_registered", handle, listener_name=spec["listener"])
    bus.client.start_worker()
    print("READY", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
