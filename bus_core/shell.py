"""`bus shell`: a Python prompt with the bus loaded, where `await` works and Tab completes
API, RPC and event names.

    $ bus shell
    >>> bus.auth.check_password(username="admin", password="secret")
    True
    >>> await bus.auth.check_password.call_async(username="admin", password="secret")
    True

Sync calls go through the client's own background loop, as anywhere else. Awaited code runs
on the shell's loop, in a thread of its own, so a long `await` can be stopped with Ctrl-C
without losing the prompt.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import code
import concurrent.futures
import inspect
import rlcompleter
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any

from bus_core.client import Bus, BusPath
from bus_core.errors import BusError
from bus_core.runtime import LoopThread

DESCRIBE_TIMEOUT = 5.0
_PATH_METHODS = frozenset({"call_async", "fire", "fire_async", "fire_many", "fire_many_async",
                           "listen", "listen_async",
                           "describe"})


class ShellLoop:
    """An event loop in a daemon thread that runs what is awaited at the prompt."""

    def __init__(self) -> None:
        self._thread = LoopThread("bus-shell-loop")

    def run(self, awaitable: Any) -> Any:
        """Wait for `awaitable` on the shell loop; Ctrl-C cancels it and re-raises."""
        runner = _awaited(awaitable)
        try:
            return self._thread.run(runner)
        except concurrent.futures.CancelledError:  # cancelled from inside: as Ctrl-C
            raise KeyboardInterrupt from None
        except KeyboardInterrupt:
            # Ctrl-C before the loop took it: it never starts (and no "never awaited").
            if inspect.getcoroutinestate(runner) == inspect.CORO_CREATED:
                runner.close()
                if inspect.iscoroutine(awaitable):
                    awaitable.close()
            raise

    def close(self) -> None:
        self._thread.stop()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class BusCompleter(rlcompleter.Completer):
    """Python completion, except that on the bus and its paths it offers the API, RPC and
    event names the client knows (registered here, or described by a plugin such as
    bus-schema), with `(` after RPCs and methods only."""

    def attr_matches(self, text: str) -> list[str]:
        head, _, prefix = text.rpartition(".")
        target = _evaluate(head, self.namespace)
        if not isinstance(target, (Bus, BusPath)):
            return super().attr_matches(text)
        rpcs = _rpc_names(target)
        matches = []
        for name in dir(target):
            if name.startswith(prefix) and not name.startswith("_"):
                callable_ = name in rpcs or name in _PATH_METHODS
                matches.append(f"{head}.{name}{'(' if callable_ else ''}")
        return matches


def _evaluate(expression: str, namespace: dict[str, Any]) -> Any:
    """The value of a dotted name like `bus.auth`, found without calling anything."""
    parts = expression.split(".")
    if not parts or not all(part.isidentifier() for part in parts):
        return None
    value = namespace.get(parts[0])
    for part in parts[1:]:
        if value is None or not isinstance(value, (Bus, BusPath)):
            return None
        value = getattr(value, part, None)
    return value


def _rpc_names(target: Bus | BusPath) -> set[str]:
    if isinstance(target, Bus):
        return set()
    definition = target._client.known_definition(".".join(target._parts))
    return set(definition.rpcs) if definition else set()


class BusConsole(code.InteractiveConsole):
    """The interactive console, compiling with top-level `await` allowed."""

    def __init__(self, namespace: dict[str, Any], shell_loop: ShellLoop) -> None:
        super().__init__(namespace, filename="<bus shell>")
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self.shell_loop = shell_loop

    def runcode(self, code_object: types.CodeType) -> None:
        try:
            if code_object.co_flags & inspect.CO_COROUTINE:
                # Top-level await: evaluating gives a coroutine that runs the whole input.
                self.shell_loop.run(eval(code_object, self.locals))
            else:
                exec(code_object, self.locals)
        except SystemExit:
            raise
        except KeyboardInterrupt:
            self.write("KeyboardInterrupt\n")
        except BaseException:
            self.showtraceback()

    def showtraceback(self) -> None:
        """A bus error as its one readable message (a remote error with the remote
        traceback); anything else as a traceback of the typed code and what it called,
        without the shell's own frames."""
        exc_type, exc, tb = sys.exc_info()
        if exc is None or exc_type is None:
            return
        if isinstance(exc, BusError):
            self.write(f"{exc_type.__name__}: {exc}\n")
            return
        while tb is not None and tb.tb_frame.f_code.co_filename != self.filename:
            tb = tb.tb_next
        self.write("".join(traceback.format_exception(exc_type, exc, tb)))


def _install_completion(namespace: dict[str, Any]) -> Callable[[], None]:
    """Tab completion with readline where the platform has it; returns an undo."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline: no completion, the prompt still works
        return lambda: None
    previous = readline.get_completer()
    readline.set_completer(BusCompleter(namespace).complete)
    readline.set_completer_delims(" \t\n`~!@#$%^&*()-=+[{]}\\|;:'\",<>/?")
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    return lambda: readline.set_completer(previous)


def banner(bus: Bus, module_name: str | None) -> str:
    client = bus.client
    local = sorted(client.apis)
    remote = sorted(client.described)
    lines = [
        f"Bus shell: service {client.service_name!r}"
        + (f", bus module {module_name}" if module_name else ", no bus module"),
        f"APIs registered here: {', '.join(local) or 'none'}",
    ]
    if remote:
        lines.append(f"APIs from the schema: {', '.join(remote)}")
    if client.apis and client.config.api("default").transport("rpc")[0] == "memory":
        lines.append("The in-memory transport reaches only this process: "
                     "bus.client.start_worker() serves the APIs registered here.")
    lines += [
        "bus.API.RPC(key=value) calls; await bus.API.RPC.call_async(...) works here;",
        "bus.API.EVENT.fire(...) fires; Tab completes; `bus.API` shows its RPCs and events;",
        "Ctrl-D leaves.",
    ]
    return "\n".join(lines)


def describe_known_apis(bus: Bus, shell_loop: ShellLoop) -> None:
    """Ask the plugins (bus-schema) which APIs exist, within DESCRIBE_TIMEOUT."""
    try:
        shell_loop.run(asyncio.wait_for(bus.client.describe_apis(), DESCRIBE_TIMEOUT))
    except (TimeoutError, asyncio.TimeoutError):
        print(f"bus shell: warning: the schema did not load within {DESCRIBE_TIMEOUT:g}s; "
              "completion knows only the APIs registered here", file=sys.stderr)
    except Exception as exc:
        print(f"bus shell: warning: describing the known APIs failed ({type(exc).__name__}: "
              f"{exc}); completion knows only the APIs registered here", file=sys.stderr)


def cmd_shell(args: argparse.Namespace) -> int:
    from bus_core.cli import bus_module_name, bus_or_bare_client

    bus = bus_or_bare_client(args.bus)
    module_name = bus_module_name(bus)
    module = sys.modules.get(module_name) if module_name else None
    namespace: dict[str, Any] = {
        name: value for name, value in vars(module).items() if not name.startswith("_")
    } if module is not None else {}
    namespace.update({"__name__": "__console__", "__doc__": None, "bus": bus,
                      "asyncio": asyncio})
    shell_loop = ShellLoop()
    undo_completion: Callable[[], None] = lambda: None  # noqa: E731
    try:
        describe_known_apis(bus, shell_loop)
        if sys.stdin.isatty():
            undo_completion = _install_completion(namespace)
        console = BusConsole(namespace, shell_loop)
        console.interact(banner="" if args.quiet else banner(bus, module_name),
                         exitmsg="")
    finally:
        undo_completion()
        try:
            # A worker started at the prompt drains while its transports are still open.
            bus.client.stop_worker()
            shell_loop.run(bus.client.close_async())
        finally:
            bus.close()
            shell_loop.close()
    return 0


def add_command(commands: Any, common: argparse.ArgumentParser) -> None:
    shell = commands.add_parser(
        "shell", parents=[common], help="a Python prompt with the bus loaded",
        description="A Python prompt with `bus` loaded from the bus module and config: call "
                    "RPCs, fire events, `await` at the prompt, Tab to complete names.")
    shell.add_argument("-q", "--quiet", action="store_true", help="no banner")
    shell.set_defaults(handler=cmd_shell)
