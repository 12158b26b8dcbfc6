"""Which workers are alive, from the recent history of `internal.state` events.

Read-only: `EventTransport.history()` for each of the three events over a time window; no
consumer group is joined, so looking leaves no trace on the bus.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from bus_core.messages import EventMessage
from bus_state.api import API_NAME

if TYPE_CHECKING:
    from bus_core.client import BusClient

ALIVE, GONE, STOPPED = "alive", "gone", "stopped"


@dataclasses.dataclass
class WorkerStatus:
    """One worker process as its latest announcements describe it."""

    service_name: str
    process_name: str
    status: str = ALIVE  # alive | gone (pings stopped) | stopped (said worker_stopped)
    hostname: str | None = None
    pid: int | None = None
    api_names: list[str] = dataclasses.field(default_factory=list)
    listening_for: list[str] = dataclasses.field(default_factory=list)
    ping_interval: float | None = None
    ping_enabled: bool = True
    last_seen: float | None = None  # epoch seconds of the latest started/ping
    last_seen_age: float | None = None  # seconds before the read
    stopped_at: float | None = None
    uptime: float | None = None
    memory_use: int | None = None
    max_memory_use: int | None = None
    bus_version: str | None = None

    @property
    def alive(self) -> bool:
        return self.status == ALIVE

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _when(message: EventMessage) -> float | None:
    """When the event was sent: the transport's own time (one clock for every sender),
    else the sender's `timestamp`."""
    if message.time is not None:
        moment = message.time if message.time.tzinfo else message.time.replace(
            tzinfo=timezone.utc)
        return moment.timestamp()
    stamp = message.kwargs.get("timestamp")
    return float(stamp) if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) \
        else None


def _text_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(item) for item in value]
    if isinstance(value, str) and value:
        return [part.strip() for part in value.split(",") if part.strip()]
    return []


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return kind(value)
    return None


def _merge(worker: WorkerStatus, kwargs: dict[str, Any], when: float) -> None:
    """Take the fields of a started/ping event (only the newest one is merged)."""
    worker.last_seen = when
    hostname = kwargs.get("hostname")
    worker.hostname = hostname if isinstance(hostname, str) else None
    worker.pid = _number(kwargs.get("pid"), int)
    worker.api_names = _text_list(kwargs.get("api_names"))
    worker.listening_for = _text_list(kwargs.get("listening_for"))
    worker.ping_interval = _number(kwargs.get("ping_interval"), float)
    worker.ping_enabled = kwargs.get("ping_enabled") is not False
    worker.uptime = _number(kwargs.get("uptime"), float)
    worker.memory_use = _number(kwargs.get("memory_use"), int)
    worker.max_memory_use = _number(kwargs.get("max_memory_use"), int)
    version = kwargs.get("bus_version")
    worker.bus_version = version if isinstance(version, str) else None


async def read_workers(client: BusClient, *, window: float, grace: float | None = None,
                       default_interval: float = 60.0, now: float | None = None
                       ) -> list[WorkerStatus]:
    """Every worker that announced itself in the last `window` seconds, with its status.

    A worker is `stopped` when its latest event is `worker_stopped`, `gone` when it has not
    pinged for its `ping_interval` + `grace` seconds (grace None: half its interval), else
    `alive` (a worker with `ping_enabled: false` stays alive until it stops). Sorted by
    service, then host, then pid.
    """
    now = time.time() if now is None else now
    start = datetime.fromtimestamp(now - window, tz=timezone.utc)
    state = await client.state()
    transport = await state.transport("event", API_NAME)
    workers: dict[tuple[str, str], WorkerStatus] = {}

    def worker_for(kwargs: dict[str, Any]) -> WorkerStatus | None:
        service, process = kwargs.get("service_name"), kwargs.get("process_name")
        if not isinstance(process, str) or not process:
            return None
        service = service if isinstance(service, str) and service else "?"
        key = (service, process)
        if key not in workers:
            workers[key] = WorkerStatus(service_name=service, process_name=process)
        return workers[key]

    for event_name in ("worker_started", "worker_ping"):
        async for message in transport.history(API_NAME, event_name, start=start):
            when = _when(message)
            worker = worker_for(message.kwargs)
            if worker is None or when is None:
                continue
            if worker.last_seen is None or when > worker.last_seen:
                _merge(worker, message.kwargs, when)
    async for message in transport.history(API_NAME, "worker_stopped", start=start):
        when = _when(message)
        worker = worker_for(message.kwargs)
        if worker is None or when is None:
            continue
        if worker.stopped_at is None or when > worker.stopped_at:
            worker.stopped_at = when
            if worker.hostname is None and isinstance(message.kwargs.get("hostname"), str):
                worker.hostname = message.kwargs["hostname"]
            if worker.pid is None:
                worker.pid = _number(message.kwargs.get("pid"), int)

    for worker in workers.values():
        if worker.last_seen is not None:
            worker.last_seen_age = round(max(0.0, now - worker.last_seen), 3)
        if worker.stopped_at is not None and (worker.last_seen is None
                                              or worker.stopped_at >= worker.last_seen):
            worker.status = STOPPED
            continue
        assert worker.last_seen is not None  # only started/ping events set no stopped_at
        if not worker.ping_enabled:  # it never pings: alive until it says it stopped
            continue
        interval = worker.ping_interval or default_interval
        allowed = interval + (grace if grace is not None else interval / 2)
        worker.status = ALIVE if now - worker.last_seen <= allowed else GONE
    return sorted(workers.values(),
                  key=lambda w: (w.service_name, w.hostname or "", w.pid or 0, w.process_name))
