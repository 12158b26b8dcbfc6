"""Every hook spec is really called by the kernel, with the arguments its spec names: one
plugin implements all of them, a short life of a bus (start, serve, call, fail, fire, listen,
an event from a newer sender, describe, stop) runs, and each hook must have been called.

A hook the kernel stopped calling (or calls with other argument names) fails here; grepping
the tests for `def <hook>(` cannot tell."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable
from typing import Any

from bus_core import Bus, EventMessage, RemoteError, hookimpl, hookspecs
from bus_core.transports import EventDelivery
from tests.apis import AuthApi
from tests.helpers import event_transport, serving

SPECS = sorted(name for name, value in vars(hookspecs).items()
               if name.startswith("bus_") and inspect.isfunction(value))


def recording_plugin(calls: dict[str, list[dict[str, Any]]]) -> object:
    """A plugin object with one implementation of every hook spec, each taking exactly the
    spec's arguments (pluggy matches them by name) and recording what it got."""

    class EveryHook:
        pass

    for name in SPECS:
        arguments = list(inspect.signature(getattr(hookspecs, name)).parameters)
        # pluggy reads the argument names off the code: write a function with the spec's own.
        namespace: dict[str, Any] = {"record": calls.setdefault(name, []).append}
        exec(f"def {name}({', '.join(arguments)}):\n"
             f"    record(dict({', '.join(f'{a}={a}' for a in arguments)}))", namespace)
        setattr(EveryHook, name, staticmethod(hookimpl(namespace[name])))
    return EveryHook()


async def test_every_hook_spec_is_called_with_its_arguments(
        make_bus: Callable[..., Bus]) -> None:
    calls: dict[str, list[dict[str, Any]]] = {}
    bus = make_bus(plugins=[recording_plugin(calls)])
    bus.client.register_api(AuthApi())
    handled = asyncio.Event()
    deliveries: list[str] = []

    async def failing_once(event: EventMessage, username: str, email: str) -> None:
        deliveries.append(username)
        if len(deliveries) == 1:
            raise ValueError("first delivery fails")
        if len(deliveries) == 3:
            handled.set()

    bus.auth.user_registered.listen(failing_once, listener_name="welcome")
    async with serving(bus):
        assert await bus.auth.check_password.call_async(username="admin", password="secret")
        with contextlib.suppress(RemoteError):
            await bus.auth.fail.call_async(message="boom")
        newer = EventMessage(api_name="auth", event_name="user_registered",
                             kwargs={"username": "a", "email": "e", "plan": "gold"})
        await (await event_transport(bus)).send_event(newer)
        await bus.auth.user_registered.fire_async(username="b", email="e")
        await asyncio.wait_for(handled.wait(), 5)
        await bus.client.describe_apis()
    await bus.client.close_async()

    missing = [name for name in SPECS if not calls[name]]
    assert missing == [], f"hook(s) never called by the kernel: {missing}"
    for name in SPECS:
        expected = set(inspect.signature(getattr(hookspecs, name)).parameters)
        for call in calls[name]:
            assert set(call) == expected, (name, sorted(call))
    assert calls["bus_on_undeclared_parameters"][0]["parameter_names"] == ["plan"]
    # the listener's batches: the newer event, the fired one, the redelivery of the failure
    received = [delivery for call in calls["bus_after_events_received"]
                for delivery in call["deliveries"]]
    assert {call["listener_name"] for call in calls["bus_after_events_received"]} == \
        {"welcome"}
    assert all(isinstance(d, EventDelivery) for d in received) and len(received) >= 3
    assert {d.message.kwargs["username"] for d in received if d.message} == {"a", "b"}
    assert {c["action"] for c in calls["bus_on_handler_error"]} >= {"reply_error",
                                                                    "redeliver"}
