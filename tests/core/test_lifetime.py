"""A client's life across close() and fork(): calls in flight at close fail instead of
hanging; a forked child (gunicorn --preload, multiprocessing) starts afresh."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import pytest

from bus_core import Bus, BusError
from tests.apis import AuthApi
from tests.conftest import memory_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork")


def test_a_sync_call_in_flight_when_the_client_closes_fails_at_once(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    quick_drain = memory_config(broker_name)
    quick_drain["bus"]["drain_timeout"] = 0.1  # the server need not finish the slow call
    server, caller = make_bus(config=quick_drain), make_bus()
    server.client.register_api(AuthApi())
    server.client.start_worker()
    outcome: list[BaseException | str] = []
    started = threading.Event()

    def call() -> None:
        started.set()
        try:
            outcome.append(caller.auth.slow_echo(value="x", delay=30))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    started.wait(5)
    server.client.run_sync(_wait_for_inflight(server))  # the call reached the procedure
    caller.close()
    thread.join(10)
    assert not thread.is_alive(), "the call still waits after close()"
    (error,) = outcome
    assert isinstance(error, BusError)
    assert "closed while this call was in flight" in str(error)
    with pytest.raises(BusError, match="this bus client is closed"):
        caller.auth.check_password(username="a", password="b")


async def _wait_for_inflight(bus: Bus) -> None:
    import asyncio

    worker = bus.client._background_worker
    assert worker is not None
    for _ in range(500):
        if worker._inflight:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the call never reached the worker")


def run_in_child(body: Callable[[], str]) -> str:
    """Fork; run `body` in the child with a deadline; return what it reported."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanup
        code = 0
        try:
            os.write(write, body().encode())
        except BaseException as exc:
            os.write(write, f"child failed: {type(exc).__name__}: {exc}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    return report


def test_a_forked_child_starts_afresh(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    bus.client.start_worker()
    assert bus.auth.check_password(username="admin", password="secret") is True  # loop up
    parent_name = bus.client.process_name

    def child() -> str:
        # The parent's loop thread and worker did not come along: a new loop, a new worker.
        alarm = threading.Timer(20, lambda: os._exit(3))  # a hang fails the test
        alarm.start()
        bus.client.start_worker()
        answer = bus.auth.check_password(username="admin", password="secret")
        bus.close()
        alarm.cancel()
        return f"{answer} {bus.client.process_name} {os.getpid()}"

    answer, child_name, child_pid = run_in_child(child).split()
    assert answer == "True"
    host = parent_name.rsplit("-", 1)[0]
    assert (parent_name, child_name) == (f"{host}-{os.getpid()}", f"{host}-{child_pid}")
    assert bus.auth.check_password(username="admin", password="secret") is True  # parent fine


def test_close_stops_the_loop_thread_even_when_stopping_the_worker_fails(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    bus.client.register_api(AuthApi())
    worker = bus.client.start_worker()
    thread = bus.client.loop_thread.thread

    async def stop_that_fails() -> None:
        raise RuntimeError("stopping failed")

    worker.stop = stop_that_fails  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="stopping failed"):
        bus.close()
    thread.join(5)
    assert not thread.is_alive()
    with pytest.raises(BusError, match="closed"):
        bus.auth.check_password(username="a", password="b")
