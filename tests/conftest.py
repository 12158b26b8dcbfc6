"""Shared fixtures: a fresh in-memory bus per test, and `async def` tests without plugins."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bus_core
from bus_core import Bus
from bus_core.logs import MessageContextFilter
from bus_core.testing import memory_config as testing_memory_config

ROOT = Path(__file__).resolve().parent.parent
ASYNC_TEST_TIMEOUT = 30.0
_broker_ids = itertools.count(1)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def test_...` on a fresh event loop, with a timeout so a hang fails."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}

    async def run() -> None:
        await asyncio.wait_for(pyfuncitem.obj(**kwargs), ASYNC_TEST_TIMEOUT)

    asyncio.run(run())
    return True


def memory_config(broker: str, **api_default: Any) -> dict[str, Any]:
    """The testing plugin's memory config, with the suite's shorter RPC timeout."""
    return testing_memory_config(broker, **{"rpc_timeout": 2, **api_default})


@pytest.fixture
def broker_name() -> str:
    """A memory broker name no other test uses."""
    return f"test-{os.getpid()}-{next(_broker_ids)}"


@pytest.fixture
def make_bus(broker_name: str) -> Iterator[Callable[..., Bus]]:
    """make_bus(**apis_default_options, plugins=[...], config=...) -> Bus on this test's
    broker; every bus made is closed after the test."""
    made: list[Bus] = []

    def make(*, plugins: Any = (), config: dict[str, Any] | None = None,
             service_name: str = "svc", process_name: str | None = None,
             **api_default: Any) -> Bus:
        document = config if config is not None else memory_config(broker_name, **api_default)
        bus = bus_core.create(document, plugins=plugins, service_name=service_name,
                              process_name=process_name)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.client.close()


def run_python(*args: str, **kwargs: Any) -> Any:
    """Run this venv's python with `args`; return the CompletedProcess."""
    import subprocess

    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 60)
    return subprocess.run([sys.executable, *args], **kwargs)


def bus_command() -> list[str]:
    """How to invoke the `bus` console script of this environment."""
    return [sys.executable, "-m", "bus_core.cli"]


class Collect(logging.Handler):
    """Keeps records as a log handler with Bus's filter sees them at emit time."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(MessageContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def about(self, text: str) -> dict[str, object]:
        (found,) = [r for r in self.records if r.getMessage().startswith(text)]
        return getattr(found, "bus", {})


@pytest.fixture
def collected() -> Iterator[Collect]:
    """Every log record of the test, with the message context it had when emitted."""
    handler = Collect()
    logger = logging.getLogger()
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(saved)
