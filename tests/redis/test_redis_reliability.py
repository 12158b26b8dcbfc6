"""Redis reliability, end to end on a real redis-server: crashed consumers, a Redis restart,
poison and malformed messages, SIGTERM drain, expired calls, and passwords.

Waiting is on events where the test process can see them (a queue fed by the handler), and
otherwise polling with a short interval and a deadline (another process, Redis state)."""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import bus_core
from bus_core import Api, Bus, EventMessage, MessageTooLarge, RpcTimeout, TransportError
from tests.apis import AuthApi
from tests.helpers import wait_until
from tests.redis.conftest import RedisServer, redis_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
WAIT = 5.0  # upper bound for what must happen; never reached when it does
STREAM = "auth.*:stream"  # the per-API stream of AuthApi's events


# -- helpers --------------------------------------------------------------------------------




def config(url: str, *, event: dict[str, Any] | None = None, **api_default: Any
           ) -> dict[str, Any]:
    """The suite's Redis config, with extra event transport options."""
    document = redis_config(url, **api_default)
    if event:
        document["apis"]["default"]["event_transport"] = {"redis": {"url": url, **event}}
    return document


def pending(client: redis.Redis, stream: str, group: str) -> int:
    return int(client.xpending(stream, group)["pending"])


def entry(api: str = "auth", event: str = "user_registered", **fields: Any) -> dict[str, Any]:
    """A Lightbus-format stream entry for AuthApi.user_registered; keyword args override."""
    base: dict[str, Any] = {
        "id": "5b1c2a8e-0000-11f1-8000-000000000001", "api_name": api, "event_name": event,
        "version": "1", ":username": json.dumps("ada"), ":email": json.dumps("ada@example.com"),
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


@pytest.fixture
def open_bus() -> Iterator[Callable[..., Bus]]:
    """open_bus(config, service_name=..., process_name=...) -> a Bus closed after the test
    (for tests on their own redis-server, where make_redis_bus does not apply)."""
    made: list[Bus] = []

    def make(document: dict[str, Any], *, service_name: str = "svc",
             process_name: str | None = None) -> Bus:
        bus = bus_core.create(document, service_name=service_name, process_name=process_name)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.client.close()


class Child:
    """A subprocess whose output lines can be awaited (stdout and stderr merged)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            args, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"the child never printed {text!r}; output:\n"
                                     + "\n".join(self.seen))
            self.seen.append(line)
            if text in line:
                return line

    def output(self) -> str:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return "\n".join(self.seen)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


# -- a consumer killed mid-stream -------------------------------------------------------------


def test_events_held_by_a_killed_consumer_are_reclaimed_and_all_handled(
        redis_url, raw, make_redis_bus, open_bus, children):
    started_key, handled_key = "kill:started", "kill:handled"
    document = config(redis_url, event={"claim_idle": 0.3})
    spec = {"config": document, "service": "svc", "process": "doomed", "listener": "count",
            "started": started_key, "handled": handled_key, "hang_after": 3}
    doomed = Child([sys.executable, str(SCRIPTS / "slow_consumer.py"), json.dumps(spec)],
                   cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    children.append(doomed)
    doomed.wait_for("READY")

    publisher = make_redis_bus(service_name="auth_service")
    publisher.client.register_api(AuthApi())
    names = [f"user{n:02d}" for n in range(20)]
    for name in names:
        publisher.auth.user_registered.fire(username=name, email=f"{name}@example.com")

    def members(key: str) -> set[str]:
        return {value.decode() for value in raw.smembers(key)}

    # Kill it while it holds events: three handled, more started and stuck in the handler.
    wait_until(lambda: len(members(handled_key)) >= 3 and len(members(started_key)) >= 4,
               "the doomed consumer to handle 3 events and start more")
    doomed.kill()
    stuck = members(started_key) - members(handled_key)
    assert stuck, "the consumer was killed with no event in flight: the test proves nothing"
    held = {_text(row["name"]): int(row["pending"])
            for row in raw.xpending(STREAM, "svc-count")["consumers"]}
    assert held.get("doomed", 0) >= len(stuck), held

    rescued: list[str] = []

    def handle(event: EventMessage, username: str, email: str) -> None:
        rescued.append(username)
        raw.sadd(handled_key, username)

    rescuer = open_bus(document, service_name="svc", process_name="rescuer")
    rescuer.client.listen("auth.user_registered", handle, listener_name="count")
    rescuer.client.start_worker()

    wait_until(lambda: members(handled_key) == set(names), "every event to be handled",
               timeout=WAIT)
    assert stuck <= set(rescued), "the events stuck in the killed process were not reclaimed"
    wait_until(lambda: pending(raw, STREAM, "svc-count") == 0,
               "every event to be acknowledged")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- a Redis restart --------------------------------------------------------------------------


def serving_pair(open_bus: Callable[..., Bus], document: dict[str, Any], username: str
                 ) -> tuple[Bus, Bus, queue.Queue[str]]:
    """A worker serving AuthApi with a `welcome` listener, and a caller; checked once both
    ways (an RPC answered, an event fired as `username` heard). Returns what the listener
    hears on."""
    heard: queue.Queue[str] = queue.Queue()
    worker = open_bus(document, service_name="auth_service", process_name="worker")
    worker.client.register_api(AuthApi())
    worker.auth.user_registered.listen(
        lambda event, username, email: heard.put(username), listener_name="welcome")
    worker.client.start_worker()
    caller = open_bus(document, service_name="web", process_name="caller")
    assert caller.auth.check_password(username="admin", password="secret") is True
    worker.auth.user_registered.fire(username=username, email=f"{username}@example.com")
    assert heard.get(timeout=WAIT) == username
    return worker, caller, heard


def test_worker_and_caller_carry_on_after_a_redis_restart(own_redis_server: RedisServer,
                                                          open_bus):
    worker, caller, heard = serving_pair(open_bus, config(own_redis_server.url), "before")

    own_redis_server.stop()
    began = time.monotonic()
    with pytest.raises((TransportError, RpcTimeout)) as caught:
        caller.auth.check_password(username="admin", password="secret",
                                   bus_options={"timeout": 2})
    assert time.monotonic() - began < 3.5, "a call to a Redis that is down hung"
    message = str(caught.value)
    assert "auth.check_password" in message
    if isinstance(caught.value, TransportError):
        assert f"127.0.0.1:{own_redis_server.port}" in message
        assert "unreachable" in message
    with pytest.raises(TransportError, match="cannot fire auth.user_registered"):
        worker.auth.user_registered.fire(username="lost", email="l@example.com",
                                         bus_options={"timeout": 2})

    own_redis_server.start()  # same port, empty: the stream and its groups are gone
    # Fired at once, before the worker has noticed Redis is back: it must not be lost.
    worker.auth.user_registered.fire(username="after", email="a@example.com")

    def answered() -> bool:
        try:
            return caller.auth.check_password(username="admin", password="secret",
                                              bus_options={"timeout": 0.5}) is True
        except (TransportError, RpcTimeout):
            return False

    wait_until(answered, "RPCs to work again after the restart", interval=0.05)
    assert heard.get(timeout=WAIT) == "after"
    worker.auth.user_registered.fire(username="later", email="l@example.com")
    assert heard.get(timeout=WAIT) == "later"
    assert heard.empty()


# -- poison and malformed messages ------------------------------------------------------------


def test_a_poison_event_is_dead_lettered_while_others_flow(make_redis_bus, raw):
    bus = make_redis_bus(service_name="svc", process_name="p1", max_deliveries=3)
    bus.client.register_api(AuthApi())
    attempts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    handled: queue.Queue[str] = queue.Queue()

    def welcome(event: EventMessage, username: str, email: str) -> None:
        with lock:
            attempts[username] += 1
        if username == "poison":
            raise ValueError("cannot welcome poison")
        handled.put(username)

    bus.auth.user_registered.listen(welcome, listener_name="welcome")
    bus.client.start_worker()
    for name in ("a", "poison", "b", "c"):
        bus.auth.user_registered.fire(username=name, email=f"{name}@example.com")
    assert {handled.get(timeout=WAIT) for _ in range(3)} == {"a", "b", "c"}

    dead = wait_until(lambda: raw.xrange(f"{STREAM}:dead"), "a dead letter")
    assert len(dead) == 1
    fields = {_text(k): _text(v) for k, v in dead[0][1].items()}
    assert "ValueError: cannot welcome poison" in fields["bus_dead_reason"]
    assert fields["bus_dead_delivery_count"] == "3"
    assert fields["bus_dead_group"] == "svc-welcome"
    # The original entry travels with it, so it can be inspected or replayed.
    assert fields[":username"] == '"poison"'
    assert fields["api_name"] == "auth" and fields["event_name"] == "user_registered"
    original = raw.xrange(STREAM, min=fields["bus_dead_entry_id"],
                          max=fields["bus_dead_entry_id"])
    assert original and original[0][1][b":username"] == b'"poison"'

    bus.auth.user_registered.fire(username="d", email="d@example.com")
    assert handled.get(timeout=WAIT) == "d"  # still flowing after the dead letter
    wait_until(lambda: pending(raw, STREAM, "svc-welcome") == 0, "everything acknowledged")
    assert attempts["poison"] == 3
    assert all(attempts[name] == 1 for name in "abcd")


def test_malformed_event_entries_never_crash_the_worker(make_redis_bus, raw):
    bus = make_redis_bus(service_name="svc", process_name="p1")
    handled: queue.Queue[tuple[str, str]] = queue.Queue()

    def welcome(event: EventMessage, username: str, email: str) -> None:
        handled.put((event.id, username))

    bus.client.listen("auth.user_registered", welcome, listener_name="welcome")
    bus.client.start_worker()

    raw.xadd(STREAM, {"": ""})  # a Lightbus noop entry: skipped
    bad = {
        "bad-json": raw.xadd(STREAM, entry(id="bad-json", **{":username": "{not json"})),
        "no-api-name": raw.xadd(STREAM, entry(id="no-api-name", api_name=None)),
        "bad-version": raw.xadd(STREAM, entry(id="bad-version", version="one")),
        "wrong-type": raw.xadd(STREAM, entry(id="wrong-type", **{":username": "123"})),
    }
    raw.xadd(STREAM, entry(id="extra-field", trace_id="abc123"))  # unknown bare field: fine
    raw.xadd(STREAM, entry(id="last", **{":username": json.dumps("bob")}))

    assert handled.get(timeout=WAIT) == ("extra-field", "ada")
    assert handled.get(timeout=WAIT) == ("last", "bob")
    dead = wait_until(lambda: len(raw.xrange(f"{STREAM}:dead")) >= len(bad) and
                      raw.xrange(f"{STREAM}:dead"), "the malformed entries to be dead-lettered")
    reasons = {_text(fields[b"bus_dead_entry_id"]): _text(fields[b"bus_dead_reason"])
               for _, fields in dead}
    assert set(reasons) == {_text(entry_id) for entry_id in bad.values()}, reasons
    by_name = {name: reasons[_text(entry_id)] for name, entry_id in bad.items()}
    assert "username" in by_name["bad-json"]
    assert "api_name" in by_name["no-api-name"]
    assert "version" in by_name["bad-version"]
    assert "username" in by_name["wrong-type"]
    wait_until(lambda: pending(raw, STREAM, "svc-welcome") == 0,
               "malformed, noop and good entries all acknowledged")
    assert handled.empty()


def test_malformed_rpc_calls_never_stop_the_worker(make_redis_bus, raw, caplog):
    caplog.set_level(logging.WARNING)
    server = make_redis_bus(service_name="auth_service", process_name="worker")
    server.client.register_api(AuthApi())
    server.client.start_worker()

    raw.rpush("auth:rpc_queue", b"{this is not json")
    raw.rpush("auth:rpc_queue", b'["a", "list"]')
    # Readable return path (this call's own result key) and id, but no api_name or
    # procedure_name: the caller is told.
    raw.set("rpc_expiry_key:hand-1", 1, ex=5)
    raw.rpush("auth:rpc_queue", json.dumps(
        {"metadata": {"id": "hand-1",
                      "return_path": "redis+key://auth.check_password:result:hand-1"},
         "kwargs": {"username": "admin"}}))
    # A return path that is not redis+key://: nothing to answer on, the worker lives.
    raw.set("rpc_expiry_key:hand-2", 1, ex=5)
    raw.rpush("auth:rpc_queue", json.dumps(
        {"metadata": {"id": "hand-2", "api_name": "auth", "procedure_name": "check_password",
                      "return_path": "http://elsewhere"},
         "kwargs": {"username": "admin", "password": "secret"}}))

    # The same, but its caller gave up (no expiry key left): dropped, not answered.
    raw.rpush("auth:rpc_queue", json.dumps(
        {"metadata": {"id": "hand-3", "return_path": "redis+key://gone:reply"},
         "kwargs": {}}))

    popped = raw.blpop(["auth.check_password:result:hand-1"], timeout=WAIT)
    assert popped is not None, "the malformed call with a return path got no answer"
    result = json.loads(popped[1])
    assert set(result["metadata"]) == {"id", "rpc_message_id", "error", "trace"}
    assert result["metadata"]["rpc_message_id"] == "hand-1"
    assert result["metadata"]["error"] is True
    assert result["kwargs"]["result"].startswith("MalformedMessage(")
    assert "api_name" in result["kwargs"]["result"]

    caller = make_redis_bus(service_name="web")
    assert caller.auth.check_password(username="admin", password="secret") is True
    assert raw.llen("auth:rpc_queue") == 0
    assert "malformed RPC call" in caplog.text
    assert "dropped a malformed RPC call (hand-3): its expiry key is gone" in caplog.text
    assert raw.llen("gone:reply") == 0


# -- SIGTERM drains ---------------------------------------------------------------------------

SLOW_MODULE = '''
import os
import time

import redis

import bus_core

bus = bus_core.create()
store = redis.Redis.from_url(os.environ["TEST_REDIS_URL"])


def slow_welcome(event, username, email):
    store.sadd("sigterm:started", username)
    deadline = time.monotonic() + 10
    while not store.exists("sigterm:release") and time.monotonic() < deadline:
        time.sleep(0.01)  # held in flight until the test says so (after SIGTERM)
    store.sadd("sigterm:finished", username)


bus.client.listen("auth.user_registered", slow_welcome, listener_name="slow")
'''


def test_sigterm_lets_the_handler_in_flight_finish_and_acknowledges_it(
        redis_url, raw, make_redis_bus, tmp_path, children):
    (tmp_path / "slow_service.py").write_text(SLOW_MODULE)
    transport = f"{{redis: {{url: '{redis_url}'}}}}"
    (tmp_path / "bus.yaml").write_text(
        "bus:\n"
        "  service_name: sigterm_service\n"
        "  process_name: sigterm_worker\n"
        f"  schema: {{transport: {transport}}}\n"
        "apis:\n"
        "  default:\n"
        f"    rpc_transport: {transport}\n"
        f"    result_transport: {transport}\n"
        f"    event_transport: {transport}\n"
    )
    worker = Child(
        [sys.executable, "-m", "bus_core.cli", "run", "--bus", "slow_service"], cwd=tmp_path,
        env={"BUS_CONFIG": str(tmp_path / "bus.yaml"), "TEST_REDIS_URL": redis_url,
             "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])},
    )
    children.append(worker)
    worker.wait_for("serving APIs")

    publisher = make_redis_bus(service_name="auth_service")
    publisher.client.register_api(AuthApi())
    publisher.auth.user_registered.fire(username="inflight", email="i@example.com")
    wait_until(lambda: raw.sismember("sigterm:started", "inflight"), "the handler to start")

    worker.process.send_signal(signal.SIGTERM)
    worker.wait_for("SIGTERM received")
    assert worker.process.poll() is None, "the worker exited with a handler in flight"
    raw.set("sigterm:release", 1)
    code = worker.process.wait(10)
    output = worker.output()
    assert code == 0, output
    assert raw.sismember("sigterm:finished", "inflight")
    assert pending(raw, STREAM, "sigterm_service-slow") == 0, output
    assert "Traceback" not in output


# -- expired calls ----------------------------------------------------------------------------


def test_a_call_whose_caller_gave_up_is_never_executed(make_redis_bus, raw):
    executed: list[str] = []

    class LedgerApi(Api):
        class Meta:
            name = "ledger"

        def record(self, entry: str) -> str:
            executed.append(entry)
            return entry

    caller = make_redis_bus(service_name="web")
    with pytest.raises(RpcTimeout):
        caller.ledger.record(entry="stale", bus_options={"timeout": 0.5})
    assert raw.llen("ledger:rpc_queue") == 1  # nobody took it

    # A worker starts right after the caller gave up: the stale call must be dropped.
    worker = make_redis_bus(service_name="ledger_service")
    worker.client.register_api(LedgerApi())
    worker.client.start_worker()
    assert caller.ledger.record(entry="fresh") == "fresh"
    assert executed == ["fresh"]
    assert raw.llen("ledger:rpc_queue") == 0


# -- passwords --------------------------------------------------------------------------------


def test_a_password_in_the_url_works_and_never_leaks(own_redis_server: RedisServer, open_bus,
                                                      caplog):
    caplog.set_level(logging.DEBUG)
    # (Started without a password, then given one: RedisServer.start() waits for a PING.)
    with own_redis_server.client() as admin:
        admin.config_set("requirepass", "s3cret")
    host = f"127.0.0.1:{own_redis_server.port}"
    right = config(f"redis://:s3cret@{host}/0")
    wrong = config(f"redis://:wr0ng-pa55@{host}/0")

    worker, caller, _ = serving_pair(open_bus, right, "ada")

    errors: list[BaseException] = []
    intruder = open_bus(wrong, service_name="intruder")
    intruder.client.register_api(AuthApi())
    with pytest.raises(TransportError) as caught:
        intruder.auth.check_password(username="admin", password="secret",
                                     bus_options={"timeout": 2})
    errors.append(caught.value)
    assert host in str(caught.value) and "***" in str(caught.value)
    assert "refused the credentials" in str(caught.value)
    with pytest.raises(TransportError) as caught:
        intruder.auth.user_registered.fire(username="x", email="x@example.com")
    errors.append(caught.value)
    listener = open_bus(wrong, service_name="intruder_worker")
    listener.client.listen("auth.user_registered", lambda event, username, email: None,
                           listener_name="sneaky")
    with pytest.raises(TransportError) as caught:
        listener.client.start_worker()
    errors.append(caught.value)

    own_redis_server.stop()  # the right password, but Redis is gone
    with pytest.raises((TransportError, RpcTimeout)) as caught:
        caller.auth.check_password(username="admin", password="secret",
                                   bus_options={"timeout": 1})
    errors.append(caught.value)

    for error in errors:
        for secret in ("s3cret", "wr0ng-pa55"):
            assert secret not in str(error), error
            assert secret not in repr(error), error
    worker.client.stop_worker()  # its loops log their failures to reach Redis meanwhile
    for secret in ("s3cret", "wr0ng-pa55"):
        assert secret not in caplog.text
    assert caplog.text, "nothing was logged: the check above proves nothing"


def test_max_message_size_bounds_a_whole_event_entry(make_redis_bus, redis_url, raw):
    document = config(redis_url)
    document["bus"]["max_message_size"] = 4096
    bus = make_redis_bus(config=document, process_name="p1")
    bus.client.register_api(AuthApi())
    # Each field fits the limit, together they do not: refused before anything is sent.
    with pytest.raises(MessageTooLarge, match=r"auth.user_registered's parameters are \d+ "
                                              r"bytes in all, above bus.max_message_size"):
        bus.auth.user_registered.fire(username="a" * 3000, email="b" * 3000)
    assert raw.xlen(STREAM) == 0
    handled: queue.Queue[str] = queue.Queue()
    bus.client.listen("auth.user_registered", lambda event, **kw: handled.put(event.id),
                      listener_name="welcome")
    bus.client.start_worker()
    # Just under the limit: sent, and received by the same count (metadata not counted).
    bus.auth.user_registered.fire(username="a" * 2000, email="b" * 2080)
    big = raw.xadd(STREAM, entry(id="big", **{":username": json.dumps("a" * 3000),
                                              ":email": json.dumps("b" * 3000)}))
    raw.xadd(STREAM, entry(id="small"))
    handled_ids = {handled.get(timeout=WAIT), handled.get(timeout=WAIT)}
    assert "small" in handled_ids and len(handled_ids) == 2  # and the one fired just under
    dead = wait_until(lambda: raw.xrange(f"{STREAM}:dead"), "the big entry to be dead-lettered")
    assert [_text(fields[b"bus_dead_entry_id"]) for _, fields in dead] == [_text(big)]
    assert "above bus.max_message_size (4096)" in _text(dead[0][1][b"bus_dead_reason"])
