"""Traced Bus messages and a real Lightbus 1.1.2 on one redis-server.

Lightbus 1.1.2 (with aioredis 1.3.1) runs here as real processes: a worker (`lightbus run`)
with a listener and an RPC, and a publisher script. They must handle Bus's traced messages
(trace context in the call blob's top-level "headers" key and in the event entry's
empty-named field) exactly as untraced ones, and a Bus service must start a fresh trace for
what Lightbus sends.

Lightbus is found in $BUS_LIGHTBUS_VENV, /tmp/lbvenv or ~/.cache/bus-tests/lightbus-1.1.2,
and installed into the last when none has it (`pip install lightbus==1.1.2 'aioredis<2'`);
the tests are skipped, saying why, when it cannot be installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bus_core import Bus, EventMessage
from tests.apis import AuthApi
from tests.helpers import wait_until
from tests.otel.test_otel_redis import group_exists, traced_config
from tests.redis.conftest import stop_process

SCRIPTS = Path(__file__).parent / "scripts"
CACHE = Path.home() / ".cache" / "bus-tests" / "lightbus-1.1.2"


def _has_lightbus(venv: Path) -> bool:
    python = venv / "bin" / "python"
    return python.exists() and subprocess.run(
        [str(python), "-c", "import lightbus, aioredis"],
        capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def lightbus_venv() -> Path:
    for candidate in filter(None, (os.environ.get("BUS_LIGHTBUS_VENV"), "/tmp/lbvenv",
                                   str(CACHE))):
        if _has_lightbus(Path(candidate)):
            return Path(candidate)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(CACHE)], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([str(CACHE / "bin" / "pip"), "install", "-q", "lightbus==1.1.2",
                        "aioredis<2"], check=True, capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"Lightbus 1.1.2 could not be installed: {exc}")
    return CACHE


def lightbus_config(url: str) -> str:
    transport = f'{{redis: {{url: "{url}"}}}}'
    return (f"service_name: lbsvc\nprocess_name: lbproc\n"
            f"bus:\n  schema:\n    transport: {transport}\n"
            f"apis:\n  default:\n    rpc_transport: {transport}\n"
            f"    result_transport: {transport}\n    event_transport: {transport}\n")


@pytest.fixture
def lightbus_env(lightbus_venv: Path, redis_url: str, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "lightbus.yaml"
    config.write_text(lightbus_config(redis_url))
    return {**os.environ, "LB_CONFIG": str(config), "LB_OUT": str(tmp_path / "handled.jsonl"),
            "PYTHONPATH": str(SCRIPTS)}


@pytest.fixture
def lightbus_worker(lightbus_venv: Path, lightbus_env: dict[str, str], raw: redis.Redis,
                    tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `lightbus run` process, its listener's consumer group created."""
    log = (tmp_path / "lightbus.log").open("wb")
    process = subprocess.Popen(
        [str(lightbus_venv / "bin" / "lightbus"), "run", "--bus", "lightbus_app",
         "--config", lightbus_env["LB_CONFIG"]],
        cwd=SCRIPTS, env=lightbus_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None
                   or group_exists(raw, "auth.*:stream", "lbsvc-lb_listener"),
                   "the Lightbus listener's group", timeout=30)
        assert process.poll() is None, (tmp_path / "lightbus.log").read_text()
        yield process
    finally:
        stop_process(process)
        log.close()


def handled(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["LB_OUT"])
    return [json.loads(line) for line in path.read_text().splitlines()] \
        if path.exists() else []


def test_lightbus_handles_traced_events_and_calls(
        make_redis_bus: Callable[..., Bus], redis_url: str, raw: redis.Redis,
        lightbus_env: dict[str, str], lightbus_worker: subprocess.Popen[bytes],
        spans: InMemorySpanExporter, redis_server: Any) -> None:
    bus = make_redis_bus(config=traced_config(redis_url), service_name="web")
    bus.client.register_api(AuthApi())
    pushed: list[bytes] = []
    monitoring = threading.Event()

    def monitor() -> None:  # the exact bytes the Lightbus worker pops
        with redis_server.client() as client, client.monitor() as feed:
            monitoring.set()
            for command in feed.listen():
                if command["command"].startswith("RPUSH") or "rpc_queue" in command["command"]:
                    pushed.append(command["command"].encode())
                    return

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    monitoring.wait(5)
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request"):
        fired = bus.auth.user_registered.fire(username="ann", email="a@example.com")
        assert bus.auth.check_password(username="admin", password="secret") is True
    watcher.join(5)

    # The event entry as Lightbus reads it: its metadata and parameters, plus the
    # empty-named field Lightbus skips, holding the trace context.
    ((_entry_id, fields),) = [e for e in raw.xrange("auth.*:stream")
                             if e[1].get(b"id") == fired.id.encode()]
    assert set(fields) == {b"id", b"api_name", b"event_name", b"version", b":username",
                           b":email", b""}
    headers = json.loads(fields[b""])
    assert headers["traceparent"].startswith("00-")
    # The call blob carried its trace context beside metadata and kwargs.
    assert pushed and b'"headers"' in pushed[0] and b'"traceparent"' in pushed[0], pushed

    wait_until(lambda: handled(lightbus_env), "the Lightbus listener to handle the event")
    assert handled(lightbus_env) == [{"id": fired.id, "username": "ann",
                                      "email": "a@example.com"}]
    # Still alive and serving: a second traced event and call are handled too.
    second = bus.auth.user_registered.fire(username="bob", email="b@example.com")
    assert bus.auth.check_password(username="admin", password="wrong") is False
    wait_until(lambda: len(handled(lightbus_env)) == 2, "the second event")
    assert handled(lightbus_env)[1]["id"] == second.id
    assert lightbus_worker.poll() is None
    # Nothing left pending in Lightbus's group: every traced entry was acknowledged.
    time.sleep(0.2)
    assert raw.xpending("auth.*:stream", "lbsvc-lb_listener")["pending"] == 0


def test_bus_starts_a_fresh_trace_for_lightbus_events(
        make_redis_bus: Callable[..., Bus], redis_url: str, raw: redis.Redis,
        lightbus_venv: Path, lightbus_env: dict[str, str], spans: InMemorySpanExporter
        ) -> None:
    bus = make_redis_bus(config=traced_config(redis_url), service_name="web")
    got: list[str] = []

    def on_registered(event: EventMessage, username: str, email: str) -> None:
        got.append(username)

    bus.client.listen("auth.user_registered", on_registered, listener_name="bus_listener")
    bus.client.start_worker()
    try:
        wait_until(lambda: group_exists(raw, "auth.*:stream", "web-bus_listener"), "group")
        subprocess.run([str(lightbus_venv / "bin" / "python"), str(SCRIPTS / "lightbus_app.py"),
                        "fire", "from_lightbus"], env=lightbus_env, check=True, timeout=60,
                       capture_output=True)
        wait_until(lambda: got, "the Lightbus event")
    finally:
        bus.client.stop_worker()
    assert got == ["from_lightbus"]
    wait_until(lambda: [s for s in spans.get_finished_spans()
                        if s.name == "process auth.*:stream"], "the process span")
    (process,) = [s for s in spans.get_finished_spans() if s.name == "process auth.*:stream"]
    assert process.parent is None  # no trace context from Lightbus: a fresh trace
    assert process.attributes["messaging.consumer.group.name"] == "web-bus_listener"
