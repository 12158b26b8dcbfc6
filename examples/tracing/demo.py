"""Tracing demo: every fire, event handling, RPC call and execution becomes an OpenTelemetry
span, printed to the console. Runs on the in-memory transports; no server needed.

    pip install ./plugins/otel opentelemetry-sdk
    python examples/tracing/demo.py

One trace: the "signup" span (the application's own) -> the publish span of
auth.user_registered -> its process span in the listener -> the nested auth.check_password
call -> that call's execution. Beside it, the listener's "receive" span for the batch the
event came in (a trace of its own), which the process span links to.
"""

from __future__ import annotations

import asyncio
import logging

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import bus_core
from bus_core import Api, Event, EventMessage
from bus_core.logs import configure

# 1. Configure the OpenTelemetry SDK as usual: here, every span to the console.
provider = TracerProvider(resource=Resource.create({"service.name": "tracing-demo"}))
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
trace.set_tracer_provider(provider)


class AuthApi(Api):
    user_registered = Event(parameters=("username",))

    class Meta:
        name = "auth"

    def check_password(self, username: str, password: str) -> bool:
        return password == "secret"


# 2. Enable the otel plugin (bus-otel) in the config.
bus = bus_core.create({"plugins": {"otel": {"enabled": True}}}, service_name="demo")
bus.client.register_api(AuthApi())
log = logging.getLogger("demo")
welcomed: list[str] = []


async def welcome(event: EventMessage, username: str) -> None:
    log.info("welcoming %s", username)  # a JSON log line with trace_id and span_id
    await bus.auth.check_password.call_async(username=username, password="secret")
    welcomed.append(username)


async def main() -> None:
    configure("INFO", "json")
    bus.auth.user_registered.listen(welcome, listener_name="welcome")
    worker = bus.client.worker()
    await worker.start()
    with trace.get_tracer("demo").start_as_current_span("signup"):
        await bus.auth.user_registered.fire_async(username="ada")
    for _ in range(500):  # until the listener is done (its spans are then printed)
        if welcomed:
            break
        await asyncio.sleep(0.01)
    await worker.stop()
    await bus.client.close_async()


if __name__ == "__main__":
    asyncio.run(main())
