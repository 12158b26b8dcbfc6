"""Sharing schemas: workers publish with the TTL and re-publish before it runs out, clients
load lazily and refresh, recorded files are used; on the memory transport (the same on
Redis: test_redis_schema.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from bus_memory import get_broker
from bus_schema import SchemaValidationError, api_schema
from bus_schema.plugin import store_for

from bus_core import RpcTimeout
from bus_core.errors import ConfigError
from tests.apis import AuthApi
from tests.conftest import memory_config
from tests.helpers import eventually, serving
from tests.schema.conftest import with_schema
from tests.schema.typed import ShopApi

SHORT = {"timeout": 0.2}


def memory(broker: str, *, ttl: float | None = 60, **options: Any) -> dict[str, Any]:
    config = with_schema(memory_config(broker), **options)
    config["bus"]["schema"]["ttl"] = ttl
    return config


def stored(broker: str) -> dict[str, tuple[dict[str, Any], float | None]]:
    """{api: (schema, seconds left or None)} on the memory broker."""
    clock = time.monotonic()
    return {name: (json.loads(data), None if expires is None else expires - clock)
            for name, (data, expires) in get_broker(broker).schemas.items()}


def live(broker: str) -> set[str]:
    return {name for name, (_, left) in stored(broker).items() if left is None or left > 0}


# -- publishing --------------------------------------------------------------------------------


async def test_a_worker_publishes_its_apis_with_the_configured_ttl(make_bus, broker_name) -> None:
    bus = make_bus(config=memory(broker_name, ttl=7))
    bus.client.register_api(ShopApi())
    bus.client.register_api(AuthApi())
    assert stored(broker_name) == {}
    async with serving(bus):
        found = stored(broker_name)
    assert set(found) == {"shop", "auth"}
    assert found["shop"][0] == api_schema(ShopApi)
    assert found["auth"][0] == api_schema(AuthApi)
    for _, left in found.values():
        assert left is not None and 6 < left <= 7


async def test_publishing_can_be_switched_off_and_clients_do_not_publish(
        make_bus, broker_name) -> None:
    quiet = make_bus(config=memory(broker_name, publish=False))
    quiet.client.register_api(ShopApi())
    async with serving(quiet):
        pass
    client = make_bus(config=memory(broker_name), service_name="client")
    client.client.register_api(AuthApi())
    await client.auth.user_registered.fire_async(username="a", email="b")
    listener_only = make_bus(config=memory(broker_name), service_name="listener")
    listener_only.client.register_api(AuthApi())
    async with serving(listener_only, rpcs=False):
        pass
    assert stored(broker_name) == {}


async def test_a_worker_republishes_before_the_ttl_runs_out_and_stops_when_it_stops(
        make_bus, broker_name) -> None:
    bus = make_bus(config=memory(broker_name, ttl=0.4, refresh_interval=0.1))
    bus.client.register_api(ShopApi())
    async with serving(bus):
        first = stored(broker_name)["shop"][1]
        await asyncio.sleep(0.7)  # the first store would have expired by now
        assert live(broker_name) == {"shop"}  # stored again meanwhile
    assert first is not None and first <= 0.4
    await asyncio.sleep(0.5)
    assert live(broker_name) == set()  # no refresher left running


def test_the_refresh_interval_defaults_to_four_fifths_of_the_ttl(make_bus, broker_name) -> None:
    assert store_for(make_bus(config=memory(broker_name, ttl=10)).client).refresh_interval == 8
    configured = make_bus(config=memory(broker_name, ttl=10, refresh_interval=3))
    assert store_for(configured.client).refresh_interval == 3
    assert store_for(make_bus(config=memory(broker_name, ttl=None)).client).refresh_interval == 60


async def test_a_schema_without_ttl_does_not_expire(make_bus, broker_name) -> None:
    bus = make_bus(config=memory(broker_name, ttl=None))
    bus.client.register_api(ShopApi())
    async with serving(bus):
        pass
    assert stored(broker_name)["shop"][1] is None


# -- loading -----------------------------------------------------------------------------------


async def test_a_client_loads_remote_schemas_lazily_on_first_use(make_bus, broker_name) -> None:
    caller = make_bus(config=memory(broker_name), service_name="caller")
    store = store_for(caller.client)
    worker_bus = make_bus(config=memory(broker_name))
    worker_bus.client.register_api(ShopApi())
    async with serving(worker_bus):
        pass
    assert store.remote == {}  # nothing loaded yet: creating the client loads nothing
    with pytest.raises(SchemaValidationError):
        await caller.shop.total.call_async(amount=1.5)
    assert set(store.remote) == {"shop"}
    assert store.remote["shop"] == api_schema(ShopApi)


async def test_a_client_refreshes_remote_schemas_after_the_refresh_interval(
        make_bus, broker_name) -> None:
    caller = make_bus(config=memory(broker_name, refresh_interval=0.5), service_name="caller")
    publisher = make_bus(config=memory(broker_name), service_name="publisher")
    publisher.client.register_api(ShopApi())
    async with serving(publisher):
        pass
    with pytest.raises(SchemaValidationError):
        await caller.shop.total.call_async(amount=1.5)
    # The shop's next version takes numbers (published by hand here).
    changed = api_schema(ShopApi)
    changed["rpcs"]["total"]["parameters"]["properties"]["amount"] = {"type": "number"}
    await store_for(publisher.client).store({"shop": changed}, ttl=None)
    with pytest.raises(SchemaValidationError):  # still the loaded copy
        await caller.shop.total.call_async(amount=1.5)
    await asyncio.sleep(0.55)
    with pytest.raises(RpcTimeout):  # refreshed: 1.5 is fine now, and goes out
        await caller.shop.total.call_async(amount=1.5, bus_options=SHORT)
    with pytest.raises(SchemaValidationError, match="'1.5' is not of type 'number'"):
        await caller.shop.total.call_async(amount="1.5")


async def test_a_running_worker_reloads_what_others_publish(make_bus, broker_name) -> None:
    worker_bus = make_bus(config=memory(broker_name, ttl=60, refresh_interval=0.1))
    worker_bus.client.register_api(AuthApi())
    store = store_for(worker_bus.client)
    publisher = make_bus(config=memory(broker_name), service_name="publisher")
    publisher.client.register_api(ShopApi())
    async with serving(worker_bus):
        async with serving(publisher):
            pass
        await eventually(lambda: "shop" in store.remote)


async def test_a_failing_schema_transport_does_not_stop_traffic(
        make_bus, broker_name, caplog: pytest.LogCaptureFixture) -> None:
    caller = make_bus(config=memory(broker_name), service_name="caller")
    store = store_for(caller.client)

    async def broken() -> dict[str, Any]:
        raise ConnectionError("schema store down")

    store.load_remote = broken  # type: ignore[method-assign]
    with pytest.warns(RuntimeWarning, match="'shop'"), pytest.raises(RpcTimeout):
        await caller.shop.total.call_async(amount=1.5, bus_options=SHORT)
    assert "schema store down" in caplog.text


# -- recorded files ----------------------------------------------------------------------------


def write_schemas(path: Any, schemas: dict[str, Any]) -> None:
    path.write_text(json.dumps(schemas, indent=2, sort_keys=True))


async def test_recorded_schema_files_and_folders_are_used(make_bus, broker_name, tmp_path) -> None:
    folder = tmp_path / "schemas"
    folder.mkdir()
    write_schemas(folder / "shop.json", {"shop": api_schema(ShopApi)})
    write_schemas(folder / "notes.txt", {"ignored": {}})
    single = tmp_path / "auth.json"
    write_schemas(single, {"auth": api_schema(AuthApi)})
    caller = make_bus(config=memory(broker_name, files=[str(folder), str(single)]))
    store = store_for(caller.client)
    assert set(store.files) == {"shop", "auth"}
    with pytest.raises(SchemaValidationError, match=r"shop\.total\(\) parameter 'amount'"):
        await caller.shop.total.call_async(amount=1.5)
    with pytest.raises(SchemaValidationError, match=r"auth\.check_password\(\) parameter"):
        await caller.auth.check_password.call_async(username=1, password="x")
    assert store.remote == {} and store._loaded_at is None  # no remote load was needed


def test_a_bad_schema_file_is_a_config_error_naming_it(make_bus, broker_name, tmp_path) -> None:
    missing = tmp_path / "missing.json"
    bus = make_bus(config=memory(broker_name, files=[str(missing)]))
    with pytest.raises(ConfigError, match="missing.json"):
        store_for(bus.client)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"shop": [1, 2]}))
    with pytest.raises(ConfigError, match="wrong.json.*not a schema file"):
        store_for(make_bus(config=memory(broker_name, files=[str(wrong)])).client)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json"):
        store_for(make_bus(config=memory(broker_name, files=[str(broken)])).client)


async def test_concurrent_first_calls_share_one_load(make_bus, broker_name) -> None:
    publisher = make_bus(config=memory(broker_name), service_name="publisher")
    publisher.client.register_api(ShopApi())
    async with serving(publisher):
        pass
    caller = make_bus(config=memory(broker_name), service_name="caller")
    store = store_for(caller.client)
    loads = 0
    original = store.load_remote

    async def counted() -> dict[str, Any]:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)
        return await original()

    store.load_remote = counted  # type: ignore[method-assign]
    results = await asyncio.gather(
        *(caller.shop.total.call_async(amount=1.5) for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, SchemaValidationError) for r in results), results
    assert loads == 1
