"""A worker process SIGKILLed in the middle of 50 calls: its non-idempotent calls fail with
RpcWorkerLost within 2 s of the kill (not at their 30 s timeout) and are never run twice;
its idempotent calls (declared by the decorator on the worker, or by the caller's config)
are re-queued and answered by a second worker.

Run as a script, this module is the worker process:
    python test_redis_worker_death.py <redis url> <process name> <seconds each call sleeps>
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

import bus_core
from bus_core import Api, RpcWorkerLost, rpc

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30  # every call's rpc_timeout: RpcWorkerLost must come long before it
LOST_WITHIN = 2.0  # seconds from the kill to each non-idempotent caller's RpcWorkerLost
CHARGES, LOOKUPS, RESERVES = 20, 15, 15  # 50 calls in flight at once


class DeathApi(Api):
    """Each RPC counts its runs in Redis (`runs:<rpc>:<n>`) before sleeping."""

    class Meta:
        name = "death"

    async def charge(self, n: int) -> int:
        """Not idempotent: must never run twice."""
        return await _run("charge", n)

    @rpc(idempotent=True)
    async def lookup(self, n: int) -> int:
        """Idempotent by the decorator: the worker tells its callers."""
        return await _run("lookup", n)

    async def reserve(self, n: int) -> int:
        """Idempotent only by the caller's config (apis.death.idempotent_rpcs)."""
        return await _run("reserve", n)


_state: dict[str, Any] = {}


async def _run(name: str, n: int) -> int:
    counted = _state["incr"](f"runs:{name}:{n}")
    if inspect.isawaitable(counted):
        await counted
    await asyncio.sleep(_state["sleep"])
    return n


def config(url: str, **api_default: Any) -> dict[str, Any]:
    transport = {"redis": {"url": url}}
    return {
        "bus": {"schema": {"transport": transport}, "drain_timeout": 1},
        "apis": {"default": {"rpc_transport": transport, "result_transport": transport,
                             "event_transport": transport, "rpc_timeout": TIMEOUT,
                             **api_default}},
    }


def serve(url: str, process_name: str, sleep: float) -> None:
    """The worker process: serve DeathApi until killed, saying `ready` once consuming."""
    import redis.asyncio as aioredis

    async def main() -> None:
        _state["incr"] = aioredis.Redis.from_url(url).incr
        _state["sleep"] = sleep
        bus = bus_core.create(config(url), service_name="death", process_name=process_name)
        bus.client.register_api(DeathApi())
        worker = bus.client.worker()
        await worker.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_worker(url: str, process_name: str, sleep: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, __file__, url, process_name, str(sleep)], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        raise AssertionError(f"worker {process_name} did not start: {line}"
                             f"{process.stdout.read()}")
    return process


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)


def wait_until(condition: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def runs(raw: redis.Redis, name: str, count: int) -> list[int]:
    values = raw.mget([f"runs:{name}:{n}" for n in range(count)])
    return [int(v or 0) for v in values]


async def test_a_killed_workers_calls_fail_fast_or_move_to_another_worker(redis_url, raw):
    first = start_worker(redis_url, "death-first", sleep=TIMEOUT * 2)
    second: subprocess.Popen[str] | None = None
    caller = bus_core.create(config(redis_url, idempotent_rpcs=["reserve"]),
                             service_name="shop", process_name="death-caller")
    try:
        outcomes: dict[tuple[str, int], tuple[str, Any, float]] = {}

        async def call(name: str, n: int) -> None:
            try:
                value = await getattr(caller.death, name).call_async(n=n)
                outcomes[(name, n)] = ("ok", value, time.monotonic())
            except Exception as exc:
                outcomes[(name, n)] = (type(exc).__name__, exc, time.monotonic())

        tasks = [asyncio.ensure_future(call(name, n))
                 for name, count in (("charge", CHARGES), ("lookup", LOOKUPS),
                                     ("reserve", RESERVES))
                 for n in range(count)]
        # All 50 are running in the first worker (each sleeps far longer than the test).
        await asyncio.to_thread(wait_until, lambda: sum(
            runs(raw, "charge", CHARGES) + runs(raw, "lookup", LOOKUPS)
            + runs(raw, "reserve", RESERVES)) == CHARGES + LOOKUPS + RESERVES,
            "every call runs in the first worker")
        assert len(raw.keys("bus:worker:death-first:*")) == 1
        assert len(raw.keys("bus:claim:*")) == CHARGES + LOOKUPS + RESERVES
        second = await asyncio.to_thread(start_worker, redis_url, "death-second", 0.05)

        first.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)

        for n in range(CHARGES):
            kind, error, when = outcomes[("charge", n)]
            assert kind == "RpcWorkerLost", (n, kind, error)
            assert isinstance(error, RpcWorkerLost) and isinstance(error, bus_core.RpcTimeout)
            assert when - killed <= LOST_WITHIN, f"charge {n}: {when - killed:.2f}s"
            assert "death-first" in error.worker and "may have run" in str(error)
        for name, count in (("lookup", LOOKUPS), ("reserve", RESERVES)):
            for n in range(count):
                assert outcomes[(name, n)][:2] == ("ok", n), (name, n, outcomes[(name, n)])
        # Nothing non-idempotent ran twice; each idempotent call ran once in each worker.
        assert runs(raw, "charge", CHARGES) == [1] * CHARGES
        assert runs(raw, "lookup", LOOKUPS) == [2] * LOOKUPS
        assert runs(raw, "reserve", RESERVES) == [2] * RESERVES
    finally:
        await caller.client.close_async()
        caller.client.close()
        stop(first)
        if second is not None:
            stop(second)


async def test_calls_abandoned_by_a_stopping_worker_are_reported_lost(redis_url, raw):
    """A worker stopped (SIGTERM-style) whose call outlives bus.drain_timeout abandons it
    and deletes its liveness key: the caller learns within a check interval or two."""
    _state.update(incr=raw.incr, sleep=20)
    server = bus_core.create({**config(redis_url), "bus": {
        **config(redis_url)["bus"], "drain_timeout": 0.2}}, service_name="death",
        process_name="death-stopping")
    server.client.register_api(DeathApi())
    caller = bus_core.create(config(redis_url), service_name="shop",
                             process_name="death-caller")
    try:
        server.client.start_worker()
        call = asyncio.ensure_future(caller.death.charge.call_async(n=7))
        await asyncio.to_thread(wait_until, lambda: raw.get("runs:charge:7") == b"1",
                                "the call runs")
        await asyncio.to_thread(server.client.stop_worker)
        stopped = time.monotonic()
        with pytest.raises(RpcWorkerLost):
            await asyncio.wait_for(call, 10)
        assert time.monotonic() - stopped < LOST_WITHIN
        assert raw.keys("bus:worker:*") == []
    finally:
        await caller.client.close_async()
        caller.client.close()
        server.client.close()


async def test_fast_calls_leave_no_claim_records_and_lightbus_callers_get_none(
        redis_url, raw):
    """A result ends its claim record; a Lightbus-style call (per-call return path) gets
    no record at all, and nothing but its one result blob lands on its key."""
    _state.update(incr=raw.incr, sleep=0)
    server = bus_core.create(config(redis_url), service_name="death", process_name="w1")
    server.client.register_api(DeathApi())
    caller = bus_core.create(config(redis_url), service_name="shop", process_name="c1")
    try:
        server.client.start_worker()
        assert await asyncio.gather(*(caller.death.charge.call_async(n=n)
                                      for n in range(20))) == list(range(20))
        assert raw.keys("bus:claim:*") == []
        assert len(raw.keys("bus:worker:w1:*")) == 1  # the worker took shared-list calls
        call_id = "42838104-eae5-11f1-8ca3-02fc00000001"
        key = f"death.lookup:result:{call_id}"
        blob = {"metadata": {"id": call_id, "api_name": "death", "procedure_name": "lookup",
                             "return_path": f"redis+key://{key}"}, "kwargs": {"n": 5}}
        with raw.pipeline(transaction=False) as pipe:
            pipe.rpush("death:rpc_queue", json.dumps(blob))
            pipe.set(f"rpc_expiry_key:{call_id}", 1)
            pipe.expire(f"rpc_expiry_key:{call_id}", 5)
            pipe.execute()
        popped = await asyncio.to_thread(raw.blpop, [key], 10)
        assert popped is not None
        reply = json.loads(popped[1])
        assert reply["kwargs"] == {"result": 5}
        assert set(reply["metadata"]) == {"id", "rpc_message_id", "error"}
        assert raw.llen(key) == 0 and raw.keys("bus:claim:*") == []
    finally:
        await caller.client.close_async()
        caller.client.close()
        server.client.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], float(sys.argv[3]))
