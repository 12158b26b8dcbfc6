"""gunicorn settings of the example: `gunicorn -c gunicorn.conf.py project.wsgi`.

Command-line options override these (the test passes --bind and --workers).
"""

from __future__ import annotations

import os
from typing import Any

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
# gthread: each worker process serves `threads` requests at once; they share one bus client.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# A worker that stops answering the master's heartbeat for this long is killed. gthread
# workers keep answering while request threads wait; sync workers do not, so with those keep
# the RPC timeout (BUS_RPC_TIMEOUT, 5 s) well below it: a silent service then gives a 504.
timeout = 30
graceful_timeout = 10


def worker_exit(server: Any, worker: Any) -> None:
    """As a worker exits, in its process: close its bus client (loop thread, connections).

    gunicorn also calls this in the master for a worker that vanished; there the client was
    never used (at most created by --preload), so closing it is harmless."""
    from shop.bus import close_bus

    close_bus()
