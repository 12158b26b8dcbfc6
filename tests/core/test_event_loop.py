"""`bus.event_loop: uvloop` (and `bus run --event-loop uvloop`): the worker and the client's
background loop run on uvloop, messages flow as on asyncio's loop, and a missing uvloop or an
unknown loop is a clear error, not a fallback nobody asked for."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

import bus_core
from bus_core import Bus, BusError, ConfigError
from bus_core.testing import memory_config
from tests.apis import AuthApi
from tests.core.test_cli import Running, write_service

uvloop = pytest.importorskip("uvloop")

LOOP_REPORT = '''

@bus.client.on_start
async def report_loop():
    import asyncio
    print("event loop:", type(asyncio.get_running_loop()).__module__, flush=True)
'''


@pytest.mark.slow
@pytest.mark.parametrize(("args", "config", "expected"), [
    (["--event-loop", "uvloop"], "", "uvloop"),
    ([], "bus: {event_loop: uvloop}\n", "uvloop"),
    (["--event-loop", "asyncio"], "bus: {event_loop: uvloop}\n", "asyncio"),
    ([], "", "asyncio"),
])
def test_bus_run_serves_on_the_chosen_loop(tmp_path, args, config, expected) -> None:
    project = write_service(tmp_path / "svc")
    with (project / "bus.py").open("a") as module:
        module.write(LOOP_REPORT)
    (project / "bus.yaml").write_text(config or "{}\n")
    worker = Running(["run", "--skip", "tasks", *args], cwd=project,
                     env={"BUS_CONFIG": "bus.yaml"})
    line = worker.wait_for("event loop:")
    assert line.split("event loop:")[1].split()[0].startswith(expected)
    worker.wait_for("serving APIs [echo]")
    assert worker.stop() == 0


def test_sync_calls_and_fires_run_on_a_uvloop_background_loop(broker_name: str) -> None:
    config = memory_config(broker_name)
    config.setdefault("bus", {})["event_loop"] = "uvloop"
    with bus_core.create(config, service_name="svc") as bus:
        bus.client.register_api(AuthApi())
        heard: list[str] = []
        bus.auth.user_registered.listen(lambda event, username, email: heard.append(username),
                                        listener_name="welcome")
        bus.client.start_worker()
        assert isinstance(bus.client.loop_thread.loop, uvloop.Loop)
        assert bus.auth.check_password(username="admin", password="secret") is True
        bus.auth.user_registered.fire(username="ann", email="a@x")
        bus.client.stop_worker()  # drains: the event was handled before it returns
        assert heard == ["ann"]


def test_uvloop_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                         make_bus: Callable[..., Bus],
                                         broker_name: str) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now fails
    config = memory_config(broker_name)
    config.setdefault("bus", {})["event_loop"] = "uvloop"
    bus = make_bus(config=config)
    bus.client.register_api(AuthApi())
    with pytest.raises(BusError, match=r"uvloop is not installed: pip install 'bus-core\[fast\]'"):
        bus.auth.user_registered.fire(username="ann", email="a@x")


def test_an_unknown_loop_is_refused_by_the_config(broker_name: str) -> None:
    config = memory_config(broker_name)
    config.setdefault("bus", {})["event_loop"] = "trio"
    with pytest.raises(ConfigError, match="bus.event_loop"):
        bus_core.create(config)
