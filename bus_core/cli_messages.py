"""`bus call`, `bus fire` and `bus inspect`: RPCs, events and event history from a shell.

Arguments are `key=value` pairs; each value is parsed as JSON where it parses (`n=3` is 3,
`tags=["a"]` a list) and is a string otherwise (`name=ada`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from bus_core.client import Bus
from bus_core.errors import BusError, RemoteError, RpcTimeout
from bus_core.message_path import rpc_timeout_message
from bus_core.messages import EventMessage

POLL_SECONDS = 0.5
PROGRESS_EVERY = 1000
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(BusError):
    """Malformed command-line arguments (exit code 2)."""

    exit_code = 2


# -- parsing arguments -----------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """`text` as JSON where it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pairs(pairs: Sequence[str], what: str = "argument") -> dict[str, Any]:
    """`["n=3", "name=ada"]` -> `{"n": 3, "name": "ada"}`; UsageError on a malformed pair."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"{what} {pair!r} is not key=value (e.g. name=ada, n=3, "
                             f'tags=\'["a"]\')')
        out[key] = parse_value(value)
    return out


def split_target(target: str, kind: str) -> tuple[str, str]:
    """`"shop.orders.place"` -> `("shop.orders", "place")`; UsageError if malformed."""
    api_name, _, name = target.rpartition(".")
    if not api_name or not _NAME.match(target):
        raise UsageError(f"{target!r} does not name an {kind}: use API.{kind.upper()}, "
                         f"e.g. auth.check_password")
    return api_name, name


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """An ISO datetime (naive means local time) or a relative `30s`, `10m`, `2h`, `1d`
    back from now, as an aware UTC datetime."""
    now = now or datetime.now(timezone.utc)
    match = _RELATIVE.match(text.strip())
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{text!r} is not a time: use an ISO datetime "
                         "(2026-05-01T12:00) or a relative 30s, 10m, 2h, 1d") from None
    return moment.astimezone(timezone.utc)


# -- output ----------------------------------------------------------------------------------


def _json(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent, default=str, ensure_ascii=False)


def _readable(value: Any) -> str:
    return value if isinstance(value, str) else _json(value, indent=2)


def event_row(message: EventMessage) -> dict[str, Any]:
    """An event as the JSON object `bus inspect --json` prints."""
    return {"id": message.id, "api": message.api_name, "event": message.event_name,
            "time": message.time.isoformat() if message.time else None,
            "native_id": message.native_id, "kwargs": message.kwargs}


def event_line(message: EventMessage) -> str:
    """An event as one readable line: time, name, native id, arguments."""
    moment = message.time.isoformat(timespec="milliseconds") if message.time else "-"
    arguments = " ".join(f"{k}={_json(v)}" for k, v in message.kwargs.items())
    return f"{moment}  {message.canonical_name}  {message.native_id or '-'}  {arguments}"


# -- choosing the bus ------------------------------------------------------------------------


def client_bus(args: argparse.Namespace) -> Bus:
    """The bus module's Bus when one is named or found (its APIs are then known locally),
    else a plain client configured by $BUS_CONFIG."""
    from bus_core.cli import bus_or_bare_client

    return bus_or_bare_client(args.bus)


def _options(args: argparse.Namespace) -> dict[str, Any] | None:
    return {"timeout": args.timeout} if args.timeout else None


# -- bus call / bus fire ---------------------------------------------------------------------


def refuse_memory(bus: Bus, api_name: str, kind: str, verb: str, outcome: str) -> None:
    """A command that reaches other processes cannot work on the in-memory transport: say
    so at once instead of waiting for nothing."""
    from bus_core.cli import CommandFailed

    if bus.client.config.api(api_name).transport(kind)[0] == "memory":
        raise CommandFailed(
            f"API {api_name!r} is on the in-memory transport, which reaches only this "
            f"process: `bus {verb}` {outcome}. Point BUS_CONFIG (or -c) at a config with a "
            "shared transport such as redis (see the Redis transport reference)")


def cmd_call(args: argparse.Namespace) -> int:
    """Call an RPC and print its result."""
    api_name, name = split_target(args.target, "rpc")
    kwargs = parse_pairs(args.arguments)
    with client_bus(args) as bus:
        refuse_memory(bus, api_name, "rpc", "call", "serves nothing, so no worker could answer")
        try:
            result = bus.client.call_rpc(api_name, name, kwargs, _options(args))
        except RpcTimeout:
            seconds = args.timeout or bus.client.config.api(api_name).rpc_timeout
            source = "--timeout" if args.timeout else f"apis.{api_name}.rpc_timeout"
            print(f"bus: error: {rpc_timeout_message(api_name, name, seconds, source)}",
                  file=sys.stderr)
            return 1
        except RemoteError as exc:
            print(f"bus: error: {api_name}.{name}() raised {exc.remote_type}: "
                  f"{exc.remote_message}", file=sys.stderr)
            if args.verbose:
                print(f"--- remote traceback ---\n{exc.remote_traceback.rstrip()}",
                      file=sys.stderr)
            else:
                print("(-v shows the remote traceback)", file=sys.stderr)
            return 1
    print(_json(result) if args.json else _readable(result))
    return 0


def cmd_fire(args: argparse.Namespace) -> int:
    """Fire an event of an API the bus module registers (or, --as-foreign, of any API)."""
    from bus_core.cli import CommandFailed

    api_name, name = split_target(args.target, "event")
    kwargs = parse_pairs(args.arguments)
    with client_bus(args) as bus:
        refuse_memory(bus, api_name, "event", "fire",
                      "would put the event where no other process can see it")
        if args.as_foreign:
            message = bus.client.run_sync(fire_foreign(bus, api_name, name, kwargs,
                                                       args.timeout))
        elif api_name not in bus.client.apis:
            registered = ", ".join(sorted(bus.client.apis)) or "none"
            raise CommandFailed(
                f"cannot fire {api_name}.{name}: API {api_name!r} is not registered by the "
                f"bus module (registered: {registered}). A service fires only its own events: "
                "run from the folder of the service that registers it, name its module with "
                "--bus, or pass --as-foreign to fire it anyway (no argument checks)")
        else:
            message = bus.client.fire(api_name, name, kwargs, _options(args))
    if args.json:
        print(_json(event_row(message)))
    else:
        print(f"fired {message.canonical_name} (id {message.id}, native id "
              f"{message.native_id or '-'})")
    return 0


async def fire_foreign(bus: Bus, api_name: str, event_name: str, kwargs: dict[str, Any],
                       timeout: float | None) -> EventMessage:
    """Put an EventMessage straight on the API's event transport (no local API needed)."""
    from bus_core.message_path import fire_timeout_message, wire_kwargs

    message = EventMessage(api_name=api_name, event_name=event_name,
                           kwargs=wire_kwargs(f"{api_name}.{event_name}", kwargs))
    state = await bus.client.state()
    transport = await state.transport("event", api_name)
    seconds = timeout or bus.client.config.api(api_name).event_fire_timeout
    try:
        await asyncio.wait_for(transport.send_event(message), seconds)
    except (TimeoutError, asyncio.TimeoutError):
        raise BusError(fire_timeout_message(f"{api_name}.{event_name}", seconds,
                                            "bus fire --timeout" if timeout else
                                            f"apis.{api_name}.event_fire_timeout")) from None
    return message


# -- bus inspect -----------------------------------------------------------------------------


def _pairs_to_inspect(args: argparse.Namespace, bus: Bus) -> list[tuple[str, str]]:
    if args.event:
        if args.api:
            pairs = [(args.api, event) for event in args.event]
        else:
            pairs = [split_target(event, "event") for event in args.event]
        _refuse_unknown_events(bus, pairs)
        return pairs
    if not args.api:
        raise UsageError("name what to inspect: --event API.EVENT, or --api API --event "
                         "EVENT (--api alone works for APIs the bus module registers)")
    definition = bus.client.api_definition(args.api)
    if definition is None:  # perhaps a plugin knows it (bus-schema: the shared schema)
        definition = bus.client.run_sync(bus.client.describe_apis()).get(args.api)
    if definition is None or not definition.events:
        raise UsageError(f"API {args.api!r} is not registered by a local bus module nor "
                         "described by the schema, so its events are unknown here: name them "
                         "with --event EVENT")
    return [(args.api, event) for event in sorted(definition.events)]


def _refuse_unknown_events(bus: Bus, pairs: list[tuple[str, str]]) -> None:
    """A misspelled event of an API known here (registered, or described by the schema) is
    a usage error, not an empty listing."""
    described: dict[str, Any] | None = None
    for api_name, event_name in pairs:
        definition = bus.client.api_definition(api_name)
        if definition is None:
            if described is None:
                described = bus.client.run_sync(bus.client.describe_apis())
            definition = described.get(api_name)
        if definition is not None and event_name not in definition.events:
            raise UsageError(f"API {api_name!r} has no event {event_name!r}; its events: "
                             f"{', '.join(sorted(definition.events)) or 'none'}")


def _key(message: EventMessage) -> tuple[datetime, str]:
    return (message.time or datetime.min.replace(tzinfo=timezone.utc), message.native_id or "")


async def merged_history(bus: Bus, pairs: Sequence[tuple[str, str]], start: datetime | None,
                         stop: datetime | None, undecodable: list[str] | None = None
                         ) -> AsyncIterator[EventMessage]:
    """Every event of `pairs` in [start, stop], newest first across all of them; the ids of
    entries that could not be decoded go to `undecodable` (where the transport tells)."""
    state = await bus.client.state()
    iterators: list[AsyncIterator[EventMessage]] = []
    for api_name, event_name in pairs:
        transport = await state.transport("event", api_name)
        try:
            history = transport.history(api_name, event_name, start, stop,
                                        undecodable=undecodable)
        except TypeError:  # a transport written before `undecodable` existed
            history = transport.history(api_name, event_name, start, stop)
        iterators.append(history.__aiter__())
    heads: dict[int, EventMessage] = {}
    for index, iterator in enumerate(iterators):
        head = await anext(iterator, None)
        if head is not None:
            heads[index] = head
    while heads:
        index = max(heads, key=lambda i: _key(heads[i]))
        yield heads[index]
        head = await anext(iterators[index], None)
        if head is None:
            del heads[index]
        else:
            heads[index] = head


class Inspection:
    """One `bus inspect` run: the backlog, then (with --follow) new events as they come."""

    def __init__(self, args: argparse.Namespace, bus: Bus, pairs: list[tuple[str, str]],
                 emit: Callable[[str], None]) -> None:
        self.args, self.bus, self.pairs, self.emit = args, bus, pairs, emit
        self.where, self.since, self.until = _filters(args)
        self.scanned = 0
        self.undecodable: list[str] = []
        self.progress = sys.stderr.isatty()
        self.newest: EventMessage | None = None
        self.at_newest: set[str] = set()  # ids scanned at the newest event's time

    def matches(self, message: EventMessage) -> bool:
        return all(k in message.kwargs and message.kwargs[k] == v for k, v in self.where.items())

    def show(self, message: EventMessage) -> None:
        self.emit(_json(event_row(message)) if self.args.json else event_line(message))

    def count_scanned(self) -> None:
        self.scanned += 1
        if self.progress and self.scanned % PROGRESS_EVERY == 0:
            print(f"scanned {self.scanned} events...", file=sys.stderr, flush=True)

    async def backlog(self) -> list[EventMessage]:
        """Up to --limit matching events, newest first."""
        found: list[EventMessage] = []
        async for message in merged_history(self.bus, self.pairs, self.since, self.until,
                                            self.undecodable):
            self.count_scanned()
            if self.newest is None:
                self.newest = message
            if message.time == self.newest.time:
                self.at_newest.add(message.id)
            if self.matches(message):
                found.append(message)
                if len(found) >= self.args.limit:
                    break
        return found

    async def follow(self, started: datetime) -> None:
        """Poll for events newer than those seen, oldest first, until --count are shown."""
        start = self.newest.time if self.newest and self.newest.time else started
        seen = set(self.at_newest)
        shown = 0
        while True:
            fresh = [m async for m in merged_history(self.bus, self.pairs, start, None)
                     if m.id not in seen]
            for message in reversed(fresh):
                seen.add(message.id)
                if message.time and message.time > start:
                    start = message.time
                    seen = {message.id}
                if self.matches(message):
                    self.show(message)
                    shown += 1
                    if self.args.count and shown >= self.args.count:
                        return
            await asyncio.sleep(POLL_SECONDS)

    async def run(self) -> int:
        started = datetime.now(timezone.utc) - timedelta(seconds=1)
        found = await self.backlog()
        for message in (reversed(found) if self.args.follow else found):
            self.show(message)
        if self.args.follow:
            names = ", ".join(f"{a}.{e}" for a, e in self.pairs)
            print(f"following {names} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            await self.follow(started)
        elif not found and not self.args.json:
            print(f"no events ({self.scanned} scanned{self.undecodable_note()})",
                  file=sys.stderr)
        elif self.undecodable and not self.args.json:
            print(f"({self.undecodable_note().lstrip(', ')} not shown)", file=sys.stderr)
        return 0

    def undecodable_note(self) -> str:
        """', N undecodable, first <id>' for the entries that could not be read, or ''."""
        ids = list(dict.fromkeys(self.undecodable))  # a shared stream reports once per pair
        if not ids:
            return ""
        return f", {len(ids)} undecodable entr{'y' if len(ids) == 1 else 'ies'}, " \
               f"first {ids[0]}"


def _filters(args: argparse.Namespace
             ) -> tuple[dict[str, Any], datetime | None, datetime | None]:
    """--where, --since and --until, parsed (UsageError when malformed)."""
    return (parse_pairs(args.where or [], "--where"),
            parse_moment(args.since) if args.since else None,
            parse_moment(args.until) if args.until else None)


def cmd_inspect(args: argparse.Namespace) -> int:
    """List recent events (read-only: no consumer group is joined)."""
    if args.follow and args.until:
        raise UsageError("--follow and --until do not go together")
    if args.limit < 1 or (args.count is not None and args.count < 1):
        raise UsageError("--limit and --count take a positive number")
    _filters(args)  # refuse malformed filters before loading anything

    def emit(line: str) -> None:
        print(line, flush=True)

    with client_bus(args) as bus:
        pairs = _pairs_to_inspect(args, bus)
        for api_name in sorted({api for api, _ in pairs}):
            refuse_memory(bus, api_name, "event", "inspect",
                          "would only ever see this process's own (empty) history")
        inspection = Inspection(args, bus, pairs, emit)
        try:
            return bus.client.run_sync(inspection.run())
        except NotImplementedError as exc:
            raise BusError(f"cannot inspect: {exc}") from None


# -- the parser ------------------------------------------------------------------------------


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `call`, `fire` and `inspect` to the `bus` subcommands."""
    for verb, kind, noun, handler, help_text, printed, example in (
        ("call", "RPC", "RPC", cmd_call, "call an RPC and print its result", "the result",
         "shop.price"),
        ("fire", "EVENT", "event", cmd_fire, "fire an event of an API the bus module registers",
         "the fired event", "shop.ordered"),
    ):
        sub = commands.add_parser(verb, parents=[common], help=help_text,
                                  description=f"{help_text[0].upper()}{help_text[1:]}.")
        sub.add_argument("target", metavar=f"API.{kind}",
                         help=f"the API and the {noun}'s name, e.g. {example}")
        sub.add_argument("arguments", nargs="*", default=[], metavar="KEY=VALUE",
                         help="arguments; values are JSON where they parse, strings "
                              "otherwise: n=3 name=ada tags='[\"a\"]'")
        sub.add_argument("-j", "--json", action="store_true", help=f"print {printed} as JSON")
        sub.add_argument("-t", "--timeout", type=positive_seconds, metavar="SECONDS",
                         help="give up after SECONDS (default: the API's configured timeout)")
        if verb == "call":
            sub.add_argument("-v", "--verbose", action="store_true",
                             help="on a remote error, print the remote traceback")
        else:
            sub.add_argument("--as-foreign", action="store_true",
                             help="fire an event of an API not registered here, straight on "
                                  "its event transport (no argument checks)")
        sub.set_defaults(handler=handler)

    inspect = commands.add_parser(
        "inspect", parents=[common], help="list recent events (read-only)",
        description="List recent events on the event transport, newest first, without "
                    "joining any listener group.")
    inspect.add_argument("-a", "--api", metavar="API", help="the API whose events to list")
    inspect.add_argument("-e", "--event", action="append", metavar="EVENT",
                         help="the event (API.EVENT, or EVENT with --api); repeatable")
    inspect.add_argument("--since", metavar="TIME",
                         help="only events at or after TIME (ISO datetime, or 30s/10m/2h/1d ago)")
    inspect.add_argument("--until", metavar="TIME", help="only events at or before TIME")
    inspect.add_argument("-w", "--where", action="append", metavar="KEY=VALUE",
                         help="only events with this argument value (JSON-parsed); repeatable")
    inspect.add_argument("-n", "--limit", type=int, default=50, metavar="N",
                         help="list at most N events (default 50)")
    inspect.add_argument("-f", "--follow", action="store_true",
                         help="then poll for new events until Ctrl-C (output in time order)")
    inspect.add_argument("--count", type=int, metavar="N",
                         help="with --follow: stop after N new events")
    inspect.add_argument("-j", "--json", action="store_true", help="print JSON lines")
    inspect.set_defaults(handler=cmd_inspect)


def positive_seconds(text: str) -> float:
    """A --timeout: a positive, finite number of seconds (`nan`, `inf` and `1e309` parse as
    floats but no timer can use them)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value

