"""bus-state: workers announce themselves on `internal.state` (started, a ping every
`ping_interval`, stopped), and `bus state` lists the live ones from those events."""

from bus_state.api import StateApi, WorkerState, WorkerStopped
from bus_state.status import WorkerStatus, read_workers

__all__ = ["StateApi", "WorkerState", "WorkerStatus", "WorkerStopped", "read_workers"]
