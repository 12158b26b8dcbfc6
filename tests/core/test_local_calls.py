"""Local calls (`apis.<api>.local: true`): a call of an API this process registers runs here,
with no transport and no worker, and yet with the same argument checks, casting, hooks,
errors and timeout as a call that crosses the bus. An API served elsewhere is still called
over the transport."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from bus_core import Bus, InvalidArguments, RemoteError, RpcMessage, RpcTimeout, hookimpl
from bus_core.testing import memory_config
from tests.apis import Address, AuthApi, Colour, Point, TypesApi
from tests.helpers import serving


def local_config(broker_name: str, **api: Any) -> dict[str, Any]:
    config = memory_config(broker_name, rpc_timeout=0.5)
    config["apis"]["auth"] = {"local": True, **api}
    config["apis"]["my_company.types"] = {"local": True}
    return config


class Hooks:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def bus_before_rpc_call(self, client: Any, message: RpcMessage) -> None:
        self.seen.append("before_call")

    @hookimpl
    def bus_before_rpc_execution(self, client: Any, message: RpcMessage) -> None:
        self.seen.append("before_execution")

    @hookimpl
    def bus_after_rpc_execution(self, client: Any, message: RpcMessage, result: Any,
                                error: Any, duration: float) -> None:
        self.seen.append("after_execution")

    @hookimpl
    def bus_after_rpc_call(self, client: Any, message: RpcMessage, result: Any, error: Any,
                           duration: float) -> None:
        self.seen.append(f"after_call:{type(error).__name__ if error else result!r}")


async def test_a_local_call_runs_here_with_no_worker_and_every_hook(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    hooks = Hooks()
    bus = make_bus(config=local_config(broker_name), plugins=[hooks])
    bus.client.register_api(AuthApi())
    assert await bus.auth.check_password.call_async(username="admin", password="secret")
    assert hooks.seen == ["before_call", "before_execution", "after_execution",
                          "after_call:True"]


async def test_without_local_the_same_call_needs_a_worker(make_bus: Callable[..., Bus],
                                                          broker_name: str) -> None:
    bus = make_bus(config=memory_config(broker_name, rpc_timeout=0.2))
    bus.client.register_api(AuthApi())
    with pytest.raises(RpcTimeout):
        await bus.auth.check_password.call_async(username="admin", password="secret")


async def test_arguments_are_checked_and_cast_and_results_cast_back(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    bus = make_bus(config=local_config(broker_name))
    bus.client.register_api(TypesApi())
    with pytest.raises(InvalidArguments, match="missing required"):
        await bus.my_company.types.echo.call_async()
    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    answer = await bus.my_company.types.echo.call_async(
        when=when, day=when.date(), at=when.time(), ident=uuid.UUID(int=3),
        amount=Decimal("2.50"), blob=b"\x00\xff", colour=Colour.BLUE,
        address=Address("Main", 1), point=Point(1.0, 2.0), tags={"b", "a"}, pair=(1, "x"))
    assert answer["types"] == ["datetime", "date", "time", "UUID", "Decimal", "bytes",
                               "Colour", "Address", "Point", "set", "tuple"]
    assert answer["when"] == when.isoformat()  # the dict result is wire values, as remotely
    address = await bus.my_company.types.address_of.call_async(street="Main")
    assert address == Address(street="Main", number=7)


@pytest.mark.parametrize("tracebacks", [True, False])
async def test_a_raising_procedure_is_a_remote_error_as_over_the_bus(
        make_bus: Callable[..., Bus], broker_name: str, tracebacks: bool) -> None:
    config = local_config(broker_name)
    config.setdefault("bus", {})["send_tracebacks"] = tracebacks
    bus = make_bus(config=config)
    bus.client.register_api(AuthApi())
    with pytest.raises(RemoteError) as caught:
        await bus.auth.fail.call_async(message="nope")
    assert caught.value.remote_type == "ValueError"
    assert caught.value.remote_message == "nope"
    assert ("Traceback" in caught.value.remote_traceback) is tracebacks


async def test_a_slow_local_call_times_out(make_bus: Callable[..., Bus],
                                           broker_name: str) -> None:
    bus = make_bus(config=local_config(broker_name))
    bus.client.register_api(AuthApi())
    with pytest.raises(RpcTimeout, match="auth.slow_echo"):
        await bus.auth.slow_echo.call_async(value="x", delay=5)


def test_a_sync_local_call(make_bus: Callable[..., Bus], broker_name: str) -> None:
    bus = make_bus(config=local_config(broker_name))
    bus.client.register_api(AuthApi())
    assert bus.auth.check_password(username="admin", password="wrong") is False


async def test_an_api_served_elsewhere_is_still_called_over_the_transport(
        make_bus: Callable[..., Bus], broker_name: str) -> None:
    server = make_bus(config=memory_config(broker_name), service_name="auth_service")
    server.client.register_api(AuthApi())
    caller = make_bus(config=local_config(broker_name), service_name="web")
    async with serving(server):
        assert await caller.auth.check_password.call_async(username="admin",
                                                           password="secret")
