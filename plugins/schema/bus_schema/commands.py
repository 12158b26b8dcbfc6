"""`bus schema dump|load|show|asyncapi`: schemas on the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bus_core.cli import CommandFailed, bus_or_bare_client, common_options
from bus_core.client import Bus
from bus_schema.store import read_schema_files


def _bus(args: argparse.Namespace) -> Bus:
    """The bus module's bus when there is one (its own APIs count), else a bare client."""
    return bus_or_bare_client(args.bus)


def _store(bus: Bus) -> Any:
    from bus_schema.plugin import store_for

    return store_for(bus.client)


def _render(schemas: dict[str, Any]) -> str:
    return json.dumps(schemas, indent=2, sort_keys=True) + "\n"


def cmd_dump(args: argparse.Namespace) -> int:
    bus = _bus(args)
    try:
        store = _store(bus)
        bus.client.run_sync(store.load_remote())
        schemas = store.known()
    finally:
        bus.client.close()
    if not args.out:
        sys.stdout.write(_render(schemas))
        return 0
    out = Path(args.out)
    if out.is_dir() or args.out.endswith(("/", os.sep)):
        out.mkdir(parents=True, exist_ok=True)
        for name, schema in sorted(schemas.items()):
            (out / f"{name}.json").write_text(_render({name: schema}))
        print(f"wrote {len(schemas)} schema file(s) to {out}")
    else:
        out.write_text(_render(schemas))
        print(f"wrote {len(schemas)} schema(s) to {out}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    schemas = read_schema_files(args.source)
    bus = _bus(args)
    try:
        ttl = args.ttl if args.ttl is not None else bus.client.config.bus["schema"]["ttl"]
        bus.client.run_sync(_store(bus).store(schemas, ttl))
    finally:
        bus.client.close()
    print(f"stored {len(schemas)} schema(s) on the schema transport"
          f"{f' for {ttl:g}s' if ttl else ''}: {', '.join(sorted(schemas))}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    bus = _bus(args)
    try:
        store = _store(bus)
        bus.client.run_sync(store.load_remote())
        schema = store.get(args.api)
        known = sorted(store.known())
    finally:
        bus.client.close()
    if schema is None:
        raise CommandFailed(f"no schema is known for API {args.api!r}; known: "
                            f"{', '.join(known) or 'none'} (is a worker serving it running, "
                            "on the same schema transport?)")
    sys.stdout.write(_render({args.api: schema}))
    return 0


def cmd_asyncapi(args: argparse.Namespace) -> int:
    from bus_schema.asyncapi import asyncapi_document, render, select

    bus = _bus(args)
    try:
        store = _store(bus)
        bus.client.run_sync(store.load_remote())
        known = store.known()
        config = bus.client.config
    finally:
        bus.client.close()
    try:
        schemas = select(known, args.api)
    except KeyError as exc:
        raise CommandFailed(f"no schema is known for API {exc.args[0]!r}; known: "
                            f"{', '.join(sorted(known)) or 'none'} (is a worker serving it "
                            "running, on the same schema transport?)") from None
    text = render(asyncapi_document(schemas, config, title=args.title,
                                    version=args.doc_version), args.format)
    if not args.out:
        sys.stdout.write(text)
        return 0
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote the AsyncAPI 3.0 document of {len(schemas)} API(s) to {args.out}")
    return 0


def _setup(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="schema_command", metavar="ACTION", required=True)
    dump = actions.add_parser("dump", parents=[common_options()],
                              help="write every known schema as JSON")
    dump.add_argument("-o", "--out", metavar="FILE|DIR",
                      help="a file, or a folder (one file per API); default: stdout")
    dump.set_defaults(schema_handler=cmd_dump)
    load = actions.add_parser("load", parents=[common_options()],
                              help="publish recorded schemas on the schema transport")
    load.add_argument("source", metavar="FILE|DIR", help="a schema file or a folder of them")
    load.add_argument("-t", "--ttl", type=float, metavar="SECONDS",
                      help="how long they live (default: bus.schema.ttl; 0: no expiry)")
    load.set_defaults(schema_handler=cmd_load)
    show = actions.add_parser("show", parents=[common_options()],
                              help="print one API's schema")
    show.add_argument("api", metavar="API", help="the API name, e.g. auth")
    show.set_defaults(schema_handler=cmd_show)
    asyncapi = actions.add_parser("asyncapi", parents=[common_options()],
                                  help="write an AsyncAPI 3.0 document of the known APIs")
    asyncapi.add_argument("--api", action="append", metavar="NAME",
                          help="only this API (repeat for more; default: every known API)")
    asyncapi.add_argument("-o", "--out", metavar="FILE", help="default: stdout")
    asyncapi.add_argument("--format", choices=["yaml", "json"], default="yaml",
                          help="yaml (the default) or json")
    asyncapi.add_argument("--title", help="info.title (default: 'Bus APIs: <names>')")
    asyncapi.add_argument("--doc-version", default="1.0.0", metavar="VERSION",
                          help="info.version, the document's version (default: 1.0.0)")
    asyncapi.set_defaults(schema_handler=cmd_asyncapi)


def _run(args: argparse.Namespace) -> int:
    # `bus` has already applied the common options (--config -> BUS_CONFIG, defaults).
    return int(args.schema_handler(args))


def register_commands(register: Any) -> None:
    register("schema", "API schemas: dump, load, show, asyncapi", _setup, _run)
