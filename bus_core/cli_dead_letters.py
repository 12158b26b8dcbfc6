"""`bus dead-letters list|show|replay|purge`: events that failed, seen and dealt with.

    bus dead-letters list --api shop --since 1h     # newest first, with reason and count
    bus dead-letters show 1795847435387-0 --api shop
    bus dead-letters replay 1795847435387-0 --api shop   # to the listener that failed
    bus dead-letters replay --all -e shop.order_placed  # every one of a filtered set
    bus dead-letters purge --all --api shop --until 1d
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import datetime
from typing import Any

from bus_core import dead_letters
from bus_core.cli_messages import (
    UsageError,
    _json,
    client_bus,
    parse_moment,
    refuse_memory,
    split_target,
)
from bus_core.dead_letters import Selection
from bus_core.messages import valid_api_name
from bus_core.transports import DeadLetter


def moment(text: str) -> datetime:
    """`parse_moment`, with a time too far back or ahead for a datetime (`99999999d`) a
    UsageError like any other malformed time."""
    try:
        return parse_moment(text)
    except (OverflowError, ValueError):
        raise UsageError(f"{text!r} is too far back or ahead to be a time") from None


def _selection(args: argparse.Namespace) -> Selection:
    """The filters, parsed (UsageError when malformed)."""
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit takes a positive number")
    if args.api is not None and not valid_api_name(args.api):
        raise UsageError(f"{args.api!r} is not an API name (e.g. shop or shop.orders)")
    events: list[tuple[str, str]] = []
    for event in args.event or []:
        events.append((args.api, event) if args.api and "." not in event
                      else split_target(event, "event"))
    return Selection(api=args.api if not events else None, events=events,
                     since=moment(args.since) if args.since else None,
                     until=moment(args.until) if args.until else None,
                     limit=args.limit)


def who() -> str:
    """Who runs the command, for the log of replays and purges."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user} (bus dead-letters, pid {os.getpid()})"


def letter_line(letter: DeadLetter) -> str:
    """One dead letter as one readable line."""
    moment = letter.time.isoformat(timespec="seconds") if letter.time else "-"
    name = f"{letter.api_name or '?'}.{letter.event_name or '?'}"
    count = "-" if letter.delivery_count is None else str(letter.delivery_count)
    return f"{letter.id}  {moment}  {name}  {letter.group}  x{count}  {letter.reason}"


def _show(letter: DeadLetter) -> str:
    row = dead_letters.letter_row(letter)
    width = max(len(key) for key in row)
    return "\n".join(f"{key.ljust(width)}  {value if isinstance(value, str) else _json(value)}"
                     for key, value in row.items())


def _refuse_memory(bus: Any, selection: Selection) -> None:
    apis = {selection.api} if selection.api else {a for a, _ in selection.events}
    for api_name in sorted(a for a in apis if a):
        refuse_memory(bus, api_name, "event", "dead-letters",
                      "would only ever see this process's own (empty) dead letters")


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """Run one `bus dead-letters` action."""
    selection = _selection(args)
    action = args.dead_letters_action
    ids: list[str] = getattr(args, "ids", None) or []
    if action in ("replay", "purge") and not ids and not args.all:
        raise UsageError(f"name the dead letters to {action} by id, or pass --all to "
                         f"{action} every one the filters select")
    if action in ("replay", "purge") and ids and args.all:
        raise UsageError("give ids or --all, not both")
    with client_bus(args) as bus:
        _refuse_memory(bus, selection)
        client = bus.client
        if action == "list":
            letters = client.run_sync(dead_letters.list_dead_letters(client, selection))
            for letter in letters:
                print(_json(dead_letters.letter_row(letter)) if args.json
                      else letter_line(letter))
            if not letters and not args.json:
                print("no dead letters", file=sys.stderr)
            return 0
        if action == "show":
            (letter,) = client.run_sync(dead_letters.find(client, [args.id], selection))
            print(_json(dead_letters.letter_row(letter), indent=2) if args.json
                  else _show(letter))
            return 0
        if ids:
            letters = client.run_sync(dead_letters.find(client, ids, selection))
        else:
            letters = client.run_sync(dead_letters.list_dead_letters(client, selection))
        run = dead_letters.replay if action == "replay" else dead_letters.purge
        outcomes = client.run_sync(run(client, letters, who()))
    failed = 0
    for outcome in outcomes:
        letter = outcome.letter
        if args.json:
            print(_json({"id": letter.id, "stream": letter.stream, "done": outcome.done,
                         "new_id": outcome.new_id, "error": outcome.error}))
        elif outcome.error:
            print(f"{letter.id}: not replayed: {outcome.error}")
        elif not outcome.done:
            print(f"{letter.id}: already replayed or purged")
        elif action == "replay":
            print(f"{letter.id}: replayed to {letter.group} as entry {outcome.new_id}")
        else:
            print(f"{letter.id}: purged")
        failed += bool(outcome.error)
    if not outcomes and not args.json:
        print(f"no dead letters to {action}", file=sys.stderr)
    return 1 if failed else 0


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `dead-letters` and its actions to the `bus` subcommands."""
    filters = argparse.ArgumentParser(add_help=False)
    group = filters.add_argument_group("filters")
    group.add_argument("-a", "--api", metavar="API", help="only this API's dead letters")
    group.add_argument("-e", "--event", action="append", metavar="EVENT",
                       help="only this event (API.EVENT, or EVENT with --api); repeatable")
    group.add_argument("--since", metavar="TIME", help="dead-lettered at or after TIME (ISO "
                       "datetime, or 30s/10m/2h/1d ago)")
    group.add_argument("--until", metavar="TIME", help="dead-lettered at or before TIME")
    group.add_argument("-n", "--limit", type=int, metavar="N",
                       help="at most N, newest first")
    group.add_argument("-j", "--json", action="store_true", help="print JSON lines")

    top = commands.add_parser(
        "dead-letters", parents=[common], help="list, show, replay or purge dead letters",
        description="Events that kept failing (or could not be read) are dead-lettered per "
                    "listener. List them, look at one, replay them to the listener that "
                    "failed (once fixed), or purge them.")
    actions = top.add_subparsers(dest="dead_letters_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[common, filters],
                                 help="list dead letters, newest first")
    listing.set_defaults(handler=cmd_dead_letters)
    show = actions.add_parser("show", parents=[common, filters], help="show one dead letter")
    show.add_argument("id", metavar="ID", help="the dead letter's id (from list)")
    show.set_defaults(handler=cmd_dead_letters)
    for verb, text in (("replay", "deliver again to the listener that dead-lettered them "
                                  "(each at most once)"),
                       ("purge", "delete for good")):
        sub = actions.add_parser(verb, parents=[common, filters],
                                 help=f"{verb} dead letters: {text}")
        sub.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids (from list)")
        sub.add_argument("--all", action="store_true",
                         help=f"{verb} every dead letter the filters select")
        sub.set_defaults(handler=cmd_dead_letters)
