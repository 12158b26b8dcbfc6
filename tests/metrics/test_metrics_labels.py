"""Metric labels never come from the wire: names nobody declared share one `unknown`
label, so a peer sending random names cannot grow the series without bound."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from bus_metrics.metrics import CALLER_NAME_ALLOWANCE

from bus_core import Bus, RpcTimeout, RpcWorkerLost
from bus_core.messages import RpcMessage, rpc_to_blob
from tests.apis import AuthApi
from tests.conftest import memory_config
from tests.helpers import eventually, serving
from tests.metrics.test_metrics import scrape_registry, with_metrics


async def rpc_transport(bus: Bus) -> Any:
    return await (await bus.client.state()).transport("rpc", "auth")


async def test_metric_series_stay_bounded_whatever_names_callers_send(
        broker_name: str, make_bus: Callable[..., Bus]) -> None:
    config = with_metrics(memory_config(broker_name, rpc_timeout=2))
    worker_bus = make_bus(config=config, service_name="worker")
    worker_bus.client.register_api(AuthApi())
    transport = await rpc_transport(worker_bus)
    results = await (await worker_bus.client.state()).transport("result", "auth")
    names = [f"rpc_{uuid.uuid4().hex}" for _ in range(300)]
    async with serving(worker_bus):
        for name in names:  # on auth's queue, as a peer may write them
            for api_name, procedure_name in (("auth", name), (f"api_{name}", "x")):
                call = RpcMessage(api_name=api_name, procedure_name=procedure_name, kwargs={})
                call.return_path = results.get_return_path(call)
                transport.broker.push_call("auth", transport.serializer.dumps(
                    rpc_to_blob(call)), time.monotonic() + 5)
        await worker_bus.auth.check_password.call_async(username="a", password="b")
        await eventually(lambda: scrape_registry(worker_bus).value(
            "bus_rpcs_processed_total") == 601)
    scrape = scrape_registry(worker_bus)
    series = scrape.labels("bus_rpcs_processed_total")
    assert {(labels["api_name"], labels["procedure_name"]) for labels in series} == {
        ("auth", "check_password"), ("auth", "unknown"), ("unknown", "unknown")}
    assert scrape.value("bus_rpcs_processed_total", api_name="unknown") == 300


async def test_caller_labels_stay_bounded_for_apis_it_does_not_know(
        broker_name: str, make_bus: Callable[..., Bus]) -> None:
    caller = make_bus(config=with_metrics(memory_config(broker_name, rpc_timeout=0.01)))
    for n in range(CALLER_NAME_ALLOWANCE + 50):
        with pytest.raises(RpcTimeout):
            await caller.client.call_rpc_async("remote", f"rpc_{n}", {})
    series = scrape_registry(caller).labels("bus_rpcs_called_total")
    assert len(series) == CALLER_NAME_ALLOWANCE + 1
    assert {"api_name": "unknown", "procedure_name": "unknown"}.items() <= {
        k: v for labels in series for k, v in labels.items()
        if labels["api_name"] == "unknown"}.items()


async def test_calls_whose_worker_stopped_are_counted_as_workers_lost(
        broker_name: str, make_bus: Callable[..., Bus]) -> None:
    from tests.memory.test_memory_worker_lost import SlowApi, document

    runs: list[tuple[str, int]] = []
    worker_bus = make_bus(config=document(broker_name), process_name="first")
    worker_bus.client.register_api(SlowApi(runs, hang=True))
    caller = make_bus(config=with_metrics(document(broker_name)), process_name="caller")
    worker = worker_bus.client.worker(events=False, tasks=False)
    await worker.start()
    calls = [asyncio.ensure_future(caller.slow.charge.call_async(n=n)) for n in range(3)]
    await eventually(lambda: len(runs) == 3)
    await worker.stop()  # abandons the three calls it holds
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert all(isinstance(outcome, RpcWorkerLost) for outcome in outcomes)
    scrape = scrape_registry(caller)
    assert scrape.value("bus_rpc_workers_lost_total", procedure_name="charge") == 3
    assert scrape.value("bus_rpc_timeouts_total", procedure_name="charge") == 3
