"""Interoperability with Lightbus 1.x on a real redis-server.

The Lightbus side is written by hand with redis-py, exactly as
/work/shared/reference/lightbus-wire-protocol.md describes Lightbus 1.1.2 on the wire
(sections 3 and 4; the checklist of section 8): keys, commands, fields and encodings.
Lightbus encodes JSON as `json.dumps(value, sort_keys=True)` (ASCII escapes, default
separators), so `lightbus_json` below is the exact byte form a Lightbus peer writes."""

from __future__ import annotations

import json
import queue
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from bus_redis import RedisSchemaTransport

from bus_core import EventMessage, RemoteError
from bus_core.default_plugins.json_serializer import JsonSerializer
from bus_core.serialization import SizeLimitedSerializer
from tests.apis import AuthApi, TypesApi
from tests.helpers import wait_until
from tests.redis.conftest import redis_config

WAIT = 5.0  # upper bound for what must happen; never reached when it does
RETURN_PATH_PREFIX = "redis+key://"
RPC_METADATA = {"id", "api_name", "procedure_name", "return_path"}


def lightbus_json(value: Any) -> bytes:
    """JSON exactly as Lightbus 1.x's json_encode writes it."""
    return json.dumps(value, sort_keys=True).encode()




def config(url: str, *, event: dict[str, Any] | None = None,
           result: dict[str, Any] | None = None, **api_default: Any) -> dict[str, Any]:
    document = redis_config(url, **api_default)
    default = document["apis"]["default"]
    if event:
        default["event_transport"] = {"redis": {"url": url, **event}}
    if result:
        default["result_transport"] = {"redis": {"url": url, **result}}
    return document


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def is_uuid_text(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


# -- a Lightbus caller, a Bus worker ----------------------------------------------------------


class LightbusCaller:
    """Calls RPCs the way a Lightbus 1.x client does (expiry key first, as section 8 asks)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def send(self, api: str, procedure: str, kwargs: dict[str, Any],
             return_key: str | None = None, expiry: bool = True,
             extra_metadata: dict[str, Any] | None = None) -> tuple[str, str]:
        call_id = str(uuid.uuid1())
        key = return_key or f"{api}.{procedure}:result:{call_id}"
        blob = {"metadata": {"id": call_id, "api_name": api, "procedure_name": procedure,
                             "return_path": RETURN_PATH_PREFIX + key, **(extra_metadata or {})},
                "kwargs": kwargs}
        pipe = self.client.pipeline(transaction=False)
        if expiry:
            pipe.set(f"rpc_expiry_key:{call_id}", "1")
            pipe.expire(f"rpc_expiry_key:{call_id}", 5)
        pipe.rpush(f"{api}:rpc_queue", lightbus_json(blob))
        pipe.execute()
        return call_id, key

    def result(self, key: str) -> tuple[bytes, int]:
        """The raw result blob on `key` and the key's TTL, as seen before popping it."""
        wait_until(lambda: self.client.llen(key), f"a result on {key}")
        ttl = self.client.ttl(key)
        assert self.client.llen(key) == 1
        data = self.client.lpop(key)
        assert data is not None
        return data, ttl


@pytest.fixture
def auth_worker(make_redis_bus):
    server = make_redis_bus(service_name="auth_service", process_name="auth-1")
    server.client.register_api(AuthApi())
    server.client.register_api(TypesApi())
    server.client.start_worker()
    return server


def test_a_lightbus_caller_gets_a_lightbus_result_from_a_bus_worker(auth_worker, raw):
    caller = LightbusCaller(raw)
    call_id, key = caller.send("auth", "check_password",
                               {"password": "secret", "username": "admin"})
    data, ttl = caller.result(key)
    assert 0 < ttl <= 60
    blob = json.loads(data)
    assert data == lightbus_json(blob)  # sorted keys, ASCII, Lightbus separators
    assert blob == {"metadata": {"id": blob["metadata"]["id"], "rpc_message_id": call_id,
                                 "error": False},
                    "kwargs": {"result": True}}
    assert isinstance(blob["metadata"]["id"], str) and blob["metadata"]["id"] != call_id

    # A value that needs deforming comes back in its Lightbus JSON form.
    _, key = caller.send("my_company.types", "address_of", {"street": "Rue de l\u2019\u00c9glise"})
    data, _ = caller.result(key)
    assert json.loads(data)["kwargs"] == {"result": {"number": 7,
                                                     "street": "Rue de l\u2019\u00c9glise"}}
    assert b"\\u2019" in data and data.isascii()


def test_a_bus_worker_error_reaches_a_lightbus_caller_as_lightbus_writes_it(auth_worker, raw):
    caller = LightbusCaller(raw)
    call_id, key = caller.send("auth", "fail", {"message": "boom 3"})
    data, ttl = caller.result(key)
    assert 0 < ttl <= 60
    blob = json.loads(data)
    metadata = blob["metadata"]
    assert set(metadata) == {"id", "rpc_message_id", "error", "trace"}
    assert metadata["error"] is True and metadata["rpc_message_id"] == call_id
    assert metadata["trace"].startswith("Traceback (most recent call last):")
    assert "ValueError: boom 3" in metadata["trace"]
    assert blob["kwargs"] == {"result": "ValueError('boom 3')"}

    # What a Lightbus worker would stop on (section 3.4) is an error result here.
    for procedure, kwargs, expected in (
        ("check_password", {"username": 123, "password": "x"}, "username"),
        ("check_password", {"username": "admin"}, "password"),
        ("no_such_rpc", {}, "no_such_rpc"),
    ):
        call_id, key = caller.send("auth", procedure, kwargs)
        data, _ = caller.result(key)
        blob = json.loads(data)
        assert blob["metadata"]["error"] is True, blob
        assert blob["metadata"]["rpc_message_id"] == call_id
        assert expected in blob["kwargs"]["result"], blob["kwargs"]["result"]


def test_a_bus_worker_answers_lightbus_return_keys_only_and_ignores_calls_without_expiry_key(
        auth_worker, raw):
    caller = LightbusCaller(raw)
    _, ignored_key = caller.send("auth", "check_password",
                                 {"password": "secret", "username": "admin"}, expiry=False)
    # A return key of neither form callers write (Lightbus's own {api}.{rpc}:result:{id},
    # Bus's bus:reply:...): refused, never written to.
    caller.send("auth", "check_password", {"password": "nope", "username": "admin"},
                return_key="my_custom_reply_key")
    call_id, key = caller.send("auth", "check_password",
                               {"password": "nope", "username": "admin"})
    data, _ = caller.result(key)
    assert json.loads(data)["metadata"]["rpc_message_id"] == call_id
    assert json.loads(data)["kwargs"] == {"result": False}
    # Queued before the answered call, so already taken: never answered.
    assert raw.llen("auth:rpc_queue") == 0
    assert not raw.exists(ignored_key)
    assert not raw.exists("my_custom_reply_key")

    # Liberal in what it accepts: metadata keys a Lightbus worker would choke on are fine.
    call_id, key = caller.send("auth", "check_password",
                               {"password": "secret", "username": "admin"},
                               extra_metadata={"trace_id": "abc", "native_id": "1-0"})
    data, _ = caller.result(key)
    assert json.loads(data)["kwargs"] == {"result": True}


# -- a Bus caller, a Lightbus worker ----------------------------------------------------------


class LightbusWorker:
    """Serves one API the way a Lightbus 1.x worker does (section 3.4): BLPOP the queue, DEL
    the expiry key (run only if it said 1), LPUSH + EXPIRE a result blob on the return path.
    It records what it saw, for checks on what Bus sends."""

    def __init__(self, url: str, api: str, procedures: dict[str, Callable[..., Any]]) -> None:
        self.client = redis.Redis.from_url(url)
        self.api = api
        self.procedures = procedures
        self.calls: list[tuple[bytes, int]] = []  # (raw blob, PTTL of its expiry key)
        self.dropped: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> LightbusWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self.thread.join(5)
        self.client.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            popped = self.client.blpop([f"{self.api}:rpc_queue"], timeout=0.1)
            if popped is None:
                continue
            data = popped[1]
            metadata = json.loads(data)["metadata"]
            expiry = f"rpc_expiry_key:{metadata['id']}"
            self.calls.append((data, self.client.pttl(expiry)))
            if self.client.delete(expiry) != 1:
                self.dropped.append(metadata["id"])
                continue
            kwargs = json.loads(data)["kwargs"]
            reply: dict[str, Any] = {"id": str(uuid.uuid1()), "rpc_message_id": metadata["id"],
                                     "error": False}
            try:
                result = self.procedures[metadata["procedure_name"]](**kwargs)
            except Exception as exc:
                result = repr(exc)
                reply.update(error=True, trace=traceback.format_exc())
            return_path = metadata["return_path"]
            assert return_path.startswith(RETURN_PATH_PREFIX)
            key = return_path[len(RETURN_PATH_PREFIX):]
            pipe = self.client.pipeline(transaction=False)
            pipe.lpush(key, lightbus_json({"metadata": reply, "kwargs": {"result": result}}))
            pipe.expire(key, 60)
            pipe.execute()


def _refuse(message: str) -> None:
    raise ValueError(message)


PROCEDURES: dict[str, Callable[..., Any]] = {
    "check_password": lambda username, password: username == "admin" and password == "secret",
    "fail": _refuse,
}


@pytest.mark.parametrize("reply_list", ["shared", "per_call"])
def test_a_bus_caller_is_answered_by_a_lightbus_worker(make_redis_bus, redis_url, reply_list):
    caller = make_redis_bus(config=config(redis_url, result={"reply_list": reply_list}),
                            service_name="web")
    with LightbusWorker(redis_url, "auth", PROCEDURES) as worker:
        assert caller.auth.check_password(username="admin", password="secret") is True
        assert caller.auth.check_password(username="admin", password="wrong") is False
        with pytest.raises(RemoteError) as caught:
            caller.auth.fail(message="no such luck")
        assert caught.value.remote_type == "ValueError"
        assert "no such luck" in str(caught.value)

    assert worker.dropped == []
    data, pttl = worker.calls[0]
    blob = json.loads(data)
    assert data == lightbus_json(blob)
    assert set(blob) == {"metadata", "kwargs"}
    assert set(blob["metadata"]) == RPC_METADATA  # exactly: Lightbus refuses any other key
    metadata = blob["metadata"]
    assert all(isinstance(v, str) and v for v in metadata.values())
    assert metadata["api_name"] == "auth" and metadata["procedure_name"] == "check_password"
    assert is_uuid_text(metadata["id"])
    assert blob["kwargs"] == {"username": "admin", "password": "secret"}
    assert 0 < pttl <= 3000  # the expiry key lives as long as the caller waits (rpc_timeout 3)
    assert metadata["return_path"].startswith(RETURN_PATH_PREFIX)
    if reply_list == "per_call":
        assert metadata["return_path"] == \
            f"{RETURN_PATH_PREFIX}auth.check_password:result:{metadata['id']}"


# -- a Lightbus publisher, a Bus listener -----------------------------------------------------


@pytest.mark.parametrize("stream_use", ["per_api", "per_event"])
def test_a_lightbus_publisher_is_heard_by_a_bus_listener(make_redis_bus, redis_url, raw,
                                                          stream_use):
    stream = ("my_company.types.*:stream" if stream_use == "per_api"
              else "my_company.types.order_placed:stream")
    raw.xadd(stream, {"": ""})  # Lightbus creates a stream with a noop entry
    listener = make_redis_bus(config=config(redis_url, event={"stream_use": stream_use}),
                              service_name="shop", process_name="shop-1")
    heard: queue.Queue[tuple[str, EventMessage, dict[str, Any]]] = queue.Queue()

    def on_order(event: EventMessage, order_id: uuid.UUID, total: Decimal,
                 note: str = "") -> None:
        heard.put(("new", event, {"order_id": order_id, "total": total, "note": note}))

    def replay(event: EventMessage, order_id: uuid.UUID, total: Decimal, note: str = "") -> None:
        heard.put(("replay", event, {"order_id": order_id}))

    listener.client.listen("my_company.types.order_placed", on_order, listener_name="orders")
    listener.client.listen("my_company.types.order_placed", replay, listener_name="replay",
                           since="0")  # reads the noop entry too: it must be skipped
    listener.client.start_worker()

    if stream_use == "per_api":  # another event of the API on the same stream: not ours
        raw.xadd(stream, {"id": str(uuid.uuid1()), "api_name": "my_company.types",
                          "event_name": "order_cancelled", "version": "1",
                          ":order_id": json.dumps(str(uuid.uuid4()))})
    event_id, order_id = str(uuid.uuid1()), uuid.uuid4()
    entry_id = raw.xadd(stream, {
        "id": event_id, "api_name": "my_company.types", "event_name": "order_placed",
        "version": "1", ":order_id": json.dumps(str(order_id)),
        ":total": json.dumps("12.50"), ":note": json.dumps("café crème"),
    }, maxlen=100_000, approximate=True)

    got = {}
    for _ in range(2):
        name, event, kwargs = heard.get(timeout=WAIT)
        got[name] = (event, kwargs)
    event, kwargs = got["new"]
    assert kwargs == {"order_id": order_id, "total": Decimal("12.50"), "note": "café crème"}
    assert isinstance(kwargs["order_id"], uuid.UUID) and isinstance(kwargs["total"], Decimal)
    assert (event.id, event.api_name, event.event_name, event.version) == \
        (event_id, "my_company.types", "order_placed", 1)
    assert event.native_id == text(entry_id)
    assert got["replay"][0].id == event_id
    for group in ("shop-orders", "shop-replay"):
        wait_until(lambda g=group: raw.xpending(stream, g)["pending"] == 0,
                   f"{group} to acknowledge everything")
    assert heard.empty()  # neither the noop nor the other event reached a handler
    assert not raw.exists(f"{stream}:dead")  # nor were they taken for malformed events


# -- what Bus writes ---------------------------------------------------------------------------


def test_bus_events_on_the_wire_are_what_lightbus_reads(make_redis_bus, raw):
    publisher = make_redis_bus(service_name="auth_service")
    publisher.client.register_api(AuthApi())
    message = publisher.auth.user_registered.fire(username="zoë",
                                                  email={"z": 1, "a": "é", "m": [True]})
    [(entry_id, fields)] = raw.xrange("auth.*:stream")
    assert text(entry_id) == message.native_id
    names = [text(name) for name in fields]
    assert names[:4] == ["id", "api_name", "event_name", "version"]  # bare metadata first
    assert sorted(names[4:]) == [":email", ":username"]
    # Metadata as raw strings (not JSON-quoted), version a decimal integer.
    assert fields[b"id"] == message.id.encode() and is_uuid_text(message.id)
    assert fields[b"api_name"] == b"auth"
    assert fields[b"event_name"] == b"user_registered"
    assert fields[b"version"] == b"1"
    # Parameters as Lightbus JSON: sorted keys, ASCII escapes.
    assert fields[b":username"] == b'"zo\\u00eb"'
    assert fields[b":email"] == b'{"a": "\\u00e9", "m": [true], "z": 1}'


def test_bus_listener_group_and_consumer_names_are_lightbus_names(make_redis_bus, raw):
    listener = make_redis_bus(service_name="billing", process_name="billing-7")
    heard: queue.Queue[str] = queue.Queue()
    listener.client.listen("auth.user_registered",
                           lambda event, username, email: heard.put(username),
                           listener_name="invoice")
    listener.client.start_worker()
    publisher = make_redis_bus(service_name="auth_service")
    publisher.client.register_api(AuthApi())
    publisher.auth.user_registered.fire(username="ada", email="ada@example.com")
    assert heard.get(timeout=WAIT) == "ada"

    groups = raw.xinfo_groups("auth.*:stream")
    assert [text(g["name"]) for g in groups] == ["billing-invoice"]
    consumers = raw.xinfo_consumers("auth.*:stream", "billing-invoice")
    assert [text(c["name"]) for c in consumers] == ["billing-7"]


async def test_schemas_are_stored_and_loaded_the_lightbus_way(redis_url, raw):
    transport = RedisSchemaTransport(
        url=redis_url, serializer=SizeLimitedSerializer(JsonSerializer(), 1024 * 1024),
        service_name="auth_service", process_name="auth-1")
    auth_schema = {
        "rpcs": {"check_password": {
            "parameters": {"type": "object", "additionalProperties": False,
                           "properties": {"username": {"type": "string"},
                                          "password": {"type": "string"}},
                           "required": ["username", "password"]},
            "response": {"type": "boolean"}}},
        "events": {"user_registered": {"parameters": {"type": "object"}}},
    }
    await transport.open()
    try:
        await transport.store("auth", auth_schema, ttl=60)
        assert raw.get("schema:auth") == lightbus_json(auth_schema)
        assert 0 < raw.ttl("schema:auth") <= 60
        assert raw.smembers("schemas") == {b"auth"}

        # What Lightbus peers leave: their schemas, a name whose schema expired (the set is
        # never pruned), and one we cannot read.
        lightbus_schema = {"events": {}, "rpcs": {"ping": {"parameters": {}, "response": {}}}}
        raw.set("schema:my_company.billing", lightbus_json(lightbus_schema), ex=60)
        raw.set("schema:broken", b"{not json", ex=60)
        raw.sadd("schemas", "my_company.billing", "expired.api", "broken")
        assert await transport.load() == {"auth": auth_schema,
                                          "my_company.billing": lightbus_schema}

        await transport.store("forever", {"events": {}, "rpcs": {}}, ttl=None)
        assert raw.ttl("schema:forever") == -1
    finally:
        await transport.close()


# -- other services' groups --------------------------------------------------------------------


@pytest.fixture
def foreign_groups(raw) -> Iterator[str]:
    """A stream with groups and consumers of other services (and a stale consumer in our own
    group), as a Lightbus deployment leaves them."""
    stream = "auth.*:stream"
    raw.xadd(stream, {"": ""})
    raw.xgroup_create(stream, "lightbus_svc-idle_listener", id="$")  # no consumers at all
    raw.xgroup_create(stream, "other-listener", id="$")
    raw.xgroup_createconsumer(stream, "other-listener", "other-proc")
    raw.xgroup_create(stream, "svc-welcome", id="$")
    raw.xgroup_createconsumer(stream, "svc-welcome", "old-proc")
    yield stream


def test_bus_never_deletes_other_services_groups_or_consumers(make_redis_bus, raw,
                                                              foreign_groups):
    stream = foreign_groups
    before = {text(g["name"]): text(g["last-delivered-id"]) for g in raw.xinfo_groups(stream)}
    listener = make_redis_bus(service_name="svc", process_name="new-proc")
    heard: queue.Queue[str] = queue.Queue()
    listener.client.listen("auth.user_registered",
                           lambda event, username, email: heard.put(username),
                           listener_name="welcome")
    listener.client.start_worker()
    publisher = make_redis_bus(service_name="auth_service")
    publisher.client.register_api(AuthApi())
    publisher.auth.user_registered.fire(username="ada", email="ada@example.com")
    assert heard.get(timeout=WAIT) == "ada"
    wait_until(lambda: raw.xpending(stream, "svc-welcome")["pending"] == 0, "the ack")
    listener.client.stop_worker()

    after = {text(g["name"]): text(g["last-delivered-id"]) for g in raw.xinfo_groups(stream)}
    assert set(after) == set(before)
    for group in ("lightbus_svc-idle_listener", "other-listener"):
        assert after[group] == before[group], f"Bus read from {group}"
    assert [text(c["name"]) for c in raw.xinfo_consumers(stream, "other-listener")] == \
        ["other-proc"]
    assert sorted(text(c["name"]) for c in raw.xinfo_consumers(stream, "svc-welcome")) == \
        ["new-proc", "old-proc"]
