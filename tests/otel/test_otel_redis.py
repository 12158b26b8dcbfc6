"""Traces across real processes on a real redis-server: a Bus worker process (its spans
recorded by the SDK's in-memory exporter and written out when it stops) and this test's
process (its own in-memory exporter). The trace of a fire here continues in the handling
there, with the right parents; failures, redelivery, dead letters, remote errors and
timeouts show on the spans."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bus_core import Bus, RemoteError, RpcTimeout
from tests.apis import AuthApi
from tests.helpers import wait_until
from tests.redis.conftest import redis_config, stop_process

SCRIPT = Path(__file__).parent / "scripts" / "traced_worker.py"


def traced_config(url: str) -> dict[str, Any]:
    config = redis_config(url, max_deliveries=2, redelivery_delay=0)
    config["plugins"] = {"otel": {"enabled": True}}
    return config


def group_exists(raw: redis.Redis, stream: str, group: str) -> bool:
    try:
        return any(g["name"] == group.encode() for g in raw.xinfo_groups(stream))
    except redis.ResponseError:
        return False


@pytest.fixture
def traced_worker(redis_url: str, raw: redis.Redis, tmp_path: Path
                  ) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Start the worker process; the fixture's value stops it and returns its spans."""
    out = tmp_path / "spans.json"
    spec = {"config": traced_config(redis_url), "out": str(out)}
    process = subprocess.Popen([sys.executable, str(SCRIPT), json.dumps(spec)],
                               stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"READY"
        wait_until(lambda: group_exists(raw, "auth.*:stream", "worker-welcome"),
                   "the worker's consumer group")

        def stop() -> list[dict[str, Any]]:
            process.terminate()
            assert process.wait(15) == 0
            return json.loads(out.read_text())

        yield stop
    finally:
        stop_process(process)


def test_one_trace_across_processes(make_redis_bus: Callable[..., Bus], redis_url: str,
                                    raw: redis.Redis, spans: InMemorySpanExporter,
                                    traced_worker: Callable[[], list[dict[str, Any]]]) -> None:
    bus = make_redis_bus(config=traced_config(redis_url), service_name="web")
    bus.client.register_api(AuthApi())
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        bus.auth.user_registered.fire(username="ann", email="a@example.com")
        assert bus.auth.check_password(username="admin", password="secret") is True
        with pytest.raises(RemoteError):
            bus.auth.fail(message="boom")
    bus.auth.user_registered.fire(username="fail", email="f@example.com")
    with pytest.raises(RpcTimeout):
        bus.client.call_rpc("nobody.serves", "this", {}, {"timeout": 0.2})
    wait_until(lambda: raw.xlen("auth.*:stream:dead") if raw.exists("auth.*:stream:dead")
               else 0, "the failing event to be dead-lettered", timeout=10)
    theirs = traced_worker()
    ours = spans.get_finished_spans()
    trace_id = f"{request.get_span_context().trace_id:032x}"

    # fire here -> process there (child of the publish span) -> nested call -> execution
    publish = next(s for s in ours if s.name == "publish auth.*:stream"
                   and s.attributes["messaging.message.id"])
    assert f"{publish.context.trace_id:032x}" == trace_id
    processed = [s for s in theirs if s["name"] == "process auth.*:stream"
                 and s["trace_id"] == trace_id]
    assert len(processed) == 1, theirs
    (process,) = processed
    assert process["kind"] == "CONSUMER"
    assert process["parent_span_id"] == f"{publish.context.span_id:016x}"
    assert process["attributes"]["messaging.consumer.group.name"] == "worker-welcome"
    assert process["attributes"]["messaging.destination.name"] == "auth.*:stream"
    assert process["attributes"]["messaging.system"] == "redis"
    nested = [s for s in theirs if s["name"] == "auth/check_password" and s["kind"] == "CLIENT"
              and s["parent_span_id"] == process["span_id"]]
    assert len(nested) == 1
    assert any(s["kind"] == "SERVER" and s["parent_span_id"] == nested[0]["span_id"]
               for s in theirs)

    # call here -> execution there
    call = next(s for s in ours if s.name == "auth/check_password")
    assert call.kind == SpanKind.CLIENT
    assert call.attributes["messaging.destination.name"] == "auth:rpc_queue"
    server = [s for s in theirs if s["name"] == "auth/check_password" and s["kind"] == "SERVER"
              and s["parent_span_id"] == f"{call.context.span_id:016x}"]
    assert len(server) == 1 and server[0]["trace_id"] == trace_id

    # a RemoteError: both sides are errors
    failed_call = next(s for s in ours if s.name == "auth/fail")
    assert failed_call.status.status_code == StatusCode.ERROR
    assert failed_call.attributes["error.type"] == "ValueError"
    (failed_execution,) = [s for s in theirs if s["name"] == "auth/fail"]
    assert failed_execution["status"] == "ERROR" and "exception" in failed_execution["events"]
    assert failed_execution["parent_span_id"] == f"{failed_call.context.span_id:016x}"

    # a failing handler: redelivered once, then dead-lettered (max_deliveries 2)
    fail_publish = next(s for s in ours if s.name == "publish auth.*:stream"
                        and s.context.trace_id != request.get_span_context().trace_id)
    attempts = sorted((s for s in theirs if s["name"] == "process auth.*:stream"
                       and s["trace_id"] == f"{fail_publish.context.trace_id:032x}"),
                      key=lambda s: s["attributes"]["bus.delivery_count"])
    assert [s["attributes"]["bus.delivery_count"] for s in attempts] == [1, 2]
    assert all(s["status"] == "ERROR" for s in attempts)
    assert all(s["parent_span_id"] == f"{fail_publish.context.span_id:016x}" for s in attempts)
    assert "bus.redeliver" in attempts[0]["events"]
    assert {"bus.redelivered", "bus.dead_letter"} <= set(attempts[1]["events"])

    # an RPC timeout
    timeout = next(s for s in ours if s.name == "nobody.serves/this")
    assert timeout.status.status_code == StatusCode.ERROR
    assert timeout.attributes["error.type"] == "RpcTimeout"
