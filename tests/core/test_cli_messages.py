"""`bus call`, `bus fire` and `bus inspect`, run as subprocesses against a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from bus_core.cli import main
from bus_core.cli_messages import UsageError, parse_moment, parse_pairs, split_target
from tests.core.test_cli import Running
from tests.redis.conftest import RedisServer, free_port, redis_config

pytestmark = pytest.mark.slow
BUS = [sys.executable, "-m", "bus_core.cli"]

SERVICE = '''
import bus_core
from bus_core import Api, Event

class ShopApi(Api):
    ordered = Event(parameters=("item", "qty"))
    refunded = Event(parameters=("item",))

    class Meta:
        name = "shop"

    def price(self, item: str, qty: int = 1) -> dict:
        return {"item": item, "total": 2.5 * qty}

    def tags(self, tags: list) -> list:
        return sorted(tags)

    def fail(self) -> None:
        raise ValueError("out of stock")

bus = bus_core.create(service_name="shop_service")
bus.client.register_api(ShopApi())
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    redis_server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    redis_server.start()
    yield redis_server
    redis_server.stop()


@pytest.fixture
def shop(tmp_path: Path, server: RedisServer) -> Path:
    """A service folder (bus.py) and a BUS_CONFIG pointing at the emptied test Redis."""
    with server.client() as client:
        client.flushall()
    (tmp_path / "bus.py").write_text(textwrap.dedent(SERVICE))
    (tmp_path / "bus.yaml").write_text(yaml.safe_dump(redis_config(server.url)))
    return tmp_path


def env_for(folder: Path) -> dict[str, str]:
    return {**os.environ, "BUS_CONFIG": str(folder / "bus.yaml"), "PYTHONUNBUFFERED": "1"}


def bus(folder: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BUS, *args], cwd=cwd or folder, env=env_for(folder),
                          capture_output=True, text=True, timeout=30)


def test_argument_parsing():
    assert parse_pairs(["n=3", "name=ada", 'tags=["a"]', "eq=a=b", "t=true"]) == {
        "n": 3, "name": "ada", "tags": ["a"], "eq": "a=b", "t": True}
    for bad in (["novalue"], ["=3"], ["a b=1"]):
        with pytest.raises(UsageError):
            parse_pairs(bad)
    assert split_target("my.api.rpc", "rpc") == ("my.api", "rpc")
    for bad in ("rpc", "api.", ".rpc", "a..b", "a.b-c"):
        with pytest.raises(UsageError):
            split_target(bad, "rpc")
    now = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    assert parse_moment("10m", now) == now - timedelta(minutes=10)
    assert parse_moment("2h", now) == now - timedelta(hours=2)
    assert parse_moment("2026-01-01T10:00:00Z") == datetime(2026, 1, 1, 10, tzinfo=timezone.utc)
    with pytest.raises(UsageError):
        parse_moment("yesterday")


def test_usage_errors_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no bus module here
    monkeypatch.delenv("BUS_CONFIG", raising=False)
    monkeypatch.delenv("BUS_MODULE", raising=False)
    for args in (["call", "shop.price", "item"], ["call", "noapi"], ["fire", "shop.", "a=1"],
                 ["inspect"], ["inspect", "--event", "ordered"], ["inspect", "--api", "shop"],
                 ["inspect", "-e", "shop.ordered", "--since", "soon"],
                 ["inspect", "-e", "shop.ordered", "-f", "--until", "1h"]):
        assert main(args) == 2, args
        assert capsys.readouterr().err.startswith("bus: error: "), args


def test_call_against_a_running_worker(shop):
    other = shop / "elsewhere"  # no bus module here: a plain client, configured by BUS_CONFIG
    other.mkdir()
    worker = Running(["run"], cwd=shop, env={"BUS_CONFIG": str(shop / "bus.yaml")})
    try:
        worker.wait_for("serving APIs")
        result = bus(shop, "call", "shop.price", "item=tea", "qty=3", cwd=other)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"item": "tea", "total": 7.5}
        result = bus(shop, "call", "shop.tags", 'tags=["b", "a"]', "--json")
        assert result.returncode == 0, result.stderr
        assert result.stdout == '["a", "b"]\n'

        result = bus(shop, "call", "shop.fail", cwd=other)
        assert result.returncode == 1
        assert "shop.fail() raised ValueError: out of stock" in result.stderr
        assert "Traceback" not in result.stderr
        verbose = bus(shop, "call", "shop.fail", "-v", cwd=other)
        assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    finally:
        worker.stop()
    result = bus(shop, "call", "nobody.home", "-t", "0.5", cwd=other)
    assert result.returncode == 1
    assert "got no result within 0.5s" in result.stderr


def test_fire_then_inspect_then_follow(shop, server):
    fired = [bus(shop, "fire", "shop.ordered", "item=tea", "qty=1"),
             bus(shop, "fire", "shop.ordered", "item=cake", "qty=2", "--json"),
             bus(shop, "fire", "shop.refunded", "item=tea")]
    assert [r.returncode for r in fired] == [0, 0, 0], [r.stderr for r in fired]
    assert fired[0].stdout.startswith("fired shop.ordered (id ")
    assert json.loads(fired[1].stdout)["kwargs"] == {"item": "cake", "qty": 2}

    elsewhere = shop / "elsewhere"
    elsewhere.mkdir()
    refused = bus(shop, "fire", "shop.ordered", "item=x", "qty=1", cwd=elsewhere)
    assert refused.returncode == 1 and "--as-foreign" in refused.stderr
    foreign = bus(shop, "fire", "shop.ordered", "item=pie", "qty=5", "--as-foreign",
                  cwd=elsewhere)
    assert foreign.returncode == 0, foreign.stderr

    listed = bus(shop, "inspect", "--api", "shop", "--json")  # the bus module knows its events
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["event"], r["kwargs"]["item"]) for r in rows] == [
        ("ordered", "pie"), ("refunded", "tea"), ("ordered", "cake"), ("ordered", "tea")]
    assert all(r["native_id"] and r["time"] and r["api"] == "shop" for r in rows)

    readable = bus(shop, "inspect", "-e", "shop.ordered", "--where", "qty=2", cwd=elsewhere)
    assert readable.returncode == 0, readable.stderr
    assert readable.stdout.count("\n") == 1 and "shop.ordered" in readable.stdout
    assert 'item="cake"' in readable.stdout
    assert bus(shop, "inspect", "-e", "shop.ordered", "--since", "1h", "--limit", "2",
               "--json", cwd=elsewhere).stdout.count("\n") == 2
    none = bus(shop, "inspect", "-e", "shop.ordered", "--until", "1h", cwd=elsewhere)
    assert none.returncode == 0 and none.stdout == "" and "no events" in none.stderr

    follower = Running(["inspect", "-a", "shop", "-e", "ordered", "-e", "refunded", "-f",
                        "--count", "2", "--where", "item=new", "--json"], cwd=elsewhere,
                       env={"BUS_CONFIG": str(shop / "bus.yaml")})
    try:
        follower.wait_for("following")
        fire_new = [bus(shop, "fire", "shop.ordered", "item=new", "qty=7"),
                    bus(shop, "fire", "shop.refunded", "item=old"),
                    bus(shop, "fire", "shop.refunded", "item=new")]
        assert [r.returncode for r in fire_new] == [0, 0, 0]
        first = json.loads(follower.wait_for('"item": "new"'))
        second = json.loads(follower.wait_for('"item": "new"'))
        assert (first["event"], second["event"]) == ("ordered", "refunded")
        assert follower.process.wait(timeout=10) == 0
    finally:
        if follower.process.poll() is None:
            follower.stop()

    with server.client() as client:
        assert client.xinfo_groups("shop.*:stream") == []


def test_on_the_in_memory_default_call_fire_and_inspect_say_why_they_cannot_work(tmp_path):
    (tmp_path / "bus.py").write_text(textwrap.dedent(SERVICE))
    for args, outcome in ((["call", "shop.price", "item=tea"], "serves nothing"),
                          (["fire", "shop.ordered", "item=tea", "qty=1"], "no other process"),
                          (["inspect", "-e", "shop.ordered", "-f"], "empty) history")):
        result = subprocess.run([*BUS, *args], cwd=tmp_path, capture_output=True, text=True,
                                timeout=30, env={k: v for k, v in os.environ.items()
                                                 if k != "BUS_CONFIG"})
        assert result.returncode == 1, args
        assert "API 'shop' is on the in-memory transport" in result.stderr, args
        assert outcome in result.stderr, args


def test_with_redis_down_each_command_says_so_in_one_line(tmp_path):
    (tmp_path / "bus.py").write_text(textwrap.dedent(SERVICE))
    config = redis_config(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    config["plugins"] = {"state": {"enabled": True}}
    (tmp_path / "bus.yaml").write_text(yaml.safe_dump(config))
    for args in (["call", "shop.price", "item=tea"], ["fire", "shop.ordered", "item=t", "qty=1"],
                 ["inspect", "-e", "shop.ordered"], ["inspect", "-a", "shop"], ["state"]):
        result = bus(tmp_path, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert "is unreachable" in result.stderr and "Traceback" not in result.stderr, args
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def test_inspect_refuses_a_misspelled_event_of_a_known_api(shop):
    result = bus(shop, "inspect", "-e", "shop.orderd")
    assert result.returncode == 2
    assert "API 'shop' has no event 'orderd'; its events: ordered" in result.stderr


def test_call_timeout_says_where_it_came_from(shop):
    result = bus(shop, "call", "shop.price", "item=tea", "-t", "0.3")  # no worker runs
    assert result.returncode == 1
    assert ("shop.price() got no result within 0.3s (--timeout): no worker serving API 'shop' "
            "answered in time") in result.stderr


def test_inspect_says_how_many_entries_it_could_not_decode(shop, server):
    with server.client() as client:  # what a broken peer wrote, between two good events
        assert bus(shop, "fire", "shop.ordered", "item=tea", "qty=1").returncode == 0
        bad = [client.xadd("shop.*:stream", {"id": "x", "api_name": "shop",
                                             "event_name": "ordered", "version": "1",
                                             ":item": "{not json"}) for _ in range(2)]
    elsewhere = shop / "elsewhere"
    elsewhere.mkdir()
    shown = bus(shop, "inspect", "-e", "shop.ordered", cwd=elsewhere)
    assert shown.returncode == 0, shown.stderr
    assert 'item="tea"' in shown.stdout
    assert f"2 undecodable entries, first {bad[-1].decode()}" in shown.stderr  # newest first
    nothing = bus(shop, "inspect", "-e", "shop.ordered", "--where", "item=cake", cwd=elsewhere)
    assert "no events (3 scanned" not in nothing.stderr  # undecodable ones are not scanned
    assert "no events (1 scanned, 2 undecodable entries" in nothing.stderr, nothing.stderr
