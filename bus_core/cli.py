"""The `bus` command: run a worker, call RPCs, fire and inspect events, list plugins, check
config, and plugin subcommands.

Every subcommand takes the same common options in the same place, after its name:
`-c/--config FILE` (or $BUS_CONFIG), `-b/--bus MODULE` (or $BUS_MODULE), `-l/--log-level`.
Exit codes: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import importlib
import inspect
import json
import logging
import os
import platform
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bus_core import cli_dead_letters, cli_messages, shell
from bus_core.client import Bus
from bus_core.config import Config, config_schema, load_config
from bus_core.errors import BusError
from bus_core.plugins import PluginInfo, PluginManager
from bus_core.redaction import redact_text, redact_url
from bus_core.transports import CheckNote

_SKIP_DIRS = {".git", ".hg", ".venv", "venv", "env", "node_modules", "__pycache__",
              "site-packages", "build", "dist", ".tox", ".nox", ".mypy_cache", ".pytest_cache"}
_SEARCH_DEPTH = 4
FEATURES = ("rpcs", "events", "tasks")
# What `bus config check --connect --role` names: what a service does with its transports.
CHECK_ROLES = ("call", "serve", "fire", "listen", "schema")
_LOADED_FROM: dict[int, str] = {}
logger = logging.getLogger("bus.cli")


class CommandFailed(BusError):
    """A subcommand could not do its job; the message says why (exit code 1)."""


# -- finding the bus module ------------------------------------------------------------------


def find_bus_module(root: Path) -> str | None:
    """The module name of the first `bus.py` found breadth-first under `root`."""
    queue: collections.deque[tuple[Path, int]] = collections.deque([(root, 0)])
    while queue:
        folder, depth = queue.popleft()
        candidate = folder / "bus.py"
        if candidate.is_file():
            relative = candidate.relative_to(root).with_suffix("")
            return ".".join(relative.parts)
        if depth >= _SEARCH_DEPTH:
            continue
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError:
            continue
        for child in children:
            if child.name not in _SKIP_DIRS and not child.name.startswith("."):
                queue.append((child, depth + 1))
    return None


def load_bus(module_name: str | None) -> Bus:
    """Import the bus module (`--bus`, then $BUS_MODULE, then the first bus.py found) and
    return the Bus it creates."""
    module_name = module_name or os.environ.get("BUS_MODULE") or None
    if module_name is None:
        module_name = find_bus_module(Path.cwd())
        if module_name is None:
            raise CommandFailed(
                "no bus module found: pass --bus some.module, set BUS_MODULE, or create a "
                "bus.py (with `bus = bus_core.create()`) in or under the current folder"
            )
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CommandFailed(f"cannot import bus module {module_name!r}: {exc}") from None
        raise CommandFailed(_import_failure(module_name, exc)) from None
    except BusError:
        raise
    except Exception as exc:
        raise CommandFailed(_import_failure(module_name, exc)) from None
    bus = getattr(module, "bus", None)
    if not isinstance(bus, Bus):
        bus = next((v for v in vars(module).values() if isinstance(v, Bus)), None)
    if bus is None:
        raise CommandFailed(
            f"module {module_name!r} creates no bus: add `bus = bus_core.create()` to it"
        )
    _LOADED_FROM[id(bus)] = module_name
    return bus


def bus_module_name(bus: Bus) -> str | None:
    """The module `load_bus` took `bus` from (None for a plain client)."""
    return _LOADED_FROM.get(id(bus))


def _import_failure(module_name: str, exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1]
    return (f"importing bus module {module_name!r} failed: {type(exc).__name__}: {exc}\n"
            f"  at {where.filename}:{where.lineno}\n"
            f"(run from the folder that holds the module, or name it with --bus / BUS_MODULE)")


def bus_or_bare_client(module_name: str | None) -> Bus:
    """For commands that work with or without the service's code (`call`, `inspect`,
    `schema ...`): the bus module's Bus when one is named (errors are errors) or found (one
    that fails to import is reported and skipped), else a plain client from $BUS_CONFIG."""
    import bus_core

    explicit = module_name or os.environ.get("BUS_MODULE")
    if explicit:
        return load_bus(explicit)
    if find_bus_module(Path.cwd()):
        try:
            return load_bus(None)
        except CommandFailed as exc:
            print(f"bus: warning: {exc}\nbus: carrying on without the bus module",
                  file=sys.stderr)
    return bus_core.create(service_name="bus-cli")


# -- subcommands -----------------------------------------------------------------------------


def _split_features(values: list[str] | None) -> set[str]:
    chosen: set[str] = set()
    for value in values or []:
        for item in value.split(","):
            item = item.strip()
            if item not in FEATURES:
                raise CommandFailed(f"unknown feature {item!r}: choose from {', '.join(FEATURES)}")
            chosen.add(item)
    return chosen


def cmd_run(args: argparse.Namespace) -> int:
    only, skip = _split_features(args.only), _split_features(args.skip)
    features = (only or set(FEATURES)) - skip
    if not features:
        raise CommandFailed("--only/--skip leave nothing to run")
    bus = load_bus(args.bus)
    _configure_logging(args.log_level or bus.client.config.bus.get("log_level") or "INFO",
                       bus.client.config.bus.get("log_format"))
    module_name = bus_module_name(bus)
    module = sys.modules.get(module_name or "")
    logger.info("bus module %s (%s)", module_name,
                getattr(module, "__file__", None) or "no file")
    return bus.client.run_worker(rpcs="rpcs" in features, events="events" in features,
                                 tasks="tasks" in features, event_loop=args.event_loop)


def _manager_for(args: argparse.Namespace) -> tuple[PluginManager, str | None]:
    """The plugin manager to report on: the bus module's if one is named, else a fresh one
    with the config applied (the config decides what is enabled)."""
    if args.bus or os.environ.get("BUS_MODULE"):
        client = load_bus(args.bus).client
        return client.plugins, None
    manager = PluginManager()
    config = load_config(None, manager)
    manager.apply_config(config.plugins, config.selected_transports(), config.bus["serializer"])
    return manager, os.environ.get("BUS_CONFIG")


def _plugin_row(info: PluginInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "distribution": info.distribution,
        "version": info.version,
        "enabled": info.enabled,
        "status": info.status,
        "builtin": info.builtin,
        "source": info.source,
        "module": info.module,
        "hooks": info.hooks,
        "error": info.error,
    }


def cmd_plugins_list(args: argparse.Namespace) -> int:
    manager, _ = _manager_for(args)
    infos = [i for i in manager.infos.values() if args.all or not i.builtin]
    rows = [_plugin_row(i) for i in sorted(infos, key=lambda i: i.name)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no plugins installed (pip install bus-memory, bus-redis, ...); "
              "--all shows the built-in ones")
        return 0
    table = [("NAME", "DISTRIBUTION", "VERSION", "ENABLED", "HOOKS")]
    for row in rows:
        enabled = "yes" if row["enabled"] else ("no" if row["status"] == "loaded"
                                                else row["status"])
        hooks = ", ".join(h.removeprefix("bus_") for h in row["hooks"]) or "-"
        table.append((row["name"], row["distribution"] or "-", row["version"] or "-", enabled,
                      hooks))
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[4])
    for row in rows:
        if row["error"]:
            print(f"\n{row['name']}: {row['status']}: {row['error']}", file=sys.stderr)
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    manager = PluginManager()
    print(json.dumps(config_schema(manager), indent=2))
    return 0


@dataclasses.dataclass
class _Configured:
    """One transport instance the config makes (as a client would: one per kind, name and
    options), and the config paths that select it."""

    kind: str
    name: str
    options: dict[str, Any]
    paths: list[str]
    instance: Any = None


def _configured_transports(config: Config, manager: PluginManager) -> list[_Configured]:
    """Build, without opening, every transport the config selects: a factory that refuses
    its options fails here, as it would on the first call of a running service."""
    found: dict[tuple[str, str, str], _Configured] = {}
    for path, kind, name in config.transport_selections():
        if path == "bus.schema.transport":
            options = config.schema_transport()[1]
        else:
            options = config.api(path.split(".")[1]).transport(kind)[1]
        key = (kind, name, json.dumps(options, sort_keys=True, default=str))
        if key in found:
            found[key].paths.append(path)
        else:
            found[key] = _Configured(kind, name, options, [path])
    serializer = manager.serializer(config.bus["serializer"])
    for item in found.values():
        entry = manager.transport(item.kind, item.name)
        try:
            item.instance = entry.factory(serializer=serializer,
                                          service_name=config.service_name,
                                          process_name=config.process_name, **item.options)
        except BusError as exc:
            raise CommandFailed(f"{item.paths[0]}: {exc}") from None
        except Exception as exc:  # a factory refusing its options
            raise CommandFailed(f"{item.paths[0]}: the {item.name} {item.kind} transport "
                                f"refuses its options: {type(exc).__name__}: "
                                f"{redact_text(str(exc))}") from None
    return list(found.values())


def _api_names(item: _Configured, config: Config, named: Sequence[str]) -> list[str]:
    """The APIs whose keys a transport's check probes: those whose `apis.<name>` selects
    it, plus `named` (--api) when `apis.default` does (it stands for any API); for the
    schema transport, every API of the config and `named`."""
    names: list[str] = []
    for path in item.paths:
        if path == "bus.schema.transport":
            names += [*config.api_names, *named]
        elif path.startswith("apis.default."):
            names += named
        else:
            names.append(path.split(".")[1])
    return list(dict.fromkeys(names))


async def _check_connection(item: _Configured, timeout: float,
                            api_names: Sequence[str] = ()) -> list[str]:
    """Open one transport, ask it to check itself, close it: the problems found, and its
    notes (`CheckNote`s). A `check()` that takes no `api_names` is called without them."""
    async def check() -> list[str]:
        await item.instance.open()
        try:
            try:
                takes_names = "api_names" in inspect.signature(item.instance.check).parameters
            except (TypeError, ValueError):
                takes_names = False
            answer = await (item.instance.check(api_names=list(api_names)) if takes_names
                            else item.instance.check())
            return [line if isinstance(line, CheckNote) else str(line) for line in answer]
        finally:
            await item.instance.close()

    try:
        return await asyncio.wait_for(check(), timeout)
    except asyncio.TimeoutError:
        return [f"no answer within {timeout:g}s"]
    except Exception as exc:
        return [f"{type(exc).__name__}: {exc}"]


def _verdict(answer: Sequence[str], roles: Sequence[str]) -> tuple[list[str], str, list[str]]:
    """(problems, the transport line's verdict, note lines) of one transport's check. A
    note is a problem when it says a role named with --role cannot be played, or, with
    --role, that the permissions could not be verified."""
    problems: list[str] = []
    notes: list[str] = []
    for line in answer:
        informs = isinstance(line, CheckNote) and not (
            line.role in roles or (line.unverified and bool(roles)))
        (notes if informs else problems).append(line)
    if problems:
        verdict = "; ".join(problems)
    elif any(isinstance(n, CheckNote) and n.unverified for n in notes):
        verdict = "reachable; permissions not verified (see below)"
    elif any(isinstance(n, CheckNote) and n.role for n in notes):
        verdict = "reachable; some roles refused (see below)"
    else:
        verdict = "ok"
    return problems, verdict, notes


def cmd_config_check(args: argparse.Namespace) -> int:
    """Everything `create()` and `bus run` would refuse, without the network; with
    --connect, each transport then checks its server too."""
    location = args.file or args.config or os.environ.get("BUS_CONFIG")
    if not location:
        raise CommandFailed("name the config to check: bus config check FILE")
    shown = redact_url(location)
    manager = PluginManager()
    config = load_config(location, manager)
    manager.apply_config(config.plugins, config.selected_transports(), config.bus["serializer"])
    transports = _configured_transports(config, manager)
    service = config.bus["service_name"] if config.document.get("bus", {}).get(
        "service_name") else "derived from the bus module's folder"
    print(f"{shown}: valid (service {service!r}, "
          f"{len(config.api_names)} API section(s), "
          f"plugins enabled: {', '.join(sorted(manager.enabled)) or 'none'})")
    if not args.connect:
        return 0
    roles: list[str] = args.role or []
    failed = 0
    role_notes = False
    for item in transports:
        answer = asyncio.run(_check_connection(item, args.timeout,
                                               _api_names(item, config, args.api or [])))
        problems, verdict, notes = _verdict(answer, roles)
        failed += bool(problems)
        print(f"{item.kind} transport {item.name} ({', '.join(item.paths)}): "
              f"{redact_text(verdict)}")
        for note in notes:
            print(f"  {redact_text(note)}")
            role_notes = role_notes or bool(getattr(note, "role", None))
    if role_notes and not roles:
        print("(a role a service does not play may be refused: name those it plays with "
              "--role, e.g. --role listen, to make their refusals problems)")
    if failed:
        raise CommandFailed(f"{shown}: {failed} of {len(transports)} transport(s) failed "
                            "their check")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from bus_core import __version__

    print(f"bus {__version__} (Python {platform.python_version()})")
    return 0


# -- the parser ------------------------------------------------------------------------------


# Where the kernel calls hook implementations (bus_core.plugins' facade, or pluggy's own
# caller when tracing or wrappers are on): the frame after the last of these is the hook's.
_HOOK_CALLERS = {("plugins.py", "call"), ("plugins.py", "_settle"), ("plugins.py", "_call"),
                 ("_callers.py", "_multicall")}


def hook_failure(exc: BaseException) -> str | None:
    """The one-line report of an exception a plugin's hook implementation raised (a "before"
    hook refusing a message with a plain ValueError, say), or None when `exc` did not come
    from a hook: then it is a bug, and its traceback is kept."""
    frames = traceback.extract_tb(exc.__traceback__)
    last = None
    for index, frame in enumerate(frames):
        if (Path(frame.filename).name, frame.name) in _HOOK_CALLERS:
            last = index
    if last is None or last + 1 >= len(frames):
        return None
    hook = frames[last + 1]
    return (f"{type(exc).__name__}: {exc} (raised by the hook implementation {hook.name} at "
            f"{hook.filename}:{hook.lineno})")


def common_options() -> argparse.ArgumentParser:
    """The options every subcommand takes (plugins use it for their nested actions)."""
    # Defaults are suppressed so that an option given to `bus plugins -c X list` is not
    # overwritten by the nested subcommand's own (absent) copy of it.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = common.add_argument_group("common options")
    group.add_argument("-c", "--config", metavar="FILE",
                       help="config file or URL (default: $BUS_CONFIG)")
    group.add_argument("-b", "--bus", metavar="MODULE",
                       help="the module that creates the bus (default: $BUS_MODULE, then the "
                            "first bus.py under the current folder)")
    group.add_argument("-l", "--log-level", metavar="LEVEL", type=str.upper,
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="DEBUG, INFO, WARNING or ERROR")
    return common


def build_parser(manager: PluginManager | None = None) -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="bus", description="Bus: RPCs and events between Python services.",
        epilog="Run `bus COMMAND --help` for a command's options.",
    )
    parser.add_argument("-V", "--version", action="store_true", help="print the version")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="run a worker: serve RPCs, "
                              "run listeners and scheduled tasks until SIGINT/SIGTERM")
    run.add_argument("-o", "--only", action="append", metavar="FEATURES",
                     help="run only these, comma-separated: rpcs, events, tasks")
    run.add_argument("-s", "--skip", action="append", metavar="FEATURES",
                     help="do not run these, comma-separated: rpcs, events, tasks")
    run.add_argument("--event-loop", choices=("asyncio", "uvloop"), default=None,
                     help="the worker's event loop (default: bus.event_loop, else asyncio; "
                          "uvloop needs bus-core[fast])")
    run.set_defaults(handler=cmd_run)

    plugins = commands.add_parser("plugins", parents=[common], help="installed plugins")
    plugin_commands = plugins.add_subparsers(dest="plugins_command", metavar="ACTION",
                                             required=True)
    listing = plugin_commands.add_parser("list", parents=[common],
                                         help="list installed plugins")
    listing.add_argument("-a", "--all", action="store_true",
                         help="include the kernel's built-in plugins")
    listing.add_argument("-j", "--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=cmd_plugins_list)

    config = commands.add_parser("config", parents=[common], help="the config file")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION",
                                            required=True)
    schema = config_commands.add_parser("schema", parents=[common],
                                        help="print the config's JSON Schema")
    schema.set_defaults(handler=cmd_config_schema)
    check = config_commands.add_parser(
        "check", parents=[common],
        help="check a config: everything create() and bus run would refuse")
    check.add_argument("file", nargs="?", metavar="FILE", help="the config to check")
    check.add_argument("--connect", action="store_true",
                       help="also connect with each configured transport and let it check "
                            "its server (reachability, credentials, version, permissions)")
    check.add_argument("--api", action="append", metavar="NAME",
                       help="with --connect: also check the keys of API NAME on the "
                            "transports apis.default selects (repeatable)")
    check.add_argument("--role", action="append", choices=CHECK_ROLES,
                       help="with --connect: a role this service plays (repeatable); a "
                            "transport whose user cannot play it fails the check")
    check.add_argument("-t", "--timeout", type=cli_messages.positive_seconds, default=10.0,
                       metavar="SECONDS", help="with --connect: seconds per transport "
                                               "(default 10)")
    check.set_defaults(handler=cmd_config_check)

    cli_messages.add_commands(commands, common)
    cli_dead_letters.add_commands(commands, common)
    shell.add_command(commands, common)

    version = commands.add_parser("version", parents=[common], help="print the version")
    version.set_defaults(handler=cmd_version)

    for entry in (manager.commands.values() if manager else ()):
        sub = commands.add_parser(entry.name, parents=[common],
                                  help=f"{entry.help} [plugin {entry.plugin_name}]")
        entry.setup(sub)
        sub.set_defaults(handler=entry.run)
    return parser


def _configure_logging(level: str, log_format: str | None = None) -> None:
    """Log at `level`, as text or JSON lines (`bus.log_format`; BUS_LOG_FORMAT overrides)."""
    from bus_core.logs import configure

    chosen = os.environ.get("BUS_LOG_FORMAT") or log_format or "text"
    if chosen not in ("text", "json"):
        raise CommandFailed(f"unknown log format {chosen!r}: use 'text' or 'json'")
    configure(level if isinstance(getattr(logging, level, None), int) else "INFO", chosen)


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: Any = None, line: str | None = None) -> None:
    """Warnings (a config setting ignored, a plugin that will not run) as the command's own
    one-line notes, not Python's file:line form."""
    print(f"bus: warning: {message}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return _main(argv)
    finally:
        warnings.showwarning = previous


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        manager = PluginManager()  # to learn the plugins' subcommands
    except BusError as exc:
        print(f"bus: error: {exc}", file=sys.stderr)
        return 1
    parser = build_parser(manager)
    args = parser.parse_args(argv)
    for name in ("config", "bus", "log_level"):
        if not hasattr(args, name):
            setattr(args, name, None)
    if args.version:
        return cmd_version(args)
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "config", None):
        os.environ["BUS_CONFIG"] = args.config
    if getattr(args, "log_level", None) and args.command != "run":
        _configure_logging(args.log_level)
    try:
        code = args.handler(args)
    except BusError as exc:
        print(f"bus: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `bus config schema | head`
        sys.stderr.close()
        return 0
    except Exception as exc:
        refusal = hook_failure(exc)
        if refusal is None:
            raise  # a bug: its traceback is what helps
        print(f"bus: error: {refusal}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
