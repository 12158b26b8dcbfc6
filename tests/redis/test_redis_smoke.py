"""End to end on a real Redis: the basics a user sees first."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading

import pytest

import bus_core
from bus_core import EventMessage, PluginError, RemoteError, RpcTimeout, hookimpl
from tests.apis import AuthApi
from tests.core.test_lifetime import run_in_child
from tests.helpers import eventually, serving
from tests.redis.conftest import redis_config


def test_rpc_and_event_between_two_clients(make_redis_bus):
    server = make_redis_bus(service_name="auth_service")
    server.client.register_api(AuthApi())
    heard = threading.Event()
    got: list[tuple[str, str]] = []

    def welcome(event: EventMessage, username: str, email: str) -> None:
        got.append((username, email))
        heard.set()

    server.auth.user_registered.listen(welcome, listener_name="welcome")
    server.client.start_worker()
    caller = make_redis_bus(service_name="web")
    assert caller.auth.check_password(username="admin", password="secret") is True
    with pytest.raises(RemoteError) as caught:
        caller.auth.fail(message="nope")
    assert caught.value.remote_type == "ValueError"
    server.auth.user_registered.fire(username="ada", email="ada@example.com")
    assert heard.wait(5)
    assert got == [("ada", "ada@example.com")]


def test_rpc_to_an_api_nobody_serves_times_out(make_redis_bus):
    caller = make_redis_bus(rpc_timeout=0.3)
    with pytest.raises(RpcTimeout, match="billing.charge"):
        caller.billing.charge(amount=1)


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_a_client_used_before_fork_works_in_the_child(make_redis_bus):
    """gunicorn --preload: the master calls, then forks workers that call on their own
    connections (the parent's stay the parent's)."""
    server, caller = make_redis_bus(), make_redis_bus(service_name="caller")
    server.client.register_api(AuthApi())
    server.client.start_worker()
    assert caller.auth.check_password(username="admin", password="secret") is True

    def child() -> str:
        alarm = threading.Timer(20, lambda: os._exit(3))  # a hang fails the test
        alarm.start()
        answer = caller.auth.check_password(username="admin", password="secret")
        caller.close()
        alarm.cancel()
        return str(answer)

    assert run_in_child(child) == "True"
    assert caller.auth.check_password(username="admin", password="nope") is False


class RefusesToStart:
    """A plugin that refuses the worker's start, as bus-metrics does when its port is taken."""

    @hookimpl
    def bus_worker_started(self, client, worker):
        raise PluginError("cannot serve on 127.0.0.1:9464: the port is taken")


async def test_a_refused_start_is_undone_quietly(make_redis_bus, caplog):
    bus = make_redis_bus(plugins=[RefusesToStart()])
    bus.client.register_api(AuthApi())
    bus.auth.user_registered.listen(lambda event, **kw: None, listener_name="welcome")
    with pytest.raises(PluginError, match="port is taken"):
        await bus.client.serve(stop=asyncio.Event())
    assert not bus.client.running_workers
    noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
             and r.name.startswith("bus")]
    assert noise == [], noise  # the consumers were closed under no read


async def test_the_reply_reader_logs_about_no_call(own_redis_server, collected):
    """The reader task starts during the first call; its later lines are not about it."""
    bus = bus_core.create(redis_config(own_redis_server.url), service_name="svc")
    try:
        bus.client.register_api(AuthApi())
        async with serving(bus):
            assert await bus.auth.check_password.call_async(username="admin",
                                                            password="secret") is True
            own_redis_server.stop()
            await eventually(lambda: any("reading RPC results" in r.getMessage()
                                         for r in collected.records))
        first = next(r for r in collected.records if "reading RPC results" in r.getMessage())
        assert getattr(first, "bus", None) is None  # no message context carried along
    finally:
        await bus.client.close_async()
