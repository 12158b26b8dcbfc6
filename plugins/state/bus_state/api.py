"""The `internal.state` API: what a worker says about itself, and how it is measured.

The parameter names Lightbus 1.x sends are kept (`process_name`, `service_name`, `api_names`,
`listening_for`, `timestamp`, `ping_interval`, `hostname`, `pid`, `max_memory_use`,
`metrics_enabled`, `ping_enabled`), so a Lightbus peer on the same Redis reads our events and
we read theirs. `uptime`, `memory_use` and `bus_version` are Bus additions.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time

from bus_core import Api, Event

API_NAME = "internal.state"
EVENT_NAMES = ("worker_started", "worker_ping", "worker_stopped")


@dataclasses.dataclass
class WorkerState:
    """The parameters of `worker_started` and `worker_ping`."""

    process_name: str
    service_name: str
    metrics_enabled: bool
    api_names: list[str]
    listening_for: list[str]
    timestamp: float
    ping_enabled: bool
    ping_interval: float
    hostname: str
    pid: int
    max_memory_use: int | None
    uptime: float
    memory_use: int | None
    bus_version: str


@dataclasses.dataclass
class WorkerStopped:
    """The parameters of `worker_stopped`."""

    process_name: str
    service_name: str
    timestamp: float
    hostname: str
    pid: int
    uptime: float
    bus_version: str


class StateApi(Api):
    """Worker lifecycle announcements (fired by the `state` plugin, read by `bus state`)."""

    worker_started = Event(parameters=WorkerState)
    worker_ping = Event(parameters=WorkerState)
    worker_stopped = Event(parameters=WorkerStopped)

    class Meta:
        name = API_NAME


def max_memory_use() -> int | None:
    """The process's peak resident set size in bytes (None where `resource` is missing)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def memory_use() -> int | None:
    """The process's current resident set size in bytes, from /proc (None elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def hostname() -> str:
    return socket.gethostname()


def now() -> float:
    """Epoch seconds, as Lightbus sends `timestamp`."""
    return time.time()
