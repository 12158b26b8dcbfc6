"""`bus shell`: run as a user would (piped input, and a real terminal for Tab completion),
plus the completer's answers."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bus_core
from bus_core import Api, Event, hookimpl
from bus_core.api import MISSING, ApiDefinition, Parameter, RpcDefinition
from bus_core.shell import BusCompleter
from tests.conftest import ROOT, memory_config
from tests.core.test_cli import BUS

pytestmark = pytest.mark.slow
QUICKSTART = ROOT / "examples" / "quickstart"


def shell(lines: str, *args: str, cwd: Path = QUICKSTART,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BUS, "shell", *args], input=lines, cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_calls_awaits_and_fires_at_the_prompt():
    result = shell(
        "bus.client.start_worker() and None\n"
        'bus.auth.check_password(username="admin", password="secret")\n'
        'await bus.auth.check_password.call_async(username="admin", password="guess")\n'
        "AuthApi.__name__\n"  # the bus module's names are in the namespace
        'bus.auth.user_registered.fire(username="ada", email="a@example.com").kwargs\n'
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(">>> ")[1:5] == ["", "True\n", "False\n", "'AuthApi'\n"]
    assert "{'is_admin': False, 'username': 'ada', 'email': 'a@example.com'}" in result.stdout
    assert "Bus shell: service 'quickstart', bus module bus" in result.stderr
    assert "APIs registered here: auth" in result.stderr


def test_bad_input_gets_one_readable_line_and_the_prompt_goes_on():
    result = shell(
        'bus.auth.check_password("admin", "secret")\n'
        "bus.auth.nope(x=1)\n"
        "async def broken():\n    return 1 / 0\n\n"
        "await broken()\n"
        "print('still here')\n",
        "-q",
    )
    assert result.returncode == 0
    assert result.stderr.splitlines()[:2] == [
        "InvalidArguments: bus.auth.check_password() takes keyword arguments only (2 "
        "positional given); call it as bus.auth.check_password(username=..., password=...)",
        "UnknownRpc: API 'auth' has no RPC 'nope'; its RPCs: check_password",
    ]
    # A user's own error shows the typed code's frames, none of the shell's.
    assert 'File "<bus shell>", line 2, in broken' in result.stderr
    assert "ZeroDivisionError: division by zero" in result.stderr
    assert "shell.py" not in result.stderr
    assert "still here" in result.stdout
    assert "Bus shell:" not in result.stderr  # -q


def test_a_path_shows_what_it_names():
    result = shell("bus.auth\nbus.auth.check_password\nbus.auth.user_registered\n", "-q")
    assert "<BusPath API auth: RPCs check_password(username, password); events " \
           "user_registered(username, email, is_admin=False)>" in result.stdout
    assert "<BusPath RPC auth.check_password(username, password)>" in result.stdout
    assert "<BusPath event auth.user_registered(username, email, is_admin=False)>" \
        in result.stdout


def test_a_missing_bus_module_is_an_error_not_a_prompt(tmp_path):
    result = shell("", "--bus", "no_such_module", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot import bus module 'no_such_module'" in result.stderr


class ShopApi(Api):
    ordered = Event(parameters=("order_id",))

    class Meta:
        name = "shop.orders"

    def place(self, sku: str) -> int:
        return 1


def test_completer_offers_apis_rpcs_and_events(broker_name):
    with bus_core.create(memory_config(broker_name)) as bus:
        bus.client.register_api(ShopApi())
        completer = BusCompleter({"bus": bus})

        def all_of(text: str) -> list[str]:
            found, state = [], 0
            while (match := completer.complete(text, state)) is not None:
                found.append(match)
                state += 1
            return found

        assert all_of("bus.sh") == ["bus.shop"]
        assert all_of("bus.shop.") == ["bus.shop.orders"]
        assert all_of("bus.shop.orders.") == ["bus.shop.orders.ordered",
                                              "bus.shop.orders.place("]
        assert all_of("bus.shop.orders.place.") == ["bus.shop.orders.place.call_async(",
                                                    "bus.shop.orders.place.describe("]
        assert all_of("bus.shop.orders.ordered.f") == [
            "bus.shop.orders.ordered.fire(", "bus.shop.orders.ordered.fire_async(",
            "bus.shop.orders.ordered.fire_many(", "bus.shop.orders.ordered.fire_many_async("]
        assert all_of("bus.shop.orders.pl") == ["bus.shop.orders.place("]
        assert all_of("bus.cl") == ["bus.client"]
        assert "bus.client.start_worker(" in all_of("bus.client.start_w")  # plain Python


class Terminal:
    """`bus shell` on a pseudo-terminal, as a person at a keyboard runs it."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.leader, follower = pty.openpty()
        self.process = subprocess.Popen(
            [*BUS, "shell", "-q"], cwd=cwd, stdin=follower, stdout=follower, stderr=follower,
            env={**os.environ, "TERM": "dumb", "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
        os.close(follower)
        self.shown = ""  # everything the terminal showed
        self.read_to = 0  # where the next expect() starts looking

    def type(self, keys: str) -> None:
        os.write(self.leader, keys.encode())

    def say(self, keys: str, shows: str) -> None:
        """Type `keys`, then wait until the terminal shows `shows`."""
        self.type(keys)
        self.expect(shows)

    def expect(self, text: str, timeout: float = 20) -> None:
        """Wait until the terminal shows `text` (after what earlier expects matched)."""
        deadline = time.monotonic() + timeout
        while (found := self.shown.find(text, self.read_to)) < 0:
            left = deadline - time.monotonic()
            ready = select.select([self.leader], [], [], max(left, 0))[0] if left > 0 else []
            chunk = b""
            if ready:
                try:
                    chunk = os.read(self.leader, 4096)
                except OSError:  # the shell closed the terminal
                    chunk = b""
            if not chunk:
                raise AssertionError(f"the terminal never showed {text!r}; it showed:\n"
                                     f"{self.shown!r}")
            self.shown += chunk.decode(errors="replace")
        self.read_to = found + len(text)

    def close(self) -> int | None:
        """Ctrl-D at the prompt; the exit code (None if it had to be killed)."""
        try:
            self.type("\x04")
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            os.close(self.leader)


@contextlib.contextmanager
def shell_in_terminal(cwd: Path, env: dict[str, str] | None = None) -> Iterator[Terminal]:
    """`bus shell` at its first prompt; left with Ctrl-D, which must exit 0."""
    terminal = Terminal(cwd, env)
    finished = False
    try:
        terminal.expect(">>> ")
        yield terminal
        finished = True
    finally:
        code = terminal.close()
    if finished:
        assert code == 0, terminal.shown


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_tab_completes_in_a_real_terminal():
    with shell_in_terminal(QUICKSTART) as terminal:
        terminal.say("bus.client.start_worker() and None\n", ">>> ")
        terminal.say("bus.au\t", "bus.auth")
        terminal.say(".check_p\t", ".check_password(")
        # The next prompt shows readline reads again.
        terminal.say('username="admin", password="secret")\n', "True\r\n>>> ")


class DescribesShop:
    """A plugin that knows an API this process does not register."""

    @hookimpl
    async def bus_describe_apis(self, client):
        rpc = RpcDefinition(name="price", parameters=(Parameter("sku", Any, MISSING),),
                            accepts_extra=False, return_type=Any, doc=None)
        shop = ApiDefinition(name="shop", version=1, rpcs={"price": rpc}, events={}, doc=None)
        mine = ApiDefinition(name="shop.orders", version=1, rpcs={}, events={}, doc=None)
        return {"shop": shop, "shop.orders": mine}


async def test_plugins_describe_remote_apis_for_help_and_completion(make_bus):
    bus = make_bus(plugins=[DescribesShop()])
    bus.client.register_api(ShopApi())
    assert dir(bus.shop) == ["orders"]  # before asking: only what is registered here
    known = await bus.client.describe_apis()
    assert sorted(known) == ["shop", "shop.orders"]
    assert known["shop.orders"] is ShopApi.definition  # registered here: ours wins
    assert sorted(bus.client.described) == ["shop"]
    assert dir(bus.shop) == ["orders", "price"]
    assert repr(bus.shop.price) == "<BusPath RPC shop.price(sku)>"
    # Described is not registered: arguments are not checked against it.
    assert bus.client.check_rpc_arguments("shop", "price", {"bad": 1}) is None


async def test_plugins_that_are_not_enabled_are_not_asked(make_bus):
    bus = make_bus()
    bus.client.plugins.register(DescribesShop(), "describes-shop", enabled=False)
    assert await bus.client.describe_apis() == {}
    bus.client.plugins.register(DescribesShop(), "describes-shop-too", enabled=True)
    assert sorted(await bus.client.describe_apis()) == ["shop", "shop.orders"]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_ctrl_c_stops_a_long_await_and_keeps_the_prompt():
    with shell_in_terminal(QUICKSTART) as terminal:
        # Ctrl-C once the await runs (the line's own print says so: the loop has it)
        terminal.say("print('sleeping'); await asyncio.sleep(60)\n", "sleeping\r\n")
        terminal.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        terminal.expect("KeyboardInterrupt")
        terminal.expect(">>> ")
        terminal.say("6 * 7\n", "42\r\n>>> ")


def test_leaving_drains_a_worker_started_at_the_prompt_before_closing(tmp_path):
    (tmp_path / "bus.py").write_text(
        "import bus_core\n"
        "from bus_core import Api, hookimpl\n"
        "class Order:\n"
        "    @hookimpl\n"
        "    def bus_worker_stopping(self):\n"
        "        print('worker stopping', flush=True)\n"
        "    @hookimpl\n"
        "    def bus_client_stopping(self):\n"
        "        print('client stopping', flush=True)\n"
        "bus = bus_core.create(plugins=[Order()])\n")
    result = shell("bus.client.start_worker() and None\n", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.replace(">>> ", "").splitlines() if line]
    assert lines.index("worker stopping") < lines.index("client stopping"), lines


def test_ctrl_c_before_the_loop_takes_an_await_leaves_nothing_unawaited(monkeypatch):
    import warnings

    from bus_core.shell import ShellLoop

    shell_loop = ShellLoop()
    try:
        def interrupted(coro):
            raise KeyboardInterrupt  # the signal lands before the loop was handed anything

        monkeypatch.setattr(shell_loop._thread, "run", interrupted)

        async def typed() -> None:
            pass

        awaitable = typed()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(KeyboardInterrupt):
                shell_loop.run(awaitable)
            del awaitable
            import gc
            gc.collect()
        assert [w for w in caught if "never awaited" in str(w.message)] == []
    finally:
        shell_loop.close()
