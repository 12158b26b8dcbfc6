"""The metrics plugin in one process, on the memory transports: counts, labels, the HTTP
endpoint, listener lag, per-client registries, configuration."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from bus_metrics.plugin import _by_client, metrics_for, registry_for
from prometheus_client import generate_latest

import bus_core
from bus_core import (
    Api,
    Bus,
    ConfigError,
    Event,
    EventMessage,
    PluginError,
    RemoteError,
    RpcTimeout,
)
from tests.conftest import memory_config
from tests.helpers import EventRecorder, event_transport, eventually, serving
from tests.metrics.scrape import Scrape, fetch


class ShopApi(Api):
    """An RPC that works, one that fails, an event."""

    order_placed = Event(parameters=("order_id",))

    class Meta:
        name = "shop"

    async def price(self, item: str) -> int:
        return len(item)

    async def fail(self) -> None:
        raise ValueError("out of stock")


def with_metrics(config: dict[str, Any], **options: Any) -> dict[str, Any]:
    """`config` with the metrics plugin enabled on a free port, lag refresh off."""
    config.setdefault("plugins", {})["metrics"] = {
        "enabled": True, "port": 0, "lag_interval": 0, **options}
    return config


def scrape_registry(bus: Bus) -> Scrape:
    return Scrape(generate_latest(registry_for(bus.client)).decode())


async def scrape_http(url: str) -> Scrape:
    return Scrape(await asyncio.to_thread(fetch, url))


async def test_counts_rpcs_events_errors_and_dead_letters(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    config = with_metrics(memory_config(broker_name, max_deliveries=2))
    shop = make_bus(config=config, service_name="shop")
    web = make_bus(config=config, service_name="web")
    shop.client.register_api(ShopApi())
    fulfilled = EventRecorder()

    async def fulfil(event: EventMessage, order_id: int) -> None:
        if order_id == 3:
            raise RuntimeError("cannot fulfil order 3")
        await fulfilled(event)

    shop.shop.order_placed.listen(fulfil, listener_name="fulfil")
    transport = await event_transport(shop, "shop")
    async with serving(shop):
        url = metrics_for(shop.client).url
        assert url is not None and url.startswith("http://127.0.0.1:")
        assert await web.shop.price.call_async(item="tea") == 3
        assert await web.shop.price.call_async(item="coffee") == 6
        with pytest.raises(RemoteError, match="out of stock"):
            await web.shop.fail.call_async()
        with pytest.raises(RpcTimeout):
            await web.nobody.ping.call_async(bus_options={"timeout": 0.05})
        for order_id in (1, 2, 3):
            await shop.shop.order_placed.fire_async(order_id=order_id)
        await fulfilled.wait_for(2)
        await eventually(lambda: transport.dead_letters("shop", "order_placed"))
        await eventually(lambda: scrape_registry(shop).value(
            "bus_events_processed_total") == 4)
        served = await scrape_http(url)

    event = {"service_name": "shop", "api_name": "shop", "event_name": "order_placed",
             "transport": "memory"}
    listener = {**event, "listener_name": "fulfil"}
    assert served.types["bus_events_fired"] == "counter"
    assert served.types["bus_event_handling_seconds"] == "histogram"
    assert served.types["bus_listener_lag_events"] == "gauge"
    assert served.value("bus_events_fired_total", **event) == 3
    assert served.value("bus_event_fire_errors_total") == 0
    assert served.value("bus_events_processed_total", **listener) == 4  # 1, 2, 3 twice
    assert served.value("bus_event_handling_seconds_count", **listener) == 4
    assert served.value("bus_event_handling_seconds_bucket", le="+Inf", **listener) == 4
    assert served.value("bus_listener_errors_total", **listener) == 2
    assert served.value("bus_dead_letters_total", **listener) == 1
    assert served.value("bus_events_redelivered_total", **listener) == 1  # order 3's first try
    rpc = {"service_name": "shop", "api_name": "shop", "transport": "memory"}
    assert served.value("bus_rpcs_processed_total", procedure_name="price", **rpc) == 2
    assert served.value("bus_rpcs_processed_total", procedure_name="fail", **rpc) == 1
    assert served.value("bus_rpc_errors_total", procedure_name="fail", side="worker",
                        **rpc) == 1
    assert served.value("bus_rpc_errors_total", procedure_name="price") == 0
    assert served.value("bus_rpc_seconds_count", procedure_name="price", side="worker",
                        **rpc) == 2
    assert served.value("bus_rpcs_called_total") == 0  # the shop bus called nothing

    caller = scrape_registry(web)
    rpc = {**rpc, "service_name": "web"}
    assert caller.value("bus_rpcs_called_total", procedure_name="price", **rpc) == 2
    assert caller.value("bus_rpcs_called_total", procedure_name="fail", **rpc) == 1
    assert caller.value("bus_rpc_seconds_count", procedure_name="price", side="caller",
                        **rpc) == 2
    assert caller.value("bus_rpc_errors_total", procedure_name="fail", side="caller") == 1
    assert caller.value("bus_rpc_timeouts_total", api_name="nobody", procedure_name="ping",
                        service_name="web") == 1
    assert caller.value("bus_rpc_errors_total", api_name="nobody") == 0
    assert caller.value("bus_rpcs_processed_total") == 0
    assert {labels["side"] for labels in caller.labels("bus_rpc_seconds_count")} == {"caller"}


async def test_the_endpoint_lives_as_long_as_the_worker(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    bus = make_bus(config=with_metrics(memory_config(broker_name)))
    bus.client.register_api(ShopApi())
    metrics = metrics_for(bus.client)
    assert metrics.url is None
    async with serving(bus):
        url = metrics.url
        assert url is not None
        assert "bus_rpcs_processed" in (await scrape_http(url)).types
    assert metrics.url is None
    with pytest.raises(OSError):
        await asyncio.to_thread(fetch, url)


async def test_two_clients_in_one_process_keep_their_own_metrics(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    config = with_metrics(memory_config(broker_name))
    first = make_bus(config=config, service_name="first")
    second = make_bus(config=config, service_name="second")
    for bus in (first, second):
        bus.client.register_api(ShopApi())
    async with serving(first), serving(second):
        await first.shop.order_placed.fire_async(order_id=1)
        await first.shop.order_placed.fire_async(order_id=2)
        await second.shop.order_placed.fire_async(order_id=3)
        urls = [metrics_for(bus.client).url for bus in (first, second)]
        assert urls[0] != urls[1]
        one, two = [await scrape_http(url) for url in urls if url]
    assert one.value("bus_events_fired_total", service_name="first") == 2
    assert one.value("bus_events_fired_total", service_name="second") == 0
    assert two.value("bus_events_fired_total", service_name="second") == 1
    assert two.value("bus_events_fired_total", service_name="first") == 0
    assert registry_for(first.client) is not registry_for(second.client)


async def test_listener_lag_counts_unread_and_pending_events(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    bus = make_bus(config=with_metrics(memory_config(broker_name, ordered=True)))
    bus.client.register_api(ShopApi())
    release = asyncio.Event()
    started = EventRecorder()

    async def slow(event: EventMessage, order_id: int) -> None:
        await started(event)
        await release.wait()

    bus.shop.order_placed.listen(slow, listener_name="slow")
    metrics = metrics_for(bus.client)
    labels = {"listener_name": "slow", "api_name": "shop", "event_name": "order_placed"}
    async with serving(bus) as worker:
        for order_id in (1, 2, 3):
            await bus.shop.order_placed.fire_async(order_id=order_id)
        await started.wait_for(1)  # one in the handler (pending), two unread
        await metrics.refresh_lag(worker.listener_names)
        assert scrape_registry(bus).value("bus_listener_lag_events", **labels) == 3
        release.set()
        await started.wait_for(3)

        async def caught_up() -> bool:
            await metrics.refresh_lag(worker.listener_names)
            return scrape_registry(bus).value("bus_listener_lag_events", **labels) == 0

        for _ in range(500):
            if await caught_up():
                break
            await asyncio.sleep(0.002)
        assert await caught_up()


async def test_listener_lag_is_refreshed_while_the_worker_runs(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    bus = make_bus(config=with_metrics(memory_config(broker_name), lag_interval=0.01))
    bus.client.register_api(ShopApi())
    release = asyncio.Event()

    async def stuck(event: EventMessage, order_id: int) -> None:
        await release.wait()

    bus.shop.order_placed.listen(stuck, listener_name="stuck")
    async with serving(bus):
        await bus.shop.order_placed.fire_async(order_id=1)
        await bus.shop.order_placed.fire_async(order_id=2)
        await eventually(lambda: scrape_registry(bus).value(
            "bus_listener_lag_events", listener_name="stuck") == 2)
        release.set()
        await eventually(lambda: scrape_registry(bus).value(
            "bus_listener_lag_events", listener_name="stuck") == 0)


async def test_prefix_and_buckets_are_configurable(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    bus = make_bus(config=with_metrics(memory_config(broker_name), prefix="shop_",
                                       buckets=[0.5, 5]))
    bus.client.register_api(ShopApi())
    async with serving(bus):
        await bus.shop.price.call_async(item="x")
    scrape = scrape_registry(bus)
    assert scrape.value("shop_rpcs_called_total") == 1
    assert not [name for name, _, _ in scrape.samples if name.startswith("bus_")]
    assert {labels["le"] for labels in scrape.labels("shop_rpc_seconds_bucket")} == {
        "0.5", "5.0", "+Inf"}


def test_defaults_and_validation(broker_name: str) -> None:
    config = memory_config(broker_name)
    config["plugins"] = {"metrics": {"enabled": True}}
    bus = bus_core.create(config)
    try:
        section = bus.client.config.plugin("metrics")
        assert section["port"] == 9464 and section["host"] == "127.0.0.1"
        assert section["prefix"] == "bus_" and section["lag_interval"] == 15
    finally:
        bus.client.close()
    for bad in ({"prefix": "9lives"}, {"port": -1}, {"port": "http"}, {"lag_interval": -1},
                {"buckets": []}):
        config["plugins"] = {"metrics": {"enabled": True, **bad}}
        with pytest.raises(ConfigError, match="metrics"):
            bus_core.create(config)


async def test_a_port_in_use_stops_the_worker_from_starting(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bus = make_bus(config=with_metrics(memory_config(broker_name), port=port))
        bus.client.register_api(ShopApi())
        with pytest.raises(PluginError, match=rf"cannot serve on 127.0.0.1:{port}.*port to a "):
            await bus.client.serve(stop=asyncio.Event())


async def test_disabled_it_records_nothing(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(ShopApi())
    async with serving(bus):
        await bus.shop.price.call_async(item="x")
        await bus.shop.order_placed.fire_async(order_id=1)
    assert id(bus.client) not in _by_client
    assert "metrics" in bus.client.plugins.infos
    assert not bus.client.plugins.infos["metrics"].enabled


def test_counts_from_many_threads_add_up(broker_name: str) -> None:
    bus = bus_core.create(with_metrics(memory_config(broker_name)), service_name="threads")
    bus.client.register_api(ShopApi())  # declared names keep their labels
    try:
        metrics = metrics_for(bus.client)

        def fire_many() -> None:
            for _ in range(5_000):
                metrics.event_fired("shop", "order_placed", None)
                metrics.rpc_called("shop", "price", None, 0.002)

        threads = [threading.Thread(target=fire_many) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        scrape = scrape_registry(bus)
        assert scrape.value("bus_events_fired_total", event_name="order_placed") == 20_000
        assert scrape.value("bus_rpc_seconds_count", side="caller") == 20_000
        assert scrape.value("bus_rpc_seconds_bucket", le="0.0025") == 20_000
        assert scrape.value("bus_rpc_seconds_bucket", le="0.001") == 0
        assert scrape.value("bus_rpc_seconds_sum") == pytest.approx(40.0)
    finally:
        bus.client.close()
