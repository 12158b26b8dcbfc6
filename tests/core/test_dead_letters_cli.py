"""`bus dead-letters list|show|replay|purge` on a real Redis: what an operator types."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bus_core import Bus
from bus_core import dead_letters as engine
from bus_core.cli import main
from bus_core.dead_letters import Selection
from tests.apis import AuthApi
from tests.core.dead_letter_scenario import Flaky
from tests.helpers import eventually, serving
from tests.redis import conftest as redis_fixtures
from tests.redis.conftest import redis_config

# The Redis fixtures (a redis-server this run starts), used by name.
redis_server = redis_fixtures.redis_server
redis_url = redis_fixtures.redis_url
make_redis_bus = redis_fixtures.make_redis_bus


class Cli:
    """`bus dead-letters ...` through main(), from a folder without a bus module."""

    def __init__(self, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.config, self.capsys = str(config), capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["dead-letters", *args[:1], "-c", self.config, *args[1:]])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Cli:
    config = tmp_path / "bus.yaml"
    config.write_text(yaml.safe_dump(redis_config(redis_url)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUS_CONFIG", str(config))
    return Cli(config, capsys)


async def dead_letter_two(bus: Bus, flaky: Flaky) -> None:
    bus.client.register_api(AuthApi())
    bus.auth.user_registered.listen(flaky, listener_name="welcome")
    async with serving(bus):
        for name in ("ada", "bob"):
            await bus.auth.user_registered.fire_async(username=name, email=f"{name}@x")

        async def dead() -> bool:
            return len(await engine.list_dead_letters(bus.client, Selection(api="auth"))) == 2

        deadline = asyncio.get_running_loop().time() + 10
        while not await dead():
            assert asyncio.get_running_loop().time() < deadline, "never dead-lettered"
            await asyncio.sleep(0.02)


def test_list_show_replay_purge(cli: Cli, make_redis_bus: Callable[..., Bus]) -> None:
    flaky = Flaky()
    bus = make_redis_bus(max_deliveries=1)
    asyncio.run(dead_letter_two(bus, flaky))
    bus.client.close()

    code, out, _ = cli("list", "--api", "auth", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["kwargs"]["username"] for r in rows] == ["bob", "ada"]
    ada = rows[1]
    assert ada["group"] == "svc-welcome" and "cannot welcome ada" in ada["reason"]
    assert ada["delivery_count"] == 1 and ada["event"] == "user_registered"
    code, out, _ = cli("list", "-e", "auth.user_registered", "--limit", "1")
    assert code == 0 and len(out.splitlines()) == 1 and "bob" in out
    code, out, _ = cli("list", "--api", "auth", "--since", "1d", "--until", "1d")
    assert code == 0 and out == ""  # all are younger than a day ago
    code, out, _ = cli("list", "--api", "auth", "--since", "1960-01-01T00:00+00:00")
    assert code == 0 and len(out.splitlines()) == 2  # a time before 1970 is a time too
    code, out, _ = cli("list", "--api", "auth", "--until", "1969-12-31T00:00+00:00")
    assert code == 0 and out == ""
    code, out, _ = cli("show", ada["id"], "--api", "auth")
    assert code == 0 and "cannot welcome ada" in out and '"ada"' in out

    # The fixed listener gets the replay; a second replay of the same id delivers nothing.
    code, out, _ = cli("replay", ada["id"], "--api", "auth")
    assert code == 0 and f"{ada['id']}: replayed to svc-welcome as entry" in out
    code, _, err = cli("replay", ada["id"], "--api", "auth")  # gone from the dead letters
    assert code == 1 and f"no dead letter {ada['id']}" in err
    flaky.broken = False
    handler_bus = make_redis_bus(max_deliveries=1)

    async def handle() -> None:
        handler_bus.client.register_api(AuthApi())
        handler_bus.auth.user_registered.listen(flaky, listener_name="welcome")
        async with serving(handler_bus):
            await eventually(lambda: len(flaky.handled) == 1, timeout=10)

    asyncio.run(handle())
    assert flaky.handled[0].kwargs["username"] == "ada"
    assert flaky.handled[0].headers["bus-replay-of"] == ada["id"]

    code, out, _ = cli("purge", "--all", "--api", "auth")
    assert code == 0 and out.strip().endswith(": purged") and len(out.splitlines()) == 1
    code, out, err = cli("list", "--api", "auth")
    assert code == 0 and out == "" and "no dead letters" in err


def test_usage_errors(cli: Cli) -> None:
    code, _, err = cli("replay", "--api", "auth")
    assert code == 2 and "pass --all" in err
    code, _, err = cli("purge", "1-0", "--all", "--api", "auth")
    assert code == 2 and "not both" in err
    code, _, err = cli("list", "--since", "yesterday")
    assert code == 2 and "is not a time" in err
    code, _, err = cli("list", "-e", "no_dot_here")
    assert code == 2 and "does not name an event" in err
    code, _, err = cli("list", "--limit", "0")
    assert code == 2
    code, _, err = cli("list", "--api", "no such api")
    assert code == 2 and "is not an API name" in err
    code, _, err = cli("list", "--since", "99999999999d")
    assert code == 2 and "is too far back" in err


def test_memory_transport_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["dead-letters", "list", "--api", "auth"])
    assert code == 1 and "in-memory transport" in capsys.readouterr().err

