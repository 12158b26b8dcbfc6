"""The Redis ACL rules of docs/reference/redis-transport.md, proved on a real server.

The rules are read from the page itself (each `<!-- acl-role: NAME -->` fenced block), so the
page and these tests cannot disagree. Every role's real work runs through Bus as that role's
user; afterwards `ACL LOG` must be empty, which also catches refusals Bus only logs (the
forgetting of idle consumers, a lock, `CLIENT SETINFO`). Then the negatives: what each user
must not be able to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from bus_schema.plugin import store_for
from bus_state import read_workers

import bus_core
from bus_core import Api, Bus, Event, EventMessage, RemoteError, TransportError
from bus_core.cli import main
from bus_core.cli_messages import merged_history
from tests.apis import AuthApi
from tests.helpers import WAIT, eventually, serving
from tests.redis.conftest import RedisServer, free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "reference" / "redis-transport.md"
ROLE_BLOCK = re.compile(r"<!-- acl-role: ([\w-]+) -->\n```\n(.*?)```", re.DOTALL)
ROLES = {"producer", "consumer", "consumer-metrics", "caller", "worker", "state-announcer",
         "schema", "reader"}
STREAM = "auth.*:stream"
DEAD = f"{STREAM}:dead"
GROUP = "mailer-welcome"


def documented_rules() -> dict[str, list[list[str]]]:
    """Role -> its `ACL SETUSER` commands, split into arguments as redis-cli splits them
    (bare words, and '...' kept literally)."""
    rules = {role: [shlex.split(line) for line in body.splitlines() if line.strip()]
             for role, body in ROLE_BLOCK.findall(DOC.read_text(encoding="utf-8"))}
    assert rules, f"no acl-role blocks in {DOC}"
    return rules


class BillingApi(Api):
    """Another service's API, which none of the documented users may touch."""

    charged = Event(parameters=("amount",))

    class Meta:
        name = "billing"

    def charge(self, amount: int) -> int:
        return amount


class AclServer:
    """A redis-server of this module with the documented users; the default user is the
    admin that sets up and looks."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.passwords: dict[str, str] = {}
        self.admin = server.client()

    def create_users(self) -> None:
        version = tuple(int(p) for p in self.admin.info("server")["redis_version"].split("."))
        if version < (7, 0):
            pytest.skip("the documented ACL rules need Redis 7 (selectors, %R~ and %W~)")
        for lines in documented_rules().values():
            for args in lines:
                user = args[2]
                secret = next((a[1:] for a in args if a.startswith(">")), None)
                if secret is not None:
                    self.passwords[user] = secret
                if "reset" in args and version >= (7, 2):  # as the page says for 7.2+
                    args = [*args, "+client|setinfo"]
                self.admin.execute_command(*args)

    def url(self, user: str, db: int = 0) -> str:
        secret = urllib.parse.quote(self.passwords[user], safe="")
        return f"redis://{user}:{secret}@127.0.0.1:{self.server.port}/{db}"

    def client(self, user: str) -> redis.Redis:
        return self.server.client(username=user, password=self.passwords[user])

    def denials(self) -> list[dict[str, Any]]:
        return list(self.admin.acl_log())

    def clean(self) -> None:
        self.admin.flushall()
        self.admin.acl_log_reset()


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis-acl"))
    server.start()
    acl = AclServer(server)
    try:
        acl.create_users()
        yield acl
    finally:
        acl.admin.close()
        server.stop()


@pytest.fixture
def acl(acl_server: AclServer) -> AclServer:
    """The module's server, emptied, with an empty ACL LOG."""
    acl_server.clean()
    return acl_server


def config(url: str, *, event: dict[str, Any] | None = None,
           result: dict[str, Any] | None = None, plugins: dict[str, Any] | None = None,
           **api_default: Any) -> dict[str, Any]:
    """Every transport on `url` (one user), with extra event and result options."""
    transport = {"redis": {"url": url}}
    return {
        "bus": {"schema": {"transport": transport}, "drain_timeout": 5},
        "apis": {"default": {
            "rpc_transport": transport,
            "result_transport": {"redis": {"url": url, **(result or {})}},
            "event_transport": {"redis": {"url": url, **(event or {})}},
            "rpc_timeout": 3, "redelivery_delay": 0, **api_default,
        }},
        "plugins": {name: {"enabled": True, **options}
                    for name, options in (plugins or {}).items()},
    }


@contextlib.asynccontextmanager
async def buses(*made: Bus) -> AsyncIterator[None]:
    """Close the buses' transports on this loop at the end."""
    try:
        yield
    finally:
        for bus in made:
            await bus.client.close_async()


def refused(call: Any, *args: Any, **kwargs: Any) -> bool:
    """Whether Redis refuses `call(*args, **kwargs)` for lack of permission (sent by the
    client, or by a script it runs)."""
    try:
        call(*args, **kwargs)
    except redis.exceptions.NoPermissionError:
        return True
    except redis.exceptions.ResponseError as exc:  # refused inside a script: a plain error
        return "The user executing the script can't" in str(exc)
    return False


# -- the page ---------------------------------------------------------------------------------


def test_the_page_gives_each_role_as_acl_setuser_lines_without_categories() -> None:
    rules = documented_rules()
    assert set(rules) == ROLES
    started: set[str] = set()
    for role, lines in rules.items():
        for args in lines:
            assert args[:2] == ["ACL", "SETUSER"], (role, args)
            if "reset" in args:  # a user starts with the connection's commands only
                assert args[3:5] == ["reset", "on"] and args[5].startswith(">"), args
                assert args[6:] == ["+ping", "+select"], args
                started.add(args[2])
            else:  # then selectors only, so that roles never mix
                assert args[2] in started, f"{role}: {args[2]} is used before its reset line"
                assert all(a[0] == "(" and a[-1] == ")" for a in args[3:]), args
            for arg in args[3:]:
                assert "@" not in arg and arg not in ("~*", "allkeys", "allcommands"), arg
    assert started == {"accounts-producer", "mailer-consumer", "shop-caller",
                       "accounts-worker", "ops-reader"}


# -- event producer ---------------------------------------------------------------------------


async def test_the_producer_fires_and_can_do_nothing_else(acl: AclServer) -> None:
    producer = bus_core.create(config(acl.url("accounts-producer")), service_name="accounts",
                               process_name="accounts-1")
    producer.client.register_api(AuthApi())
    producer.client.register_api(BillingApi())
    async with buses(producer):
        await producer.auth.user_registered.fire_async(username="ada", email="a@example.com")
        (entry,) = acl.admin.xrange(STREAM)
        assert entry[1][b":username"] == b'"ada"'
        assert acl.denials() == []
        with pytest.raises(TransportError, match="no permissions"):
            await producer.billing.charged.fire_async(amount=1)
    user = acl.client("accounts-producer")
    assert refused(user.xrange, STREAM)  # write-only: cannot read the events back
    assert refused(user.xreadgroup, GROUP, "x", {STREAM: ">"})
    assert refused(user.delete, STREAM)
    assert refused(user.xtrim, STREAM, 0)
    assert refused(user.lpop, "auth:rpc_queue")
    assert refused(user.xadd, "billing.*:stream", {"a": "b"})
    user.close()


# -- event consumer ---------------------------------------------------------------------------


async def test_the_consumer_handles_reclaims_dead_letters_and_forgets_idle_consumers(
        acl: AclServer) -> None:
    admin = acl.admin
    firer = bus_core.create(config(acl.server.url), service_name="accounts")
    firer.client.register_api(AuthApi())
    # What a dead process of the listener left: an entry it held, and an idle consumer.
    admin.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
    await firer.auth.user_registered.fire_async(username="orphan", email="o@example.com")
    admin.xreadgroup(GROUP, "mailer-dead", {STREAM: ">"})
    admin.xgroup_createconsumer(STREAM, GROUP, "mailer-idle")

    mailer = bus_core.create(
        config(acl.url("mailer-consumer"), max_deliveries=2,
               event={"claim_idle": 0.2, "forget_consumers_after": 0}),
        service_name="mailer", process_name="mailer-1")
    seen: list[str] = []
    changed = asyncio.Event()

    async def welcome(event: EventMessage, username: str, email: str) -> None:
        seen.append(username)
        changed.set()
        if username == "poison":
            raise ValueError("cannot welcome poison")

    async def handled(*names: str) -> None:
        while not all(name in seen for name in names):
            changed.clear()
            await changed.wait()

    mailer.client.listen("auth.user_registered", welcome, listener_name="welcome")
    async with buses(firer, mailer), serving(mailer):
        consumers = {c["name"] for c in admin.xinfo_consumers(STREAM, GROUP)}
        assert b"mailer-idle" not in consumers  # forgotten by the script at start
        await firer.auth.user_registered.fire_async(username="ada", email="a@example.com")
        await firer.auth.user_registered.fire_async(username="poison", email="p@example.com")
        await asyncio.wait_for(handled("orphan", "ada"), WAIT)  # the orphan was reclaimed
        await eventually(lambda: admin.xlen(DEAD) == 1)
        await eventually(lambda: admin.xpending(STREAM, GROUP)["pending"] == 0)
        transport = await (await mailer.client.state()).transport("event", "auth")
        assert await transport.lag("auth", "user_registered", "welcome") == 0  # metrics
    assert seen.count("poison") == 2
    (dead,) = admin.xrange(DEAD)
    assert dead[1][b":username"] == b'"poison"'
    assert acl.denials() == []

    user = acl.client("mailer-consumer")
    assert refused(user.xadd, STREAM, {"id": "x"})  # cannot forge auth's events
    assert refused(user.delete, STREAM)
    assert refused(user.xgroup_destroy, STREAM, GROUP)
    assert refused(user.xrange, DEAD)  # dead letters: write-only
    assert refused(user.xreadgroup, GROUP, "x", {"billing.*:stream": ">"})
    assert refused(user.eval, "return redis.call('XADD', KEYS[1], '*', 'id', 'x')", 1, STREAM)
    user.close()


# -- RPC caller and worker --------------------------------------------------------------------


@pytest.mark.parametrize(("reply_list", "db"), [("shared", 0), ("per_call", 3)])
async def test_a_caller_calls_a_worker_that_serves_and_locks_its_single_task(
        acl: AclServer, reply_list: str, db: int) -> None:
    worker = bus_core.create(config(acl.url("accounts-worker", db)), service_name="accounts",
                             process_name="accounts-1")
    worker.client.register_api(AuthApi())
    runs: list[bool] = []
    admin = acl.server.client(db=db)

    @worker.client.every(seconds=0.01, single=True)
    async def nightly() -> None:
        runs.append(bool(admin.keys("bus:lock:accounts:*")))

    caller = bus_core.create(config(acl.url("shop-caller", db),
                                    result={"reply_list": reply_list}),
                             service_name="shop", process_name="shop-1")
    async with buses(worker, caller), serving(worker):
        assert await caller.auth.check_password.call_async(username="admin",
                                                           password="secret") is True
        with pytest.raises(RemoteError, match="no luck"):
            await caller.auth.fail.call_async(message="no luck")
        await eventually(lambda: len(runs) >= 2)
    assert all(runs)  # each run held the lock
    assert admin.keys("bus:lock:*") == []  # released at stop
    admin.close()
    assert acl.denials() == []


async def test_a_caller_can_call_only_the_apis_its_user_names(acl: AclServer) -> None:
    caller = bus_core.create(config(acl.url("shop-caller")), service_name="shop",
                             process_name="shop-1")
    async with buses(caller):
        with pytest.raises(TransportError, match="no permissions"):
            await caller.billing.charge.call_async(amount=1)
    assert acl.admin.keys("*") == []

    user = acl.client("shop-caller")
    assert refused(user.lpop, "auth:rpc_queue")  # never sees other callers' arguments
    assert refused(user.lrange, "auth:rpc_queue", 0, -1)
    assert refused(user.eval, "return redis.call('LRANGE', KEYS[1], 0, -1)", 1,
                   "auth:rpc_queue")
    assert refused(user.rpush, "billing:rpc_queue", "{}")
    assert refused(user.lpush, "auth:rpc_queue", "{}")  # only RPUSH, as the script does
    assert refused(user.set, "auth:rpc_queue", "x")
    assert refused(user.delete, "rpc_expiry_key:0")
    assert refused(user.blmpop, 0.01, 1, "bus:reply:accounts-1:0", direction="LEFT")
    assert refused(user.lpush, "bus:reply:shop-1:0", "{}")  # cannot forge its own results
    user.close()


def test_a_worker_answers_but_cannot_read_results_or_forge_calls(acl: AclServer) -> None:
    user = acl.client("accounts-worker")
    assert refused(user.lpop, "bus:reply:shop-1:0")  # pushes results, never reads them
    assert refused(user.lrange, "auth.check_password:result:0", 0, -1)
    assert refused(user.rpush, "auth:rpc_queue", "{}")
    assert refused(user.blmpop, 0.01, 1, "billing:rpc_queue", direction="LEFT")
    assert refused(user.lpush, "billing:rpc_queue", "{}")  # a return path into a queue
    assert refused(user.lpush, "billing.charge:result:0", "{}")
    assert refused(user.set, "bus:lock:billing:nightly", "x")
    assert refused(user.eval, "return redis.call('LPOP', KEYS[1])", 1, "bus:reply:shop-1:0")
    user.close()


# -- plugins: bus-schema, bus-state; reading with bus state and bus inspect -------------------


async def test_schemas_are_published_by_the_worker_and_loaded_by_the_caller(
        acl: AclServer) -> None:
    plugins = {"schema": {}}
    worker = bus_core.create(config(acl.url("accounts-worker"), plugins=plugins),
                             service_name="accounts", process_name="accounts-1")
    worker.client.register_api(AuthApi())
    caller = bus_core.create(config(acl.url("shop-caller"), plugins=plugins),
                             service_name="shop", process_name="shop-1")
    async with buses(worker, caller), serving(worker):
        assert acl.admin.exists("schema:auth")
        assert await caller.auth.check_password.call_async(username="admin",
                                                           password="secret") is True
        assert "auth" in store_for(caller.client).remote
        await store_for(worker.client).load_remote()  # as its refresher does
    assert acl.denials() == []
    user = acl.client("accounts-worker")
    assert refused(user.set, "schema:billing", "{}")
    assert refused(user.srem, "schemas", "billing")
    user.close()


def test_bus_state_and_bus_inspect_read_with_the_reader_user(
        acl: AclServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    worker = bus_core.create(config(acl.url("accounts-worker"), plugins={"state": {}}),
                             service_name="accounts", process_name="accounts-1")
    worker.client.register_api(AuthApi())
    producer = bus_core.create(config(acl.url("accounts-producer")), service_name="accounts")
    producer.client.register_api(AuthApi())
    reader_config = tmp_path / "bus.yaml"
    reader_config.write_text(yaml.safe_dump(config(acl.url("ops-reader"))))
    monkeypatch.setenv("BUS_CONFIG", str(reader_config))
    monkeypatch.chdir(tmp_path)  # no bus module here
    try:
        worker.client.start_worker()
        producer.auth.user_registered.fire(username="ada", email="a@example.com")
        capsys.readouterr()
        assert main(["inspect", "-e", "auth.user_registered", "--json"]) == 0
        assert '"ada"' in capsys.readouterr().out
        assert main(["state", "--check", "accounts"]) == 0
        assert "accounts: 1 live process" in capsys.readouterr().out
    finally:
        producer.client.close()
        worker.client.close()
    reader = bus_core.create(config(acl.url("ops-reader")), service_name="ops")
    try:
        rows = reader.client.run_sync(read_workers(reader.client, window=60))
        assert [(w.process_name, w.status) for w in rows] == [("accounts-1", "stopped")]
        history = reader.client.run_sync(_collect(merged_history(
            reader, [("auth", "user_registered")], None, None)))
        assert [m.kwargs["username"] for m in history] == ["ada"]
    finally:
        reader.client.close()
    assert acl.denials() == []
    user = acl.client("ops-reader")
    assert refused(user.xadd, STREAM, {"id": "x"})
    assert refused(user.xreadgroup, GROUP, "x", {STREAM: ">"})
    assert refused(user.xgroup_create, STREAM, "ops-peek", id="$", mkstream=True)
    assert refused(user.lrange, "auth:rpc_queue", 0, -1)
    user.close()


async def _collect(messages: AsyncIterator[EventMessage]) -> list[EventMessage]:
    return [message async for message in messages]
