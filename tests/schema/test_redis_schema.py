"""The schema plugin on Redis: schemas stored the Lightbus way (`schema:{api}` with a TTL,
indexed by the `schemas` set), re-published before they expire, loaded lazily, and a
hand-written Lightbus 1.x schema honoured by a Bus caller."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from bus_schema import SchemaValidationError, api_schema
from bus_schema.generate import DRAFT
from bus_schema.plugin import store_for

from bus_core import Bus, RpcTimeout
from tests.helpers import serving
from tests.redis.conftest import redis_config
from tests.schema.conftest import closing, with_schema
from tests.schema.typed import ShopApi

SHORT = {"timeout": 0.3}


def schema_config(url: str, ttl: float | None = 60, **options: Any) -> dict[str, Any]:
    config = with_schema(redis_config(url), **options)
    config["bus"]["schema"]["ttl"] = ttl
    return config


async def test_a_worker_publishes_on_redis_as_lightbus_does(
        make_redis_bus: Callable[..., Bus], redis_url: str, raw: Any) -> None:
    bus = make_redis_bus(config=schema_config(redis_url, ttl=30))
    bus.client.register_api(ShopApi())
    async with closing(bus):
        assert not raw.exists("schema:shop")
        async with serving(bus):
            assert raw.smembers("schemas") == {b"shop"}
            data = raw.get("schema:shop")
            assert 0 < raw.ttl("schema:shop") <= 30
    assert json.loads(data) == api_schema(ShopApi)
    assert data == json.dumps(api_schema(ShopApi), sort_keys=True).encode()  # sorted, flat


async def test_a_worker_republishes_on_redis_before_the_key_expires(
        make_redis_bus: Callable[..., Bus], redis_url: str, raw: Any) -> None:
    bus = make_redis_bus(config=schema_config(redis_url, ttl=1, refresh_interval=0.2))
    bus.client.register_api(ShopApi())
    async with closing(bus):
        async with serving(bus):
            await asyncio.sleep(1.3)  # past the first store's expiry
            assert raw.exists("schema:shop")
            assert raw.pttl("schema:shop") > 500
        await asyncio.sleep(1.1)
        assert not raw.exists("schema:shop")  # the refresher stopped with the worker


async def test_a_redis_client_loads_lazily_and_validates(
        make_redis_bus: Callable[..., Bus], redis_url: str) -> None:
    worker_bus = make_redis_bus(config=schema_config(redis_url), service_name="shop")
    worker_bus.client.register_api(ShopApi())
    caller = make_redis_bus(config=schema_config(redis_url), service_name="caller")
    store = store_for(caller.client)
    async with closing(worker_bus, caller), serving(worker_bus):
        assert store.remote == {}
        with pytest.raises(SchemaValidationError, match="parameter 'amount'"):
            await caller.shop.total.call_async(amount=1.5)
        assert await caller.shop.total.call_async(amount="1.5") == "1.5"
    assert set(store.remote) == {"shop"}


def lightbus_auth_schema() -> dict[str, Any]:
    """A schema as Lightbus 1.x writes it for `my_company.auth` (reference, section 5)."""
    name = "my_company.auth"
    return {
        "events": {"user_registered": {"parameters": {
            "$schema": DRAFT, "title": f"Event {name}.user_registered parameters",
            "type": "object", "additionalProperties": False,
            "properties": {"username": {"type": "string"}, "email": {"type": "string"}},
            "required": ["username", "email"]}}},
        "rpcs": {"check_password": {
            "parameters": {
                "$schema": DRAFT, "title": f"RPC {name}.check_password() parameters",
                "type": "object", "additionalProperties": False,
                "properties": {"username": {"type": "string"},
                               "password": {"type": "string"},
                               "attempt": {"type": "array", "maxItems": 2, "minItems": 2,
                                           "items": [{"type": "integer"},
                                                     {"type": "string", "pattern":
                                                      r"^-?\d+(\.\d+)?$"}]}},
                "required": ["username", "password"]},
            "response": {"$schema": DRAFT, "title": f"RPC {name}.check_password() response",
                         "type": "boolean"}}},
    }


async def test_a_hand_written_lightbus_schema_is_honoured_by_a_bus_caller(
        make_redis_bus: Callable[..., Bus], redis_url: str, raw: Any) -> None:
    raw.set("schema:my_company.auth", json.dumps(lightbus_auth_schema(), sort_keys=True), ex=60)
    raw.sadd("schemas", "my_company.auth")
    caller = make_redis_bus(config=schema_config(redis_url), service_name="caller")
    check_password = caller.my_company.auth.check_password
    queue = "my_company.auth:rpc_queue"
    async with closing(caller):
        bad_calls: list[tuple[dict[str, Any], str]] = [
            ({"username": 7, "password": "x"}, "parameter 'username': 7"),
            ({"username": "ann"}, "parameter 'password': (missing)"),
            ({"username": "ann", "password": "x", "otp": "1"}, "parameter 'otp'"),
            ({"username": "ann", "password": "x", "attempt": [1, "one"]},
             "parameter 'attempt'[1]: 'one'"),
            ({"username": "ann", "password": "x", "attempt": [1, "1", 2]},
             "parameter 'attempt'"),
        ]
        for kwargs, expected in bad_calls:
            with pytest.raises(SchemaValidationError) as caught:
                await check_password.call_async(**kwargs)
            assert expected in str(caught.value)
            assert "my_company.auth.check_password()" in str(caught.value)
            assert raw.llen(queue) == 0, kwargs  # failed before sending
        with pytest.raises(RpcTimeout):  # a good call goes out (no Lightbus worker here)
            await check_password.call_async(username="ann", password="x",
                                            attempt=[1, "2.5"], bus_options=SHORT)
        assert raw.llen(queue) == 1
