"""Two processes sharing a bus through one SQLite file: a worker serves `stock` and listens
for `warehouse.restocked`; this process calls its RPCs and fires that event.

    python examples/sqlite_transport/demo.py               # a fresh database in a temp folder
    python examples/sqlite_transport/demo.py --db bus.db   # or this file

Installed (`pip install ./examples/sqlite_transport`) the plugin is found through its entry
point; otherwise the demo registers it by hand, which `bus_core.create(plugins=...)` allows.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bus_sqlite.plugin  # noqa: E402
from stock import StockApi, WarehouseApi  # noqa: E402

import bus_core  # noqa: E402


def config(db: str) -> dict[str, Any]:
    """Every transport of every API on the SQLite file `db`."""
    sqlite = {"sqlite": {"path": db, "poll_interval": 0.02}}
    return {"bus": {"schema": {"transport": sqlite}, "drain_timeout": 5},
            "apis": {"default": {"rpc_transport": sqlite, "result_transport": sqlite,
                                 "event_transport": sqlite, "rpc_timeout": 5}}}


def make_bus(db: str, service_name: str) -> bus_core.Bus:
    installed = any(ep.name == "sqlite" for ep in metadata.entry_points(group="bus"))
    return bus_core.create(config(db), service_name=service_name,
                           plugins=() if installed else [bus_sqlite.plugin])


def serve(db: str) -> int:
    """The worker: serve `stock`, apply restocks, stop cleanly on SIGTERM."""
    bus = make_bus(db, "stock_service")
    api = StockApi()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def restocked(event: Any, item: str, count: int) -> None:
        api.levels[item] = api.levels.get(item, 0) + count
        print(f"[worker] restocked {count} {item}", flush=True)

    bus.client.register_api(api)
    bus.warehouse.restocked.listen(restocked, listener_name="apply_restock")
    bus.client.start_worker()
    print("[worker] ready", flush=True)
    stop.wait()
    bus.client.close()
    print("[worker] stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["demo", "serve"], default="demo")
    parser.add_argument("--db", help="the SQLite file (default: one in a new temp folder)")
    args = parser.parse_args(argv)
    db = args.db or str(Path(tempfile.mkdtemp(prefix="bus-sqlite-")) / "bus.sqlite3")
    if args.mode == "serve":
        return serve(db)

    worker = subprocess.Popen([sys.executable, __file__, "serve", "--db", db],
                              stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    try:
        if worker.stdout.readline().strip() != "[worker] ready":
            print("the worker did not start", file=sys.stderr)
            return 1
        bus = make_bus(db, "warehouse")
        bus.client.register_api(WarehouseApi())  # a service fires only its own events
        try:
            print(f"[warehouse] reserve 2 apples -> {bus.stock.reserve(item='apple', count=2)}")
            print(f"[warehouse] reserve 2 apples -> {bus.stock.reserve(item='apple', count=2)}")
            bus.warehouse.restocked.fire(item="apple", count=10)
            print(worker.stdout.readline().strip())
            print(f"[warehouse] apples in stock: {bus.stock.level(item='apple')}")
        finally:
            bus.client.close()
    finally:
        worker.send_signal(signal.SIGTERM)
        rest, _ = worker.communicate(timeout=30)
    print(rest.strip())
    return worker.returncode


if __name__ == "__main__":
    sys.exit(main())
