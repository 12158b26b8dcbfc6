"""Hostile input through the memory transports, by class: one bad entry, call or result
affects only itself, names and ids from the wire are checked, and results nobody takes are
bounded. (The Redis side of the same classes: tests/redis/test_hostile_wire.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from bus_memory import MemoryResultTransport, MemoryRpcTransport, get_broker

from bus_core import Bus, EventMessage, MalformedMessage
from bus_core.default_plugins.json_serializer import JsonSerializer
from bus_core.messages import (
    ResultMessage,
    RpcMessage,
    event_from_blob,
    result_from_blob,
    rpc_from_blob,
)
from bus_core.serialization import SizeLimitedSerializer
from bus_core.transports import MalformedRpc, decode_call
from tests.apis import AuthApi
from tests.conftest import memory_config
from tests.helpers import ExplodingPlugin, ExplodingSerializer, event_transport, eventually, serving

WAIT = 5.0
DEEP = b"[" * 100_000  # RecursionError in json.loads, whatever the recursion limit


def hostile_bus(make_bus: Callable[..., Bus], broker_name: str, **options: Any) -> Bus:
    config = memory_config(broker_name, rpc_timeout=WAIT)
    config["bus"]["serializer"] = "exploding-json"
    return make_bus(plugins=[ExplodingPlugin()], config=config, **options)


def blob(message_id: Any = "m", **metadata: Any) -> dict[str, Any]:
    base = {"id": message_id, "api_name": "auth", "event_name": "user_registered",
            "version": 1}
    base.update(metadata)
    return {"metadata": base, "kwargs": {"username": "ada", "email": "e"}}


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- names and ids from the wire -----------------------------------------------------------------

BAD_NAMES = {"newline": "name\n", "carriage-return": "na\rme", "space": "na me",
             "unicode": "nämé", "huge": "n" * 10_000, "empty": "", "dash": "na-me",
             "leading-digit": "1name", "nul": "na\x00me"}
BAD_IDS = {"newline": "id\n", "carriage-return": "i\rd", "escape": "id\x1b[2J",
           "huge": "i" * 10_000, "empty": "", "line-separator": "id\u2028"}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_invalid_names_from_the_wire_are_malformed(name: str) -> None:
    rpc = {"metadata": {"id": "1", "api_name": "auth", "procedure_name": "check",
                        "return_path": "memory://auth.check:result:1"}, "kwargs": {}}
    for key, value in (("procedure_name", name), ("api_name", name), ("api_name", f"a.{name}")):
        bad = {"metadata": {**rpc["metadata"], key: value}, "kwargs": {}}
        with pytest.raises(MalformedMessage) as caught:
            rpc_from_blob(bad)
        assert "\n" not in str(caught.value) and len(str(caught.value)) < 300
    for key, value in (("event_name", name), ("api_name", name), ("api_name", f"{name}.a")):
        with pytest.raises(MalformedMessage):
            event_from_blob(blob(**{key: value}))


@pytest.mark.parametrize("message_id", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_invalid_message_ids_from_the_wire_are_malformed(message_id: str) -> None:
    with pytest.raises(MalformedMessage):
        event_from_blob(blob(message_id))
    with pytest.raises(MalformedMessage):
        rpc_from_blob({"metadata": {"id": message_id, "api_name": "auth",
                                    "procedure_name": "check", "return_path": "x"}})
    for key in ("id", "rpc_message_id"):
        metadata = {"id": "r", "rpc_message_id": "c", key: message_id}
        with pytest.raises(MalformedMessage):
            result_from_blob({"metadata": metadata, "kwargs": {"result": 1}})


def test_valid_names_and_ids_still_pass() -> None:
    for api in ("auth", "my_company.auth", "internal.state", "_private.x1"):
        event = event_from_blob(blob("42838104-eae5-11f1-8ca3-02fc00000001", api_name=api))
        assert event.api_name == api
    assert rpc_from_blob({"metadata": {"id": "a b:c/d", "api_name": "a.b",
                                       "procedure_name": "_x", "return_path": "x"}}).id


# -- anything a serializer raises --------------------------------------------------------------


@pytest.mark.parametrize("data", [DEEP, b"\xff\xfe", b"{nope", b'"explode"', b"\x00"],
                         ids=["deep", "not-utf8", "bad-json", "serializer-raises", "nul"])
def test_the_serializer_wrapper_turns_any_failure_into_malformed_message(data: bytes) -> None:
    serializer = SizeLimitedSerializer(ExplodingSerializer(), 1 << 20)
    with pytest.raises(MalformedMessage) as caught:
        serializer.loads(data)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400
    item = decode_call(serializer, data)
    assert isinstance(item, MalformedRpc) and item.return_path is None


def test_decoding_a_call_never_raises_even_with_a_bare_serializer() -> None:
    """A transport may hold an unwrapped serializer: decode_call still never raises."""
    for data in (DEEP, b"\xff", b'"explode"', encode({"metadata": {"id": 5}})):
        assert isinstance(decode_call(ExplodingSerializer(), data), MalformedRpc)


# -- event batches with poison -------------------------------------------------------------------


async def test_undecodable_entries_are_dead_lettered_and_the_rest_of_the_batch_handled(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    bus = hostile_bus(make_bus, broker_name)
    bus.client.register_api(AuthApi())
    handled: list[str] = []

    async def welcome(event: EventMessage, username: str, email: str) -> None:
        handled.append(event.id)

    bus.auth.user_registered.listen(welcome, listener_name="robust")
    transport = await event_transport(bus)
    stream = get_broker(broker_name).stream(transport.stream_name("auth", "user_registered"))
    poison = [
        DEEP, b"\xff\xfe\xfd", b"{nope", encode(blob("explode")),  # the serializer raises
        encode(blob(5)), encode(blob(version=1e999)), encode(blob(version=[1])),
        encode(blob(api_name=["auth"])), encode(blob(event_name={"a": 1})),
        encode(blob("x\ny")), encode(blob("")), encode(blob(event_name="user registered")),
        encode(blob(api_name="auth\n")), encode({"metadata": blob()["metadata"], "kwargs": []}),
        b"null", encode([1, 2]),
    ]
    good = [f"good-{n}" for n in range(6)]
    async with serving(bus):
        # Appended in one go: the consumer takes them in one batch.
        for n, data in enumerate(poison):
            stream.append(data)
            if n % 3 == 0:
                stream.append(encode(blob(good[n // 3])))
        await eventually(lambda: len(handled) == len(good)
                         and len(transport.dead_letters()) == len(poison))
        await asyncio.sleep(0.05)
    assert sorted(handled) == good  # each exactly once
    letters = transport.dead_letters()
    assert sorted(letter.data for letter in letters) == sorted(poison)
    assert all("\n" not in letter.reason and len(letter.reason) < 400 for letter in letters)
    group = stream.groups[f"{bus.client.service_name}-robust"]
    assert group.pending == {}


# -- RPC batches with poison ---------------------------------------------------------------------


async def test_every_valid_call_popped_with_poison_is_answered(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    server = hostile_bus(make_bus, broker_name)
    server.client.register_api(AuthApi())
    caller = hostile_bus(make_bus, broker_name, service_name="web")
    broker = get_broker(broker_name)
    calls = [asyncio.ensure_future(caller.auth.slow_echo.call_async(value=f"v{n}"))
             for n in range(10)]
    await eventually(lambda: broker.queued_calls("auth") == 10)
    queue = broker.rpc_queues["auth"]
    expires = time.monotonic() + WAIT
    for data in (DEEP, b"\xff", b"{nope", encode({"metadata": {"id": "explode"}}),
                 encode({"metadata": {"id": [1], "api_name": 5}, "kwargs": []}), b"null"):
        queue.appendleft((data, expires))  # popped in the same batch as the 10 calls
    queue.append((DEEP, expires))
    async with serving(server):
        results = await asyncio.wait_for(asyncio.gather(*calls), WAIT)
    assert sorted(results) == sorted(f"v{n}" for n in range(10))


async def test_calls_asking_for_another_result_key_are_refused(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    server = make_bus()
    server.client.register_api(AuthApi())
    broker = get_broker(broker_name)
    serializer = server.client.serializer
    transport = MemoryRpcTransport(broker=broker_name, serializer=serializer,
                                   service_name="web", process_name="p")
    consumer = await transport.open_consumer(["auth"])
    paths = ["memory://auth.check_password:result:someone-else", "memory://anything",
             "redis+key://bus:reply:x", "memory://", "http://x"]
    for path in paths:
        call = {"metadata": {"id": "mine", "api_name": "auth",
                             "procedure_name": "check_password", "return_path": path},
                "kwargs": {}}
        broker.push_call("auth", serializer.dumps(call), time.monotonic() + WAIT)
    items = await consumer.receive(32)
    assert len(items) == len(paths)
    for item in items:
        assert isinstance(item, MalformedRpc) and item.return_path is None, item
        assert "refused" in item.problem and "\n" not in item.problem
    async with serving(server):
        for path in paths:
            call = {"metadata": {"id": "mine", "api_name": "auth",
                                 "procedure_name": "check_password", "return_path": path},
                    "kwargs": {"username": "a", "password": "b"}}
            broker.push_call("auth", serializer.dumps(call), time.monotonic() + WAIT)
        await eventually(lambda: broker.queued_calls("auth") == 0)
        await asyncio.sleep(0.05)
    assert broker.results == {}


# -- results nobody takes -----------------------------------------------------------------------


async def test_results_nobody_takes_are_bounded_by_count_and_bytes(broker_name: str) -> None:
    serializer = SizeLimitedSerializer(JsonSerializer(), 1 << 20)
    results = MemoryResultTransport(broker=broker_name, serializer=serializer,
                                    service_name="svc", process_name="w",
                                    max_unclaimed_results=50, max_unclaimed_bytes=32 * 1024)
    broker = get_broker(broker_name)

    async def send(n: int, size: int) -> RpcMessage:
        call = RpcMessage(api_name="auth", procedure_name="echo", kwargs={}, id=f"c{n}")
        await results.send_result(call, ResultMessage(rpc_message_id=call.id,
                                                      result="x" * size),
                                  results.get_return_path(call))
        return call

    for n in range(500):
        await send(n, 10)
    assert len(broker.results) == 50 and results.dropped_results == 450
    assert "auth.echo:result:c499" in broker.results  # the newest kept, the oldest dropped
    assert "auth.echo:result:c0" not in broker.results
    for n in range(500, 600):
        await send(n, 2048)
    assert sum(len(data) for data, _ in broker.results.values()) <= 32 * 1024
    assert broker._result_bytes == sum(len(data) for data, _ in broker.results.values())
    last = await send(600, 10)  # a result still kept is taken as usual
    got = await results.receive_result(last, results.get_return_path(last), timeout=1)
    assert got.rpc_message_id == "c600"


def test_dead_letters_are_bounded_newest_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from bus_memory import broker as broker_module

    monkeypatch.setattr(broker_module, "MAX_DEAD_LETTERS", 5)
    broker = broker_module.MemoryBroker("bounded-dead-letters")
    stream = broker.stream("a.*:stream", None)
    group = broker.join_group(stream, "svc-l", "c1", "0")
    for n in range(12):
        broker.dead_letter(stream, group, n, b"{}", f"reason {n}")
    assert [letter.reason for letter in broker.dead_letters] == [
        f"reason {n}" for n in range(7, 12)]
