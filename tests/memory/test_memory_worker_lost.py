"""The memory transport reports calls a worker took and abandoned (it stopped before they
finished, past bus.drain_timeout) as lost: RpcWorkerLost at once, or, for an idempotent RPC,
a re-queue that another worker on the same broker answers. Nothing runs twice otherwise."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bus_core import Api, RpcWorkerLost, rpc
from tests.conftest import memory_config
from tests.helpers import eventually


class SlowApi(Api):
    """`hang=True`: every call blocks until cancelled (the worker that will be stopped)."""

    class Meta:
        name = "slow"

    def __init__(self, runs: list[tuple[str, int]], hang: bool) -> None:
        self.runs = runs
        self.hang = hang

    async def _run(self, name: str, n: int) -> int:
        self.runs.append((name, n))
        if self.hang:
            await asyncio.Event().wait()
        return n

    async def charge(self, n: int) -> int:
        return await self._run("charge", n)

    @rpc(idempotent=True)
    async def lookup(self, n: int) -> int:
        return await self._run("lookup", n)

    async def reserve(self, n: int) -> int:
        return await self._run("reserve", n)


def document(broker: str, **api_default: Any) -> dict[str, Any]:
    config = memory_config(broker, rpc_timeout=10, **api_default)
    config["bus"]["drain_timeout"] = 0.05
    return config


async def test_a_stopped_workers_abandoned_calls_fail_fast_or_move(make_bus, broker_name):
    runs: list[tuple[str, int]] = []
    first = make_bus(config=document(broker_name), process_name="first")
    first.client.register_api(SlowApi(runs, hang=True))
    caller = make_bus(config=document(broker_name, idempotent_rpcs=["reserve"]),
                      process_name="caller")
    worker = first.client.worker(events=False, tasks=False)
    await worker.start()
    calls = {(name, n): asyncio.ensure_future(getattr(caller.slow, name).call_async(n=n))
             for name in ("charge", "lookup", "reserve") for n in range(5)}
    await eventually(lambda: len(runs) == 15)
    second = make_bus(config=document(broker_name), process_name="second")
    second.client.register_api(SlowApi(runs, hang=False))
    other = second.client.worker(events=False, tasks=False)
    await other.start()
    try:
        stopped = time.monotonic()
        await worker.stop()
        outcomes = dict(zip(calls, await asyncio.wait_for(
            asyncio.gather(*calls.values(), return_exceptions=True), 5), strict=True))
        assert time.monotonic() - stopped < 2
        for (name, n), outcome in outcomes.items():
            if name == "charge":
                assert isinstance(outcome, RpcWorkerLost), outcome
                assert "first" in outcome.worker and "may have run" in str(outcome)
            else:
                assert outcome == n
        assert sorted(runs).count(("charge", 0)) == 1
        assert sorted(runs) == sorted([(name, n) for name in ("charge", "lookup", "reserve")
                                       for n in range(5)]
                                      + [(name, n) for name in ("lookup", "reserve")
                                         for n in range(5)])
    finally:
        await other.stop()


async def test_calls_a_worker_answers_are_not_reported_lost(make_bus, broker_name):
    runs: list[tuple[str, int]] = []
    server = make_bus(config=document(broker_name))
    server.client.register_api(SlowApi(runs, hang=False))
    worker = server.client.worker(events=False, tasks=False)
    await worker.start()
    try:
        assert await asyncio.gather(*(server.slow.charge.call_async(n=n)
                                      for n in range(10))) == list(range(10))
    finally:
        await worker.stop()
    from bus_memory import get_broker

    broker = get_broker(broker_name)
    assert broker.claims == {} and broker.lost_calls == {}


async def test_a_lost_idempotent_call_times_out_when_no_worker_takes_it_again(
        make_bus, broker_name):
    runs: list[tuple[str, int]] = []
    server = make_bus(config=document(broker_name))
    server.client.register_api(SlowApi(runs, hang=True))
    worker = server.client.worker(events=False, tasks=False)
    await worker.start()
    call = asyncio.ensure_future(server.slow.lookup.call_async(n=1, bus_options={
        "timeout": 0.5}))
    await eventually(lambda: runs == [("lookup", 1)])
    await worker.stop()
    with pytest.raises(TimeoutError) as caught:
        await call
    assert not isinstance(caught.value, RpcWorkerLost)  # re-queued, then ran out of time
