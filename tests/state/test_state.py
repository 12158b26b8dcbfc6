"""The state plugin on the memory transport: what a worker announces and when, how
`read_workers` turns the history into alive / gone / stopped, and the table."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from bus_state import StateApi, WorkerStatus, read_workers
from bus_state.commands import render_table

import bus_core
from bus_core import Api, Bus, ConfigError, Event, EventMessage, PluginError, hookimpl
from tests.apis import AuthApi
from tests.conftest import memory_config
from tests.helpers import EventRecorder, eventually, serving
from tests.metrics.test_metrics import with_metrics
from tests.state.conftest import with_state

STATE_EVENTS = ["internal.state.worker_started", "internal.state.worker_ping",
                "internal.state.worker_stopped"]


def state_config(broker: str, **options: Any) -> dict[str, Any]:
    return with_state(memory_config(broker), **options)


async def recorder_on(make_bus: Callable[..., Bus]) -> EventRecorder:
    """A listener (on a bus without the plugin) of every internal.state event."""
    recorder = EventRecorder()
    listener_bus = make_bus(service_name="watcher")
    listener_bus.client.listen(STATE_EVENTS, recorder, listener_name="watch_state")
    worker = listener_bus.client.worker()
    await worker.start()
    recorder.worker = worker  # type: ignore[attr-defined]
    return recorder


async def test_a_worker_announces_started_pings_and_stopped(make_bus, broker_name) -> None:
    recorder = await recorder_on(make_bus)
    bus = make_bus(config=state_config(broker_name, ping_interval=0.05),
                   service_name="auth_service", process_name="auth-1")
    bus.client.register_api(AuthApi())
    bus.auth.user_registered.listen(lambda event, **kw: None, listener_name="welcome")
    async with serving(bus):
        await recorder.wait_for(3)  # started and two pings
    await eventually(lambda: recorder.seen[-1].event_name == "worker_stopped")
    seen = recorder.seen
    await recorder.worker.stop()  # type: ignore[attr-defined]
    names = [e.event_name for e in seen]
    assert names[:3] == ["worker_started", "worker_ping", "worker_ping"]
    assert names[-1] == "worker_stopped"
    started = seen[0].kwargs
    assert started["process_name"] == "auth-1" and started["service_name"] == "auth_service"
    assert started["api_names"] == ["auth"]  # internal.state is not listed
    assert started["listening_for"] == ["auth.user_registered"]
    assert started["hostname"] == socket.gethostname() and started["pid"] == os.getpid()
    assert started["ping_interval"] == 0.05 and started["ping_enabled"] is True
    assert started["metrics_enabled"] is False
    assert abs(started["timestamp"] - time.time()) < 5
    assert started["max_memory_use"] > 1_000_000  # bytes, not KiB
    assert started["memory_use"] is None or started["memory_use"] > 1_000_000
    assert started["bus_version"] == bus_core.__version__
    assert seen[2].kwargs["uptime"] >= seen[1].kwargs["uptime"] >= 0.05
    stopped = seen[-1].kwargs
    assert set(stopped) == {"process_name", "service_name", "timestamp", "hostname", "pid",
                            "uptime", "bus_version"}
    assert stopped["process_name"] == "auth-1"


async def test_read_workers_sees_alive_then_stopped(make_bus, broker_name) -> None:
    bus = make_bus(config=state_config(broker_name), service_name="billing",
                   process_name="billing-1")
    bus.client.register_api(AuthApi())
    async with serving(bus):
        (worker,) = await read_workers(bus.client, window=10)
        assert worker.status == "alive" and worker.alive
        assert (worker.service_name, worker.process_name) == ("billing", "billing-1")
        assert worker.api_names == ["auth"] and worker.pid == os.getpid()
        assert worker.last_seen_age is not None and worker.last_seen_age < 5
    (worker,) = await read_workers(bus.client, window=10)
    assert worker.status == "stopped" and worker.stopped_at is not None
    await bus.client.close_async()


async def test_a_worker_whose_pings_stopped_is_gone_after_interval_and_grace(
        make_bus, broker_name) -> None:
    bus = make_bus(config=state_config(broker_name, ping_interval=10),
                   process_name="p1")
    worker = bus.client.worker()
    await worker.start()  # started, never stopped: as after a SIGKILL
    try:
        later = time.time()
        (alive,) = await read_workers(bus.client, window=60, grace=2, now=later + 11.5)
        (gone,) = await read_workers(bus.client, window=60, grace=2, now=later + 12.5)
        (default,) = await read_workers(bus.client, window=60, now=later + 15.5)
    finally:
        await worker.stop()
    assert alive.status == "alive" and gone.status == "gone" and not gone.alive
    assert default.status == "gone"  # default grace: half the worker's interval
    assert await read_workers(bus.client, window=5, now=later + 100) == []  # out of window
    await bus.client.close_async()


async def test_with_pings_disabled_only_started_and_stopped_are_fired(
        make_bus, broker_name) -> None:
    recorder = await recorder_on(make_bus)
    bus = make_bus(config=state_config(broker_name, ping_interval=0.01, ping_enabled=False))
    async with serving(bus):
        await recorder.wait_for(1)
        await asyncio.sleep(0.05)  # five ping intervals: none may come
        (worker,) = await read_workers(bus.client, window=10, now=time.time() + 5)
        assert worker.status == "alive"  # it never pings: alive until it stops
    seen = await recorder.wait_for(2)
    await recorder.worker.stop()  # type: ignore[attr-defined]
    assert [e.event_name for e in seen] == ["worker_started", "worker_stopped"]


async def test_nothing_is_announced_when_the_plugin_is_not_enabled(make_bus, broker_name) -> None:
    bus = make_bus()
    async with serving(bus):
        assert "internal.state" not in bus.client.apis
        assert await read_workers(bus.client, window=10) == []
    await bus.client.close_async()


async def test_a_worker_whose_start_is_refused_is_never_announced(
        make_bus, broker_name) -> None:
    """bus-metrics refuses the start when its port is taken; bus-state must not have told
    the bus that the worker started (its hook runs last)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = with_metrics(state_config(broker_name), port=port)
        bus = make_bus(config=config, service_name="auth_service")
        bus.client.register_api(AuthApi())
        with pytest.raises(PluginError, match="cannot serve"):
            await bus.client.serve(stop=asyncio.Event())
    assert await read_workers(bus.client, window=10) == []  # stopped ones included


async def test_a_refused_announcement_is_logged_and_the_worker_serves_on(
        make_bus, broker_name, caplog: pytest.LogCaptureFixture) -> None:
    class Refuse:
        @hookimpl
        def bus_before_event_fire(self, client: Any, message: EventMessage) -> None:
            if message.api_name == "internal.state":
                raise RuntimeError("no room")

    bus = make_bus(config=state_config(broker_name), plugins=[Refuse()])
    bus.client.register_api(AuthApi())
    with caplog.at_level(logging.WARNING, logger="bus.state"):
        async with serving(bus):
            assert await bus.auth.check_password.call_async(username="admin",
                                                            password="secret") is True
    messages = [r.getMessage() for r in caplog.records]
    assert any("worker_started failed: RuntimeError: no room" in m for m in messages)
    assert any("worker_stopped failed" in m for m in messages)
    await bus.client.close_async()


async def test_lightbus_shaped_announcements_are_read(make_bus, broker_name) -> None:
    """A Lightbus 1.x worker sends only its own parameters (bare names, no types)."""

    class LightbusStateApi(Api):
        worker_started = Event(parameters=(
            "process_name", "service_name", "metrics_enabled", "api_names", "listening_for",
            "timestamp", "ping_enabled", "ping_interval", "hostname", "pid",
            "max_memory_use"))
        worker_stopped = Event(parameters=("process_name", "service_name"))

        class Meta:
            name = "internal.state"

    foreign = make_bus(service_name="legacy")
    foreign.client.register_api(LightbusStateApi())
    await foreign.internal.state.worker_started.fire_async(
        process_name="lb-1", service_name="legacy", metrics_enabled=False,
        api_names=["my_company.auth"], listening_for=["my_company.auth.user_registered"],
        timestamp=time.time(), ping_enabled=True, ping_interval=60, hostname="old-box",
        pid=4242, max_memory_use=123456)
    reader = make_bus(service_name="ops")
    (worker,) = await read_workers(reader.client, window=10)
    assert worker.status == "alive" and worker.hostname == "old-box" and worker.pid == 4242
    assert worker.api_names == ["my_company.auth"] and worker.bus_version is None
    await foreign.internal.state.worker_stopped.fire_async(process_name="lb-1",
                                                           service_name="legacy")
    (worker,) = await read_workers(reader.client, window=10)
    assert worker.status == "stopped"
    await foreign.client.close_async()
    await reader.client.close_async()


async def test_a_second_worker_on_the_same_client_reuses_the_registered_api(
        make_bus, broker_name) -> None:
    bus = make_bus(config=state_config(broker_name))
    async with serving(bus):
        api = bus.client.apis["internal.state"]
        assert isinstance(api, StateApi)
    async with serving(bus):
        assert bus.client.apis["internal.state"] is api
    await bus.client.close_async()


def test_the_config_section_is_validated(broker_name) -> None:
    for bad in ({"ping_interval": 0}, {"ping_interval": "often"}, {"grace": -1},
                {"ping_every": 5}):
        with pytest.raises(ConfigError, match="plugins.state"):
            bus_core.create(state_config(broker_name, **bad))
    bus = bus_core.create(memory_config(broker_name))  # absent section: the defaults
    assert bus.client.config.plugin("state")["ping_interval"] == 60
    bus.close()


def test_the_table_has_one_row_per_process() -> None:
    workers = [
        WorkerStatus("auth", "auth-1", hostname="h1", pid=11, api_names=["auth", "auth.x"],
                     last_seen_age=0.25),
        WorkerStatus("auth", "auth-2", status="gone", hostname="h2", pid=12,
                     last_seen_age=125),
    ]
    lines = render_table(workers).splitlines()
    assert lines[0].split() == ["SERVICE", "PROCESS", "HOST", "PID", "APIS", "LAST", "PING",
                                "STATUS"]
    assert lines[1].split() == ["auth", "auth-1", "h1", "11", "auth,auth.x", "0.2s", "ago",
                                "alive"]
    assert lines[2].split() == ["auth", "auth-2", "h2", "12", "-", "2m05s", "ago", "gone"]


async def test_announcements_pass_the_schema_plugins_validation(
        make_bus, broker_name, caplog: pytest.LogCaptureFixture) -> None:
    config = state_config(broker_name)
    config["plugins"]["schema"] = {"enabled": True}
    bus = make_bus(config=config)
    with caplog.at_level(logging.WARNING, logger="bus.state"):
        async with serving(bus):
            pass
    assert not caplog.records
    assert [w.status for w in await read_workers(bus.client, window=10)] == ["stopped"]
    await bus.client.close_async()


def test_bus_state_carries_on_past_an_unrelated_broken_bus_module(
        tmp_path, monkeypatch, capsys) -> None:
    from bus_core.cli import main

    (tmp_path / "bus.py").write_text("raise RuntimeError('half-written service')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BUS_CONFIG", raising=False)
    monkeypatch.delenv("BUS_MODULE", raising=False)
    assert main(["state", "--json"]) == 0  # like bus call and bus inspect
    captured = capsys.readouterr()
    assert json.loads(captured.out) == []
    assert "half-written service" in captured.err and "carrying on" in captured.err
    assert main(["state", "--json", "-b", "bus"]) == 1  # named: it must import
