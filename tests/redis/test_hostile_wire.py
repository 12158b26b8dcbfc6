"""Hostile input on the wire, by class, on a real redis-server: whatever one entry, call or
reply holds, it affects only itself; the rest of its batch is handled, and nothing is
written outside the reply namespace.

Each test puts poison next to valid messages in one batch (pushed before the worker or the
reader starts), so one bad item stalling or failing its batch shows."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import queue
import uuid
from typing import Any

import pytest
import redis
from bus_redis import RedisResultTransport

import bus_core
from bus_core import EventMessage, TransportError
from bus_core.default_plugins.json_serializer import JsonSerializer
from bus_core.messages import ResultMessage, RpcMessage, result_to_blob
from bus_core.serialization import SizeLimitedSerializer
from tests.apis import AuthApi
from tests.helpers import ExplodingPlugin, wait_until
from tests.redis.conftest import redis_config

WAIT = 5.0  # upper bound for what must happen; never reached when it does
STREAM = "auth.*:stream"
GROUP = "svc-welcome"
DEEP = b"[" * 100_000  # RecursionError in json.loads, whatever the recursion limit


def hostile_config(url: str, **api_default: Any) -> dict[str, Any]:
    document = redis_config(url, **api_default)
    document["bus"]["serializer"] = "exploding-json"
    return document


def make_bus(url: str, made: list[bus_core.Bus], **options: Any) -> bus_core.Bus:
    bus = bus_core.create(hostile_config(url, **options.pop("api_default", {})),
                          plugins=[ExplodingPlugin()], **options)
    made.append(bus)
    return bus


@pytest.fixture
def buses() -> Any:
    made: list[bus_core.Bus] = []
    yield made
    for bus in made:
        bus.client.close()


def entry(entry_id: str, username: Any = "ada", **fields: Any) -> dict[str, Any]:
    """A Lightbus-format entry of auth.user_registered; keyword args override fields."""
    base: dict[str, Any] = {"id": entry_id, "api_name": "auth",
                            "event_name": "user_registered", "version": "1",
                            ":username": json.dumps(username), ":email": json.dumps("e@x")}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def dead_reasons(raw: redis.Redis, stream: str = STREAM) -> dict[str, str]:
    return {text(fields[b"bus_dead_entry_id"]): text(fields[b"bus_dead_reason"])
            for _, fields in raw.xrange(f"{stream}:dead")}


def listen_all(bus: bus_core.Bus) -> queue.Queue[str]:
    handled: queue.Queue[str] = queue.Queue()

    def welcome(event: EventMessage, username: str, email: str) -> None:
        handled.put(event.id)

    bus.client.listen("auth.user_registered", welcome, listener_name="welcome")
    return handled


def drain(handled: queue.Queue[str], count: int) -> list[str]:
    got = [handled.get(timeout=WAIT) for _ in range(count)]
    with pytest.raises(queue.Empty):
        handled.get(timeout=0.2)  # and nothing more: each handled exactly once
    return got


def assert_batch_settled(raw: redis.Redis, handled: queue.Queue[str], good: list[str],
                         bad: dict[str, bytes]) -> dict[str, str]:
    """Every good entry handled exactly once, every bad one dead-lettered, none pending."""
    assert sorted(drain(handled, len(good))) == sorted(good)
    wanted = {text(entry_id) for entry_id in bad.values()}
    reasons = wait_until(lambda: wanted <= set(dead_reasons(raw)) and dead_reasons(raw),
                         "every bad entry dead-lettered")
    assert set(reasons) == wanted, reasons
    wait_until(lambda: int(raw.xpending(STREAM, GROUP)["pending"]) == 0, "nothing pending")
    return {name: reasons[text(entry_id)] for name, entry_id in bad.items()}


# -- class 1: event entries that cannot be decoded --------------------------------------------


def test_undecodable_event_entries_are_dead_lettered_at_once_and_the_batch_is_handled(
        redis_url, raw, buses):
    bus = make_bus(redis_url, buses, service_name="svc", process_name="p1")
    handled = listen_all(bus)
    raw.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    good = [f"good-{n}" for n in range(6)]
    bad: dict[str, bytes] = {}
    raw.xadd(STREAM, entry(good[0]))
    bad["deep"] = raw.xadd(STREAM, entry("deep", **{":username": DEEP}))
    raw.xadd(STREAM, entry(good[1]))
    bad["not-utf8-param"] = raw.xadd(STREAM, entry("u8", **{":username": b'"\xff\xfe"'}))
    bad["not-utf8-metadata"] = raw.xadd(STREAM, entry("u8m", event_name=b"user_\xffregistered"))
    bad["not-utf8-id"] = raw.xadd(STREAM, entry(b"id-\xff"))
    raw.xadd(STREAM, entry(good[2]))
    bad["bad-json"] = raw.xadd(STREAM, entry("bj", **{":username": "{nope"}))
    bad["serializer-raises"] = raw.xadd(STREAM, entry("ex", **{":username": '"explode"'}))
    raw.xadd(STREAM, entry(good[3]))
    bad["bad-version"] = raw.xadd(STREAM, entry("bv", version="1e999"))
    bad["empty-id"] = raw.xadd(STREAM, entry(""))
    bad["no-event-name"] = raw.xadd(STREAM, entry("ne", event_name=None))
    raw.xadd(STREAM, entry(good[4]))
    raw.xadd(STREAM, entry(good[5]))

    bus.client.start_worker()
    by_name = assert_batch_settled(raw, handled, good, bad)
    assert "RecursionError" in by_name["deep"]
    assert "KeyError" in by_name["serializer-raises"]
    assert all(len(reason) < 400 and "\n" not in reason for reason in by_name.values())


# -- class 5: names and ids from the wire ------------------------------------------------------

BAD_NAMES = {"newline": "user_registered\n", "carriage-return": "user\rregistered",
             "space": "user registered", "unicode": "user_registéred",
             "huge": "u" * 10_000, "empty": "", "dash": "user-registered"}
BAD_IDS = {"newline": "id\n1", "carriage-return": "id\r1", "escape": "id\x1b[31m",
           "huge": "i" * 10_000, "line-separator": "id\u20281"}


def test_event_entries_with_invalid_names_or_ids_are_dead_lettered(redis_url, raw, buses):
    bus = make_bus(redis_url, buses, service_name="svc", process_name="p1")
    handled = listen_all(bus)
    raw.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    bad: dict[str, bytes] = {}
    for kind, name in BAD_NAMES.items():
        bad[f"event-{kind}"] = raw.xadd(STREAM, entry(f"e-{kind}", event_name=name))
        if name:  # an empty api_name is another class (missing metadata), covered above
            bad[f"api-{kind}"] = raw.xadd(STREAM, entry(f"a-{kind}", api_name=f"auth{name}"))
    for kind, message_id in BAD_IDS.items():
        bad[f"id-{kind}"] = raw.xadd(STREAM, entry(message_id))
    raw.xadd(STREAM, entry("fine-1"))

    bus.client.start_worker()
    by_name = assert_batch_settled(raw, handled, ["fine-1"], bad)
    assert "not a valid" in by_name["event-newline"]
    assert all(len(reason) < 400 and "\n" not in reason for reason in by_name.values())


def test_rpc_calls_with_invalid_names_or_ids_get_a_malformed_message_error(redis_url, raw,
                                                                          buses):
    server = make_bus(redis_url, buses, service_name="auth_service", process_name="w")
    server.client.register_api(AuthApi())
    reply_key = f"bus:reply:hostile:{uuid.uuid4().hex}"
    sent: dict[str, str] = {}

    def push(kind: str, api: str, procedure: str, message_id: str) -> None:
        raw.set(f"rpc_expiry_key:{message_id}", 1, ex=10)
        raw.rpush("auth:rpc_queue", json.dumps({
            "metadata": {"id": message_id, "api_name": api, "procedure_name": procedure,
                         "return_path": f"redis+key://{reply_key}"},
            "kwargs": {"username": "admin", "password": "secret"}}))
        sent[kind] = message_id

    for kind, name in BAD_NAMES.items():
        push(f"procedure-{kind}", "auth", name.replace("user_registered", "check_password"),
             f"p-{kind}")
        if name:
            push(f"api-{kind}", f"auth{name}", "check_password", f"a-{kind}")
    push("fine", "auth", "check_password", "fine-1")

    server.client.start_worker()
    replies = {}
    while len(replies) < len(sent):
        popped = raw.blpop([reply_key], timeout=WAIT)
        assert popped is not None, f"answered {sorted(replies)} of {sorted(sent.values())}"
        blob = json.loads(popped[1])
        replies[blob["metadata"]["rpc_message_id"]] = blob
    assert replies.pop("fine-1")["kwargs"]["result"] is True
    for message_id, blob in replies.items():
        assert blob["metadata"]["error"] is True, message_id
        assert blob["kwargs"]["result"].startswith("MalformedMessage("), blob


def test_rpc_calls_with_invalid_ids_are_refused_without_touching_keys(redis_url, raw, buses):
    """An id reaches key names (its expiry key) and logs: one that is not a valid id is
    never used as one; the call is answered as malformed when its return path is valid."""
    server = make_bus(redis_url, buses, service_name="auth_service", process_name="w")
    server.client.register_api(AuthApi())
    reply_key = f"bus:reply:hostile:{uuid.uuid4().hex}"
    for message_id in BAD_IDS.values():
        raw.set(f"rpc_expiry_key:{message_id}", 1, ex=10)
        raw.rpush("auth:rpc_queue", json.dumps({
            "metadata": {"id": message_id, "api_name": "auth",
                         "procedure_name": "check_password",
                         "return_path": f"redis+key://{reply_key}"},
            "kwargs": {"username": "admin", "password": "secret"}}))
    server.client.start_worker()
    for _ in BAD_IDS:
        popped = raw.blpop([reply_key], timeout=WAIT)
        assert popped is not None
        blob = json.loads(popped[1])
        assert blob["metadata"]["error"] is True
        assert "MalformedMessage" in blob["kwargs"]["result"]
        assert blob["metadata"]["rpc_message_id"] not in BAD_IDS.values()
    for message_id in BAD_IDS.values():  # never claimed: its expiry key is left alone
        assert raw.exists(f"rpc_expiry_key:{message_id}")


# -- class 2: RPC calls that cannot be decoded, in one popped batch ----------------------------

RPC_POISON = [
    DEEP,
    b'{"metadata": {"id": "\xff\xfe"}}',
    b"{not json",
    b'{"metadata": {"id": "explode"}, "kwargs": {}}',
    json.dumps({"metadata": {"id": ["x"], "api_name": 5, "procedure_name": {},
                             "return_path": None}, "kwargs": []}).encode(),
    b'"just a string"',
    b"null",
]


def start_calls(caller: bus_core.Bus, count: int) -> list[concurrent.futures.Future[Any]]:
    pool = concurrent.futures.ThreadPoolExecutor(count)
    futures = [pool.submit(caller.auth.slow_echo, value=f"v{n}") for n in range(count)]
    pool.shutdown(wait=False)
    return futures


def test_every_valid_call_popped_with_poison_runs_and_is_answered(redis_url, raw, buses):
    caller = make_bus(redis_url, buses, service_name="web", api_default={"rpc_timeout": 10})
    server = make_bus(redis_url, buses, service_name="auth_service", process_name="w",
                      api_default={"rpc_timeout": 10})
    server.client.register_api(AuthApi())
    futures = start_calls(caller, 10)
    wait_until(lambda: raw.llen("auth:rpc_queue") == 10, "10 calls queued")
    for poison in RPC_POISON:  # at the head: popped in the same BLMPOP as the 10 calls
        raw.lpush("auth:rpc_queue", poison)
    raw.rpush("auth:rpc_queue", RPC_POISON[0])  # and one at the tail

    server.client.start_worker()
    assert sorted(f.result(timeout=WAIT) for f in futures) == sorted(f"v{n}" for n in range(10))
    assert raw.llen("auth:rpc_queue") == 0


# -- class 3: garbage on a shared reply list ---------------------------------------------------

REPLY_GARBAGE = [
    DEEP,
    b"\xff\xfe\xfd",
    b"{not json",
    b"[1, 2, 3]",
    b'{"metadata": {"id": "explode", "rpc_message_id": "x"}, "kwargs": {}}',
    json.dumps({"metadata": {"id": 1, "rpc_message_id": ["x"]}, "kwargs": {}}).encode(),
    json.dumps({"metadata": {"id": "r", "rpc_message_id": "x\n" * 5000},
                "kwargs": {"result": 1}}).encode(),
    json.dumps({"metadata": {"id": "r", "rpc_message_id": "x"}, "kwargs": "no"}).encode(),
]


def test_the_reply_reader_survives_any_entry_and_delivers_every_result(redis_url, raw, buses,
                                                                       caplog):
    caplog.set_level(logging.WARNING, logger="bus.redis.result")
    caller = make_bus(redis_url, buses, service_name="web", api_default={"rpc_timeout": 10})
    server = make_bus(redis_url, buses, service_name="auth_service", process_name="w")
    server.client.register_api(AuthApi())
    futures = start_calls(caller, 20)
    wait_until(lambda: raw.llen("auth:rpc_queue") == 20, "20 calls in flight")
    reply_key = json.loads(raw.lindex("auth:rpc_queue", 0))["metadata"]["return_path"][12:]
    assert reply_key.startswith("bus:reply:")
    for garbage in REPLY_GARBAGE * 3:
        raw.rpush(reply_key, garbage)
    wait_until(lambda: raw.llen(reply_key) == 0, "the reader to pop the garbage")

    server.client.start_worker()
    assert sorted(f.result(timeout=WAIT) for f in futures) == sorted(f"v{n}" for n in range(20))
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert 1 <= len(dropped) <= 2, [r.getMessage() for r in dropped]  # rate-limited
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in dropped)


def test_a_per_call_reply_key_skips_garbage_and_results_of_other_calls(redis_url, raw, buses):
    document = hostile_config(redis_url, rpc_timeout=10)
    document["apis"]["default"]["result_transport"] = {
        "redis": {"url": redis_url, "reply_list": "per_call"}}
    caller = bus_core.create(document, plugins=[ExplodingPlugin()], service_name="web")
    buses.append(caller)
    server = make_bus(redis_url, buses, service_name="auth_service", process_name="w")
    server.client.register_api(AuthApi())
    (future,) = start_calls(caller, 1)
    wait_until(lambda: raw.llen("auth:rpc_queue") == 1, "the call queued")
    key = json.loads(raw.lindex("auth:rpc_queue", 0))["metadata"]["return_path"][12:]
    other = ResultMessage(rpc_message_id="someone-else", result="not yours")
    for garbage in [*REPLY_GARBAGE, json.dumps(result_to_blob(other)).encode()]:
        raw.rpush(key, garbage)
    server.client.start_worker()
    assert future.result(timeout=WAIT) == "v0"


# -- class 4: return paths ---------------------------------------------------------------------


def lightbus_call(raw: redis.Redis, return_path: str, call_id: str | None = None) -> str:
    call_id = call_id or str(uuid.uuid1())
    raw.set(f"rpc_expiry_key:{call_id}", 1, ex=10)
    raw.rpush("auth:rpc_queue", json.dumps({
        "metadata": {"id": call_id, "api_name": "auth", "procedure_name": "check_password",
                     "return_path": return_path},
        "kwargs": {"username": "admin", "password": "secret"}}, sort_keys=True))
    return call_id


def test_calls_with_return_paths_outside_the_reply_namespace_are_refused(redis_url, raw,
                                                                         buses, caplog):
    caplog.set_level(logging.WARNING)
    server = make_bus(redis_url, buses, service_name="auth_service", process_name="w")
    server.client.register_api(AuthApi())
    # What those keys hold before: another API's queued calls, a stream, a string.
    raw.rpush("billing:rpc_queue", b"a queued call")
    raw.xadd("auth.*:stream", {"": ""})
    raw.set("config", "precious")
    before = {key: raw.dump(key) for key in ("billing:rpc_queue", "auth.*:stream", "config")}
    someone_else = str(uuid.uuid1())
    refused = [
        "redis+key://billing:rpc_queue",
        "redis+key://auth.*:stream",
        "redis+key://config",
        "redis+key://bus:reply:x",  # the shared form without its 32 hex digits
        "redis+key://bus:reply:x:" + "g" * 32,
        f"redis+key://auth.check_password:result:{someone_else}",  # another call's key
        "redis+key://auth.check_password:result:",
        "redis+key://",
        "http://elsewhere",
    ]
    for path in refused:
        lightbus_call(raw, path)
    answered_id = str(uuid.uuid1())
    key = f"auth.check_password:result:{answered_id}"
    lightbus_call(raw, f"redis+key://{key}", answered_id)

    server.client.start_worker()
    popped = raw.blpop([key], timeout=WAIT)
    assert popped is not None and json.loads(popped[1])["kwargs"] == {"result": True}
    wait_until(lambda: raw.llen("auth:rpc_queue") == 0, "all calls taken")
    for name, dumped in before.items():
        assert raw.dump(name) == dumped, f"{name} was changed"
        assert raw.ttl(name) == -1, f"{name} was given a TTL"
    assert not raw.exists(f"auth.check_password:result:{someone_else}")
    assert set(raw.keys("*")) == {b"billing:rpc_queue", b"auth.*:stream", b"config",
                                  *(k for k in raw.keys("schema*"))}
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines and all("\n" not in line for line in lines)
    assert all(r.exc_info is None for r in caplog.records)


async def test_one_failing_reply_never_fails_the_others_of_its_batch(redis_url, raw):
    transport = RedisResultTransport(
        url=redis_url, serializer=SizeLimitedSerializer(JsonSerializer(), 1 << 20),
        service_name="svc", process_name="w")
    await transport.open()
    try:
        ids = [str(uuid.uuid4()) for _ in range(3)]
        calls = [RpcMessage(api_name="auth", procedure_name="check_password", kwargs={},
                            id=i) for i in ids]
        keys = [f"auth.check_password:result:{i}" for i in ids]
        raw.xadd(keys[1], {"made": "a stream"})  # the right name, the wrong type
        outcomes = await asyncio.gather(*(
            transport.send_result(call, ResultMessage(rpc_message_id=call.id, result=n),
                                  f"redis+key://{key}")
            for n, (call, key) in enumerate(zip(calls, keys, strict=True))),
            return_exceptions=True)
    finally:
        await transport.close()
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], TransportError) and "WRONGTYPE" in str(outcomes[1])
    assert raw.llen(keys[0]) == 1 and raw.llen(keys[2]) == 1
    assert raw.type(keys[1]) == b"stream" and raw.ttl(keys[1]) == -1  # never expired


# -- class 6: results nobody waits for ---------------------------------------------------------


async def test_results_nobody_waits_for_are_bounded_by_count_and_bytes(redis_url, raw, caplog):
    caplog.set_level(logging.WARNING, logger="bus.redis.result")
    transport = RedisResultTransport(
        url=redis_url, serializer=SizeLimitedSerializer(JsonSerializer(), 1 << 20),
        service_name="svc", process_name="w", max_unclaimed_results=100,
        max_unclaimed_bytes=64 * 1024)
    await transport.open()
    try:
        def blob(call_id: str, size: int = 10) -> bytes:
            result = ResultMessage(rpc_message_id=call_id, result="x" * size)
            return json.dumps(result_to_blob(result)).encode()

        pipe = raw.pipeline(transaction=False)
        for n in range(1000):  # small: the count bound applies
            pipe.rpush(transport.reply_key, blob(f"small-{n}"))
        pipe.execute()
        mine = RpcMessage(api_name="auth", procedure_name="check_password", kwargs={},
                          id="mine", return_path=transport.get_return_path(
                              RpcMessage(api_name="auth", procedure_name="x", kwargs={})))
        raw.rpush(transport.reply_key, blob("mine"))
        got = await transport.receive_result(mine, mine.return_path, timeout=WAIT)
        assert got.rpc_message_id == "mine"
        assert len(transport._early) <= 100
        assert transport.dropped_results >= 900
        # Kept are the newest: the oldest were dropped first.
        assert "small-999" in transport._early and "small-0" not in transport._early

        dropped = transport.dropped_results
        for n in range(100):  # 2 KB each: the byte bound applies before the count
            raw.rpush(transport.reply_key, blob(f"big-{n}", 2048))
        await asyncio.sleep(0)
        mine.id = "mine-2"
        raw.rpush(transport.reply_key, blob("mine-2"))
        await transport.receive_result(mine, mine.return_path, timeout=WAIT)
        assert transport._early_bytes <= 64 * 1024
        assert sum(size for _, _, size in transport._early.values()) == transport._early_bytes
        assert transport.dropped_results > dropped
    finally:
        await transport.close()
    warnings = [r for r in caplog.records if "nobody waits for" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited, not one per drop


BAD_HEADERS = {
    "deep": "[" * 9_000 + "]" * 9_000,  # within the size bound, past the parser's depth
    "bad-utf8": b"\xff\xfe",
    "not-json": "{traceparent",
    "not-an-object": '["00-abc"]',
    "non-string-value": '{"traceparent": 1}',
    "control-chars": '{"traceparent": "a\\nb"}',
    "too-many": json.dumps({f"h{n}": "v" for n in range(100)}),
    "huge": json.dumps({"traceparent": "x" * 100_000}),
}


async def test_bad_headers_on_an_event_are_dropped_and_the_event_delivered(
        make_redis_bus, raw):
    """Headers are advisory: whatever a peer puts in the empty-named headers field, the
    event itself is handled (without headers), never dead-lettered for them."""
    bus = make_redis_bus()
    bus.client.register_api(AuthApi())
    got: dict[str, Any] = {}
    done = asyncio.Event()

    async def welcome(event: EventMessage, username: str, email: str) -> None:
        got[username] = event.headers
        if len(got) == len(BAD_HEADERS):
            done.set()

    bus.auth.user_registered.listen(welcome, listener_name="welcome", since="0")
    for name, value in BAD_HEADERS.items():
        raw.xadd("auth.*:stream", {"id": str(uuid.uuid4()), "api_name": "auth",
                                   "event_name": "user_registered", "version": "1",
                                   ":username": json.dumps(name), ":email": '"e"', "": value})
    worker = bus.client.worker()
    await worker.start()
    try:
        await asyncio.wait_for(done.wait(), WAIT)
    finally:
        await worker.stop()
    assert got == dict.fromkeys(BAD_HEADERS)
    assert not raw.exists("auth.*:stream:dead")
