"""The `state` plugin: a worker fires `internal.state.worker_started`, then `worker_ping`
every `ping_interval` seconds, and `worker_stopped` when it stops; `bus state` reads them.

    plugins:
      state:
        enabled: true
        ping_interval: 60      # seconds between pings (Lightbus's default)
        ping_enabled: true     # false: only started/stopped
        grace: 30              # `bus state`: a worker is gone after ping_interval + grace

A failed fire is logged and does not stop the worker: the next ping tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import weakref
from typing import TYPE_CHECKING, Any

import bus_core
from bus_core import hookimpl
from bus_state.api import (
    API_NAME,
    StateApi,
    WorkerState,
    WorkerStopped,
    hostname,
    max_memory_use,
    memory_use,
    now,
)
from bus_state.commands import register_commands

if TYPE_CHECKING:
    from bus_core.client import BusClient
    from bus_core.worker import Worker

logger = logging.getLogger("bus.state")
PLUGIN_NAME = "state"
DEFAULT_PING_INTERVAL = 60.0


def options(client: BusClient) -> dict[str, Any]:
    """This client's `plugins.state` section."""
    return client.config.plugin(PLUGIN_NAME)


def ping_interval(section: dict[str, Any]) -> float:
    return float(section.get("ping_interval") or DEFAULT_PING_INTERVAL)


def grace(section: dict[str, Any], interval: float) -> float:
    """Seconds past a missed ping before a worker counts as gone (default: half an interval)."""
    value = section.get("grace")
    return float(value) if value is not None else interval / 2


class Announcer:
    """One worker's announcements: what it says, and the ping task."""

    def __init__(self, client: BusClient, worker: Worker) -> None:
        self.client = client
        self.worker = worker
        section = options(client)
        self.ping_enabled = bool(section.get("ping_enabled", True))
        self.ping_interval = ping_interval(section)
        self.started = time.monotonic()
        self.hostname = hostname()
        self.task: asyncio.Task[None] | None = None

    def state(self) -> WorkerState:
        client, worker = self.client, self.worker
        return WorkerState(
            process_name=client.process_name,
            service_name=client.service_name,
            metrics_enabled="metrics" in client.plugins.enabled,
            api_names=[n for n in worker.api_names if not n.startswith("internal.")],
            listening_for=sorted({
                f"{api}.{event}"
                for name in worker.listener_names
                for api, event in client.listeners[name].listen_for
            }),
            timestamp=now(),
            ping_enabled=self.ping_enabled,
            ping_interval=self.ping_interval,
            hostname=self.hostname,
            pid=os.getpid(),
            max_memory_use=max_memory_use(),
            uptime=self.uptime(),
            memory_use=memory_use(),
            bus_version=bus_core.__version__,
        )

    def stopped(self) -> WorkerStopped:
        return WorkerStopped(
            process_name=self.client.process_name, service_name=self.client.service_name,
            timestamp=now(), hostname=self.hostname, pid=os.getpid(), uptime=self.uptime(),
            bus_version=bus_core.__version__,
        )

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)

    async def fire(self, event_name: str, record: WorkerState | WorkerStopped) -> bool:
        """Fire one announcement; log (and return False) when the transport refuses it."""
        try:
            await self.client.fire_async(API_NAME, event_name, dataclasses.asdict(record))
        except Exception as exc:
            logger.warning("firing %s.%s failed: %s: %s", API_NAME, event_name,
                           type(exc).__name__, exc)
            return False
        return True

    async def start(self) -> None:
        await self.fire("worker_started", self.state())
        if self.ping_enabled:
            self.task = asyncio.get_running_loop().create_task(self._ping(),
                                                               name="bus:state-ping")

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            await self.fire("worker_ping", self.state())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        await self.fire("worker_stopped", self.stopped())


_announcers: weakref.WeakKeyDictionary[Any, Announcer] = weakref.WeakKeyDictionary()


def ensure_api(client: BusClient) -> None:
    """Register `internal.state` on `client` (firing needs a locally registered API)."""
    existing = client.apis.get(API_NAME)
    if existing is None:
        client.register_api(StateApi())


@hookimpl
def bus_plugin_config_schema() -> dict[str, Any]:
    return {
        "properties": {
            "ping_interval": {"type": "number", "exclusiveMinimum": 0,
                              "default": DEFAULT_PING_INTERVAL,
                              "description": "seconds between a worker's worker_ping events"},
            "ping_enabled": {"type": "boolean", "default": True,
                             "description": "fire worker_ping (false: only worker_started "
                                            "and worker_stopped)"},
            "grace": {"type": "number", "minimum": 0,
                      "description": "bus state: a worker with no ping for ping_interval + "
                                     "grace seconds is gone (default: half its interval)"},
        },
    }


@hookimpl
def bus_register_commands(register: Any) -> None:
    register_commands(register)


@hookimpl(trylast=True)  # announce a start only once the other plugins accepted it
async def bus_worker_started(client: BusClient, worker: Worker) -> None:
    ensure_api(client)
    announcer = _announcers[worker] = Announcer(client, worker)
    await announcer.start()


@hookimpl
async def bus_worker_stopping(client: BusClient, worker: Worker) -> None:
    announcer = _announcers.pop(worker, None)
    if announcer is not None:
        await announcer.stop()
