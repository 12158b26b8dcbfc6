"""Done-when: `bus run` on Redis with the metrics plugin enabled in YAML, a client process
calling RPCs and firing events, then the metrics URL fetched and parsed as Prometheus would."""

from __future__ import annotations

import os
import signal
import textwrap
import urllib.error
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_python
from tests.core.test_cli import Running
from tests.helpers import wait_until
from tests.metrics.scrape import Scrape, fetch
from tests.redis.conftest import free_port, redis_config

pytestmark = pytest.mark.slow

SHOP_API = '''
from bus_core import Api, Event


class ShopApi(Api):
    order_placed = Event(parameters=("order_id",))
    order_shipped = Event(parameters=("order_id",))

    class Meta:
        name = "shop"

    async def price(self, item: str) -> int:
        return len(item)

    async def fail(self) -> None:
        raise ValueError("out of stock")
'''

SERVICE = '''
import bus_core
from shop_api import ShopApi

bus = bus_core.create(service_name="shop")
bus.client.register_api(ShopApi())


async def fulfil(event, order_id):
    if order_id == 3:
        raise RuntimeError("cannot fulfil order 3")
    await bus.shop.order_shipped.fire_async(order_id=order_id)
    print(f"fulfilled {order_id}", flush=True)


bus.shop.order_placed.listen(fulfil, listener_name="fulfil")
'''

CLIENT = '''
import bus_core
from bus_core import RemoteError, RpcTimeout
from bus_metrics.plugin import registry_for
from prometheus_client import generate_latest
from shop_api import ShopApi

bus = bus_core.create(service_name="web")
bus.client.register_api(ShopApi())  # the owner of the events fires them
assert bus.shop.price(item="tea") == 3
assert bus.shop.price(item="coffee") == 6
try:
    bus.shop.fail()
except RemoteError as exc:
    assert "out of stock" in str(exc)
else:
    raise AssertionError("shop.fail() did not fail")
try:
    bus.nobody.ping(bus_options={"timeout": 0.2})
except RpcTimeout:
    pass
for order_id in (1, 2, 3):
    bus.shop.order_placed.fire(order_id=order_id)
print(generate_latest(registry_for(bus.client)).decode(), end="")
bus.client.close()
'''


def write_project(folder: Path, url: str, port: int) -> Path:
    folder.mkdir()
    (folder / "shop_api.py").write_text(textwrap.dedent(SHOP_API))
    (folder / "bus.py").write_text(textwrap.dedent(SERVICE))
    (folder / "client.py").write_text(textwrap.dedent(CLIENT))
    config = redis_config(url, max_deliveries=2)
    config["plugins"] = {"metrics": {"enabled": True, "host": "127.0.0.1", "port": port,
                                     "lag_interval": 0.1}}
    config_file = folder / "bus.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return config_file


def test_bus_run_on_redis_serves_correct_metrics(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    project = tmp_path / "shop"
    config_file = write_project(project, redis_url, port)
    env = {"BUS_CONFIG": str(config_file)}
    worker = Running(["run"], cwd=project, env=env)
    try:
        line = worker.wait_for("serving metrics on")
        url = f"http://127.0.0.1:{port}/metrics"
        assert line.endswith(url)
        worker.wait_for("serving APIs [shop]")

        client = run_python("client.py", cwd=project, env={**os.environ, **env})
        assert client.returncode == 0, client.stderr
        caller = Scrape(client.stdout)
        worker.wait_for("-> dead_letter")

        def settled() -> Scrape | None:
            scrape = Scrape(fetch(url))
            done = (scrape.value("bus_dead_letters_total") == 1
                    and scrape.value("bus_events_processed_total") == 4
                    and scrape.labels("bus_listener_lag_events")
                    and scrape.value("bus_listener_lag_events") == 0)
            return scrape if done else None

        served = wait_until(settled, "the worker's metrics to settle")
    finally:
        code = worker.stop(signal.SIGTERM)
    assert code == 0, "\n".join(worker.seen)

    redis = {"service_name": "shop", "api_name": "shop", "transport": "redis"}
    listener = {**redis, "event_name": "order_placed", "listener_name": "fulfil"}
    for name, kind in [("bus_events_fired", "counter"), ("bus_events_processed", "counter"),
                       ("bus_event_handling_seconds", "histogram"),
                       ("bus_listener_errors", "counter"), ("bus_listener_lag_events", "gauge"),
                       ("bus_dead_letters", "counter"), ("bus_rpcs_processed", "counter"),
                       ("bus_rpc_seconds", "histogram"), ("bus_rpc_errors", "counter")]:
        assert served.types.get(name) == kind, name
    assert served.value("bus_events_processed_total", **listener) == 4  # 1, 2, 3 twice
    assert served.value("bus_event_handling_seconds_count", **listener) == 4
    assert served.value("bus_listener_errors_total", **listener) == 2
    assert served.value("bus_dead_letters_total", **listener) == 1
    assert served.value("bus_events_redelivered_total", **listener) == 1  # order 3's first try
    assert served.value("bus_listener_lag_events", **listener) == 0
    assert served.value("bus_events_fired_total", event_name="order_shipped", **redis) == 2
    assert served.value("bus_rpcs_processed_total", procedure_name="price", **redis) == 2
    assert served.value("bus_rpcs_processed_total", procedure_name="fail", **redis) == 1
    assert served.value("bus_rpc_errors_total", procedure_name="fail", side="worker",
                        **redis) == 1
    assert served.value("bus_rpc_errors_total", procedure_name="price") == 0
    assert served.value("bus_rpc_seconds_count", side="worker", **redis) == 3

    web = {**redis, "service_name": "web"}
    assert caller.value("bus_events_fired_total", event_name="order_placed", **web) == 3
    assert caller.value("bus_rpcs_called_total", procedure_name="price", **web) == 2
    assert caller.value("bus_rpcs_called_total", procedure_name="fail", **web) == 1
    assert caller.value("bus_rpc_errors_total", procedure_name="fail", side="caller",
                        **web) == 1
    assert caller.value("bus_rpc_timeouts_total", api_name="nobody", procedure_name="ping",
                        service_name="web", transport="redis") == 1
    assert caller.value("bus_rpc_seconds_count", side="caller", **web) == 3

    with pytest.raises((urllib.error.URLError, ConnectionError)):
        fetch(url)  # stopped with the worker
