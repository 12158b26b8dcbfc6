"""A traced Bus worker for the otel tests: `python traced_worker.py SPEC_JSON`.

It serves AuthApi and listens to `auth.user_registered` as listener `welcome` (service
`worker`); the handler calls `auth.check_password` (a nested RPC, served by this worker) and
raises for username "fail". It records spans with the SDK's in-memory exporter, prints READY
once serving, and on SIGTERM drains, then writes the finished spans as JSON to SPEC["out"].

SPEC_JSON: {"config": {...bus config...}, "out": path}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository, for tests.apis

import bus_core
from tests.apis import AuthApi


def as_dict(span: Any) -> dict[str, Any]:
    return {
        "name": span.name, "kind": span.kind.name,
        "trace_id": f"{span.context.trace_id:032x}", "span_id": f"{span.context.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "status": span.status.status_code.name, "attributes": dict(span.attributes),
        "events": [event.name for event in span.events],
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    bus = bus_core.create(spec["config"], service_name="worker", process_name="w1")
    bus.client.register_api(AuthApi())

    def welcome(event: Any, username: str, email: str) -> None:
        bus.auth.check_password(username=username, password="x")
        if username == "fail":
            raise ValueError("cannot welcome 'fail'")

    bus.client.listen("auth.user_registered", welcome, listener_name="welcome")
    bus.client.on_start(lambda: print("READY", flush=True))
    code = bus.client.run_worker()
    bus.client.close()
    Path(spec["out"]).write_text(json.dumps([as_dict(s) for s in exporter.get_finished_spans()]))
    sys.exit(code)


if __name__ == "__main__":
    main()
