"""`bus outbox`: create the tables, run a relay, show the backlog, prune.

    bus outbox init              # create the tables (idempotent); --print: show the DDL only
    bus outbox relay             # relay until SIGINT/SIGTERM; --once: until nothing is left
    bus outbox status            # backlog, oldest unsent, failed rows, relays; --json
    bus outbox status --max-age 60   # exit 1 when an unsent row is older than 60 s or no
                                     # relay is alive (a health check)
    bus outbox prune             # delete sent rows and inbox marks past their age now
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

from bus_core.cli import CommandFailed, bus_or_bare_client
from bus_core.cli_messages import positive_seconds
from bus_core.client import Bus
from bus_outbox.options import Options, options_for, redact
from bus_outbox.sql import Statements, ddl


def _bus(args: argparse.Namespace) -> Bus:
    return bus_or_bare_client(args.bus)


def _options(bus: Bus) -> Options:
    options = options_for(bus.client)
    if "outbox" not in bus.client.plugins.enabled:
        raise CommandFailed("the outbox plugin is not enabled in this config: set "
                            "plugins.outbox.enabled: true and plugins.outbox.dsn")
    return options


def _connect(options: Options) -> Any:
    import psycopg

    dsn = options.dsn
    if not dsn:
        raise CommandFailed("plugins.outbox.dsn is not set: the PostgreSQL connection string "
                            "of the database holding the outbox tables")
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise CommandFailed(f"cannot connect to the outbox database: "
                            f"{redact(str(exc).strip(), dsn)}") from None


def cmd_init(args: argparse.Namespace) -> int:
    from bus_outbox.relay import create_tables

    if args.print and args.schema:
        print(ddl(args.schema), end="")
        return 0
    bus = _bus(args)
    try:
        options = _options(bus)
        schema = args.schema or options.schema
        if args.print:
            print(ddl(schema), end="")
            return 0
        with _connect(options) as conn:
            create_tables(conn, schema)
        print(f"outbox tables ready in schema {schema!r} (bus_outbox, bus_inbox, "
              "bus_outbox_relays)")
        return 0
    finally:
        bus.client.close()


def read_status(conn: Any, options: Options, failed_rows: int = 5) -> dict[str, Any]:
    """What `bus outbox status` shows, as a dict."""
    import psycopg

    st = Statements(options.schema)
    try:
        exists = conn.execute(st.tables_exist, st.table_names).fetchone()[0]
    except psycopg.Error as exc:
        raise CommandFailed(f"cannot read the outbox tables: "
                            f"{redact(str(exc).strip(), options.dsn)}") from None
    if not exists:
        raise CommandFailed(f"no outbox tables in schema {options.schema!r}: run `bus outbox "
                            "init` (or start a worker with create_tables: true)")
    backlog, oldest = conn.execute(st.backlog).fetchone()
    sent, failed = conn.execute(st.totals).fetchone()
    processed = conn.execute(st.inbox_count).fetchone()[0]
    alive_within = 3 * options.heartbeat_interval
    relays = [{"relay_id": r[0], "hostname": r[1], "pid": r[2],
               "started_at": r[3].isoformat(), "seen_ago": round(r[4], 1),
               "published": r[5], "alive": r[4] <= alive_within}
              for r in conn.execute(st.relays).fetchall()]
    failures = [{"seq": r[0], "message_id": r[1], "event": f"{r[2]}.{r[3]}", "error": r[4]}
                for r in conn.execute(st.failed, (failed_rows,)).fetchall()]
    return {"schema": options.schema, "backlog": backlog,
            "oldest_unsent_age": None if oldest is None else round(max(0.0, oldest), 3),
            "sent_kept": sent, "failed": failed, "inbox_marks": processed,
            "relays_alive": sum(1 for r in relays if r["alive"]), "relays": relays,
            "recent_failures": failures}


def _render(status: dict[str, Any]) -> str:
    oldest = status["oldest_unsent_age"]
    lines = [
        f"schema              {status['schema']}",
        f"backlog             {status['backlog']} unsent",
        f"oldest unsent       {'-' if oldest is None else f'{oldest:.1f}s ago'}",
        f"sent (kept)         {status['sent_kept']}",
        f"failed (kept)       {status['failed']}",
        f"inbox marks         {status['inbox_marks']}",
        f"relays alive        {status['relays_alive']}",
    ]
    if status["relays"]:
        rows = [("RELAY", "HOST", "PID", "LAST SEEN", "PUBLISHED", "STATUS")]
        rows += [(r["relay_id"], r["hostname"], str(r["pid"]), f"{r['seen_ago']:.1f}s ago",
                  str(r["published"]), "alive" if r["alive"] else "gone")
                 for r in status["relays"]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                  for row in rows]
    for failure in status["recent_failures"]:
        lines.append(f"failed row {failure['seq']} ({failure['event']}, id "
                     f"{failure['message_id']}): {failure['error']}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    bus = _bus(args)
    try:
        options = _options(bus)
        with _connect(options) as conn:
            status = read_status(conn, options)
    finally:
        bus.client.close()
    print(json.dumps(status, indent=2) if args.json else _render(status))
    if args.max_age is not None:
        oldest = status["oldest_unsent_age"]
        if status["relays_alive"] == 0 or (oldest is not None and oldest > args.max_age):
            return 1
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from bus_outbox.relay import prune_async

    bus = _bus(args)
    try:
        options = _options(bus)

        async def prune() -> tuple[int, int]:
            import psycopg

            async with await psycopg.AsyncConnection.connect(options.require_dsn("prune"),
                                                             autocommit=True) as conn:
                return await prune_async(conn, Statements(options.schema), options)

        try:
            rows, marks = asyncio.run(prune())
        except Exception as exc:
            raise CommandFailed(f"cannot prune: "
                                f"{redact(str(exc).strip(), options.dsn)}") from None
    finally:
        bus.client.close()
    print(f"pruned {rows} sent outbox rows and {marks} inbox marks")
    return 0


def _configure_logging(args: argparse.Namespace, bus: Bus) -> None:
    """Log as `bus run` does: -l/--log-level, else bus.log_level, else INFO; text or JSON."""
    from bus_core.logs import configure

    level = args.log_level or bus.client.config.bus.get("log_level") or "INFO"
    chosen = os.environ.get("BUS_LOG_FORMAT") or bus.client.config.bus.get("log_format")
    configure(str(level), chosen if chosen in ("text", "json") else "text")


def cmd_relay(args: argparse.Namespace) -> int:
    from bus_outbox.relay import Relay

    bus = _bus(args)
    options = _options(bus)
    _configure_logging(args, bus)
    if args.batch_size is not None or args.poll_interval is not None:
        import dataclasses

        options = dataclasses.replace(
            options, batch_size=args.batch_size or options.batch_size,
            poll_interval=args.poll_interval or options.poll_interval)
    options.require_dsn("bus outbox relay")

    async def main() -> None:
        relay = Relay(bus.client, options)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, relay.stop)
        try:
            await relay.run(once=args.once)
        finally:
            await bus.client.close_async()

    try:
        asyncio.run(main())
    finally:
        bus.client.close()
    return 0


def _setup(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="outbox_command", metavar="COMMAND", required=True)
    init = sub.add_parser("init", help="create the outbox tables (idempotent)")
    init.add_argument("--print", action="store_true", help="print the DDL instead")
    init.add_argument("--schema", help="PostgreSQL schema (default: plugins.outbox.schema)")
    init.set_defaults(outbox_run=cmd_init)
    relay = sub.add_parser("relay", help="publish committed outbox rows until SIGINT/SIGTERM")
    relay.add_argument("--once", action="store_true",
                       help="stop once no committed row is left")
    relay.add_argument("--batch-size", type=int, metavar="N",
                       help="transactions per round (default: plugins.outbox.batch_size)")
    relay.add_argument("--poll-interval", type=positive_seconds, metavar="SECONDS",
                       help="longest wait between rounds without a NOTIFY")
    relay.set_defaults(outbox_run=cmd_relay)
    status = sub.add_parser("status", help="backlog, oldest unsent row, relays alive")
    status.add_argument("-j", "--json", action="store_true", help="print JSON")
    status.add_argument("--max-age", type=positive_seconds, metavar="SECONDS",
                        help="exit 1 when an unsent row is older than this, or no relay is "
                             "alive")
    status.set_defaults(outbox_run=cmd_status)
    prune = sub.add_parser("prune", help="delete sent rows and inbox marks past their age")
    prune.set_defaults(outbox_run=cmd_prune)


def _run(args: argparse.Namespace) -> int:
    for name in ("config", "bus", "log_level"):
        if not hasattr(args, name):
            setattr(args, name, None)
    if args.config:
        os.environ["BUS_CONFIG"] = args.config
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        print("bus: error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    return int(args.outbox_run(args))


def register_commands(register: Any) -> None:
    register("outbox", "transactional events: init, relay, status, prune", _setup, _run)
