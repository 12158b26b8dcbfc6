"""`bus state`: the live workers, from the recent `internal.state` events.

    bus state                     # a table of live workers
    bus state --all               # also those that stopped or whose pings stopped
    bus state --json              # for machines
    bus state --watch 2           # refresh every 2 s until Ctrl-C
    bus state --check billing     # exit 0 if a process of service `billing` is alive, else 1
    bus state --groups            # listener groups: consumers, idle ones, what they hold
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from bus_core.cli import CommandFailed, bus_or_bare_client
from bus_core.cli_messages import positive_seconds
from bus_core.client import Bus
from bus_core.transports import ConsumerInfo, GroupInfo
from bus_state.api import StateApi
from bus_state.status import WorkerStatus, read_workers

WINDOW_INTERVALS = 3  # how many ping intervals of history are read


def _bus(args: argparse.Namespace) -> Bus:
    """The bus module's bus when there is one (its config counts), else a bare client; a
    bus module found below this folder that fails to import is reported and skipped, as
    `bus call` and `bus inspect` do (one named with -b or BUS_MODULE must import)."""
    return bus_or_bare_client(args.bus)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s ago"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s ago"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m ago"


def render_table(workers: list[WorkerStatus]) -> str:
    """The workers as an aligned text table (one row per process)."""
    rows = [("SERVICE", "PROCESS", "HOST", "PID", "APIS", "LAST PING", "STATUS")]
    for w in workers:
        rows.append((w.service_name, w.process_name, w.hostname or "-",
                     str(w.pid) if w.pid is not None else "-",
                     ",".join(w.api_names) or "-", _age(w.last_seen_age), w.status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                        strict=True)).rstrip()
                     for row in rows)


IDLE_AFTER = 60.0  # seconds without a read after which `bus state` calls a consumer idle


async def read_groups(client: Any, announced: list[str]) -> list[GroupInfo]:
    """The listener groups on the streams of every API this client knows: registered,
    described by a shared schema, announced by a worker, and internal.state; each stream
    once. An API whose events are unknown here is looked up on its per-API stream only.
    Transports that cannot list groups are skipped."""
    apis: dict[str, list[str]] = {name: ["*"] for name in announced}
    known = {**(await client.describe_apis()),
             **{name: api.definition for name, api in client.apis.items()},
             StateApi.definition.name: StateApi.definition}
    apis.update({name: sorted(definition.events) for name, definition in known.items()})
    state = await client.state()
    found: dict[tuple[str, str], GroupInfo] = {}
    for api_name, event_names in sorted(apis.items()):
        transport = await state.transport("event", api_name)
        for event_name in event_names:
            try:
                groups = await transport.groups(api_name, event_name)
            except NotImplementedError:
                break
            for group in groups:
                found.setdefault((group.stream, group.name), group)
    return [found[key] for key in sorted(found)]


def idle_consumers(group: GroupInfo, idle_after: float) -> list[ConsumerInfo]:
    return [c for c in group.consumers if c.idle is not None and c.idle >= idle_after]


def render_groups(groups: list[GroupInfo], idle_after: float) -> str:
    """One row per listener group: its consumers, how many sit idle and what they hold."""
    rows = [("LISTENER GROUP", "STREAM", "CONSUMERS", f"IDLE >{idle_after:g}s",
             "HELD BY IDLE", "PENDING", "UNREAD")]
    for group in groups:
        idle = idle_consumers(group, idle_after)
        rows.append((group.name, group.stream, str(len(group.consumers)), str(len(idle)),
                     str(sum(c.pending for c in idle)), str(group.pending),
                     "-" if group.lag is None else str(group.lag)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                        strict=True)).rstrip()
                     for row in rows)


def group_json(group: GroupInfo, idle_after: float) -> dict[str, Any]:
    idle = idle_consumers(group, idle_after)
    return {"group": group.name, "stream": group.stream, "pending": group.pending,
            "unread": group.lag, "idle_consumers": len(idle),
            "held_by_idle": sum(c.pending for c in idle),
            "consumers": [{"name": c.name, "pending": c.pending, "idle": c.idle}
                          for c in group.consumers]}


class StateReader:
    """Reads the workers through one client, with the settings of one `bus state` run."""

    def __init__(self, bus: Bus, args: argparse.Namespace) -> None:
        from bus_state.plugin import grace, options, ping_interval

        self.bus = bus
        section = options(bus.client)
        interval = ping_interval(section)
        self.interval = interval
        self.grace: float | None = args.grace if args.grace is not None else (
            float(section["grace"]) if section.get("grace") is not None else None)
        self.window = args.window if args.window is not None else (
            WINDOW_INTERVALS * interval + grace(section, interval)
            if self.grace is None else WINDOW_INTERVALS * interval + self.grace)

    def read_groups(self) -> list[GroupInfo]:
        try:
            announced = sorted({name for worker in self.read() for name in worker.api_names})
        except CommandFailed:  # no history here: the groups may still be listed
            announced = []
        return self.bus.client.run_sync(read_groups(self.bus.client, announced))

    def read(self) -> list[WorkerStatus]:
        try:
            return self.bus.client.run_sync(read_workers(
                self.bus.client, window=self.window, grace=self.grace,
                default_interval=self.interval))
        except NotImplementedError as exc:
            raise CommandFailed(f"cannot read worker state: {exc} (bus state needs an event "
                                "transport with history, such as redis)") from None


def _shown(workers: list[WorkerStatus], args: argparse.Namespace) -> list[WorkerStatus]:
    if args.service:
        workers = [w for w in workers if w.service_name == args.service]
    return workers if args.all else [w for w in workers if w.alive]


def _print_groups(reader: StateReader, args: argparse.Namespace, watching: bool) -> None:
    groups = reader.read_groups()
    if args.json:
        print(json.dumps([group_json(g, args.idle_after) for g in groups],
                         indent=None if watching else 2), flush=True)
    elif groups:
        print(render_groups(groups, args.idle_after), flush=True)
    else:
        print("no listener groups on the streams of the APIs this bus knows", flush=True)


def _print_once(reader: StateReader, args: argparse.Namespace, watching: bool) -> None:
    if args.groups:
        _print_groups(reader, args, watching)
        return
    workers = _shown(reader.read(), args)
    if args.json:
        text = json.dumps([w.as_json() for w in workers], indent=None if watching else 2)
        print(text, flush=True)
        return
    if watching and sys.stdout.isatty():
        print("\033[H\033[J", end="")
    if watching:
        print(f"{time.strftime('%H:%M:%S')}  workers seen in the last {reader.window:g}s "
              "(Ctrl-C to stop)")
    if workers:
        print(render_table(workers), flush=True)
    else:
        which = "workers" if args.all else "live workers"
        print(f"no {which} announced themselves in the last {reader.window:g}s (are the "
              "workers' plugins.state.enabled true, on the same event transport?)", flush=True)
    groups = reader.read_groups()
    if groups:
        print("\n" + render_groups(groups, args.idle_after), flush=True)


def cmd_check(reader: StateReader, args: argparse.Namespace) -> int:
    workers = [w for w in reader.read() if w.service_name == args.check]
    alive = [w for w in workers if w.alive]
    if args.json:
        print(json.dumps({"service": args.check, "alive": len(alive),
                          "workers": [w.as_json() for w in workers]}, indent=2))
    elif alive:
        where = ", ".join(f"{w.hostname or '?'} pid {w.pid}" for w in alive)
        print(f"{args.check}: {len(alive)} live process(es): {where}")
    else:
        last = max(workers, key=lambda w: w.last_seen or 0, default=None)
        seen = f"; last seen {_age(last.last_seen_age)}, {last.status}" if last else ""
        print(f"{args.check}: no live process{seen}")
    return 0 if alive else 1


def cmd_state(args: argparse.Namespace) -> int:
    if args.check and args.watch is not None:
        raise CommandFailed("--check answers once: use it without --watch")
    if args.count is not None and args.watch is None:
        raise CommandFailed("--count goes with --watch")
    bus = _bus(args)
    try:
        reader = StateReader(bus, args)
        if args.check:
            return cmd_check(reader, args)
        if args.watch is None:
            _print_once(reader, args, watching=False)
            return 0
        done = 0
        try:
            while True:
                _print_once(reader, args, watching=True)
                done += 1
                if args.count is not None and done >= args.count:
                    return 0
                time.sleep(args.watch)  # the refresh period the user asked for
        except KeyboardInterrupt:
            return 0
    finally:
        bus.client.close()


def _setup(parser: argparse.ArgumentParser) -> None:
    """The options of `bus state` (the kernel already added the common -c/-b/-l)."""
    parser.add_argument("-j", "--json", action="store_true", help="print JSON")
    parser.add_argument("-a", "--all", action="store_true",
                        help="also show workers that stopped or whose pings stopped")
    parser.add_argument("-s", "--service", metavar="NAME", help="only this service's workers")
    parser.add_argument("--check", metavar="SERVICE",
                        help="exit 0 if a process of SERVICE is alive, 1 if none is")
    parser.add_argument("-w", "--watch", nargs="?", const=2.0, type=positive_seconds,
                        metavar="SECONDS", help="refresh every SECONDS (default 2) until "
                                                "Ctrl-C")
    parser.add_argument("--count", type=int, metavar="N",
                        help="with --watch: stop after N refreshes")
    parser.add_argument("--grace", type=float, metavar="SECONDS",
                        help="a worker is gone after its ping_interval + this many seconds "
                             "without a ping (default: plugins.state.grace, else half the "
                             "interval)")
    parser.add_argument("-g", "--groups", action="store_true",
                        help="show only the listener groups: consumers, idle ones and the "
                             "entries they hold, pending and unread entries")
    parser.add_argument("--idle-after", type=positive_seconds, default=IDLE_AFTER,
                        metavar="SECONDS",
                        help=f"a consumer that has not read for this long is idle (default "
                             f"{IDLE_AFTER:g})")
    parser.add_argument("--window", type=positive_seconds, metavar="SECONDS",
                        help="how far back to read (default: 3 x plugins.state.ping_interval "
                             "+ grace)")


def _run(args: argparse.Namespace) -> int:
    for name in ("config", "bus", "log_level"):
        if not hasattr(args, name):
            setattr(args, name, None)
    if args.config:
        os.environ["BUS_CONFIG"] = args.config
    return cmd_state(args)


def register_commands(register: Any) -> None:
    register("state", "live workers, from their internal.state announcements", _setup, _run)

