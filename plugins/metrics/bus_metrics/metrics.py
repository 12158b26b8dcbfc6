"""The metrics of one bus client: a `CollectorRegistry` of its own, the per-message
counters, the HTTP endpoint and the listener-lag refresher.

The per-message path does no locking and builds no label children: each thread that runs
hooks of the client keeps its own slots (plain lists per (API, name[, listener])), and a
collector sums the threads' slots into Prometheus families when the endpoint is scraped."""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from bus_core import RpcTimeout, RpcWorkerLost
from bus_core.errors import PluginError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from bus_core.client import BusClient
    from bus_core.worker import Worker

logger = logging.getLogger("bus.metrics")

DEFAULTS: dict[str, Any] = {
    "prefix": "bus_",
    "host": "127.0.0.1",
    "port": 9464,
    "lag_interval": 15.0,
    "buckets": [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 5.0, 10.0],
}

EVENT_LABELS = ("service_name", "api_name", "event_name", "transport")
LISTENER_LABELS = ("service_name", "api_name", "event_name", "listener_name", "transport")
RPC_LABELS = ("service_name", "api_name", "procedure_name", "transport")
RPC_SIDE_LABELS = (*RPC_LABELS, "side")

# Slot layouts (one list per key and thread):
FIRED_OK, FIRED_ERRORS = 0, 1
HANDLED_COUNT, HANDLED_ERRORS, HANDLED_SUM, HANDLED_BUCKETS = 0, 1, 2, 3
CALLED_COUNT, CALLED_ERRORS, CALLED_TIMEOUTS, CALLED_LOST, CALLED_SUM = 0, 1, 2, 3, 4
CALLED_BUCKETS = 5
EXECUTED_COUNT, EXECUTED_ERRORS, EXECUTED_SUM, EXECUTED_BUCKETS = 0, 1, 2, 3
FAILURE_ACTIONS = {"dead_letter": 0, "redeliver": 1}  # slot of each counted action
UNKNOWN = "unknown"  # the label of every API, RPC or event name that is not declared
# Undeclared names a caller's own code uses keep their labels up to this many keys (a caller
# of a remote API whose schema it does not know); names from the wire never do.
CALLER_NAME_ALLOWANCE = 200


class _Slots(threading.local):
    """One thread's counts: `fired`, `handled`, `called`, `executed`, `dead` (listener
    failures by action: dead letters, redeliveries), by key."""

    def __init__(self, shards: list[tuple[dict[Any, list[Any]], ...]],
                 lock: threading.Lock) -> None:
        self.fired: dict[tuple[str, str], list[int]] = {}
        self.handled: dict[tuple[str, str, str], list[Any]] = {}
        self.called: dict[tuple[str, str], list[Any]] = {}
        self.executed: dict[tuple[str, str], list[Any]] = {}
        self.dead: dict[tuple[str, str, str], list[int]] = {}
        self.undeclared: dict[tuple[str, str, str], list[int]] = {}
        with lock:
            shards.append((self.fired, self.handled, self.called, self.executed, self.dead,
                           self.undeclared))


def _total(shards: Sequence[dict[Any, list[Any]]]) -> dict[Any, list[Any]]:
    """Element-wise sums of the threads' slots, by key."""
    totals: dict[Any, list[Any]] = {}
    for shard in shards:
        for key, slots in list(shard.items()):
            found = totals.get(key)
            if found is None:
                totals[key] = list(slots)
            else:
                for i, value in enumerate(slots):
                    found[i] += value
    return totals


class BusMetrics:
    """The Prometheus metrics of one bus client (two clients in a process never share any).

    The per-message methods are plain functions: a thread-local look-up, a dict look-up by
    (API, name[, listener]), a few list increments; labels are worked out once per key."""

    def __init__(self, client: BusClient, options: Mapping[str, Any] | None = None) -> None:
        settings = {**DEFAULTS, **(options or {})}
        self._client = weakref.ref(client)  # the plugin's table must not keep it alive
        self.config = client.config
        self.service_name = client.service_name
        self.prefix: str = settings["prefix"]
        self.host: str = settings["host"]
        self.port: int = int(settings["port"])
        self.lag_interval: float = float(settings["lag_interval"])
        self.bounds: list[float] = sorted(float(b) for b in settings["buckets"])
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self._shard_lock = threading.Lock()
        self._shards: list[tuple[dict[Any, list[Any]], ...]] = []
        self._slots = _Slots(self._shards, self._shard_lock)
        self._labels: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
        self._lag: dict[tuple[str, str, str], int] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)  # type: ignore[arg-type]  # a Collector by shape
        # the endpoint: one per client, shared by its running workers
        self._lock = threading.Lock()
        self._workers: set[Worker] = set()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._lag_tasks: dict[Worker, asyncio.Task[None]] = {}
        self._lag_unsupported: set[str] = set()
        self._caller_keys: set[tuple[str, str]] = set()

    # -- per message (sync, cheap) -------------------------------------------------------

    def _declared(self, kind: str, key: tuple[str, ...]) -> tuple[str, ...]:
        """`key` if its names are declared (a registered or described API and its RPC or
        event, a listener's own event), else the same key with `unknown` for each name that
        is not: label values must never come from whatever a peer sends."""
        client = self._client()
        if client is None:
            return key
        api_name, name = key[0], key[1]
        if kind in ("handled", "dead", "undeclared", "lag"):
            listener = client.listeners.get(key[2])
            if listener is not None and listener.wants(api_name, name):
                return key
            return (UNKNOWN, UNKNOWN, key[2] if listener is not None else UNKNOWN)
        definition = client.known_definition(api_name)
        if definition is not None:
            names = definition.rpcs if kind in ("called", "executed") else definition.events
            return (api_name, name if name in names else UNKNOWN)
        if kind == "called" and (key in self._caller_keys
                                 or len(self._caller_keys) < CALLER_NAME_ALLOWANCE):
            self._caller_keys.add(key)  # type: ignore[arg-type]
            return key
        return (UNKNOWN, UNKNOWN)

    def _new(self, table: dict[Any, list[Any]], kind: str, key: tuple[str, ...],
             size: int) -> list[Any]:
        """First sight of `key` on this thread: the slots of its declared form (zeroed if
        new), and its labels, once."""
        key = self._declared(kind, key)
        found = table.get(key)
        if found is not None:
            return found
        if (kind, key) not in self._labels:
            transport = self.config.api(key[0]).transport(
                "rpc" if kind in ("called", "executed") else "event")[0]
            self._labels[(kind, key)] = (self.service_name, *key, transport)
        slots = table[key] = [0] * size
        return slots

    def event_fired(self, api_name: str, event_name: str, error: BaseException | None) -> None:
        """Count one fire (accepted, or refused when `error` is set)."""
        table = self._slots.fired
        slots = table.get((api_name, event_name))
        if slots is None:
            slots = self._new(table, "fired", (api_name, event_name), 2)
        slots[FIRED_OK if error is None else FIRED_ERRORS] += 1

    def event_handled(self, api_name: str, event_name: str, listener_name: str,
                      error: BaseException | None, duration: float) -> None:
        """Count one handling of an event by a listener and observe its duration."""
        table = self._slots.handled
        key = (api_name, event_name, listener_name)
        slots = table.get(key)
        if slots is None:
            slots = self._new(table, "handled", key, HANDLED_BUCKETS + len(self._le))
        slots[HANDLED_COUNT] += 1
        slots[HANDLED_SUM] += duration
        slots[HANDLED_BUCKETS + bisect_left(self.bounds, duration)] += 1
        if error is not None:
            slots[HANDLED_ERRORS] += 1

    def handler_failed(self, api_name: str, event_name: str, listener_name: str,
                       action: str) -> None:
        """Count what a listener's failure led to: a dead letter or a redelivery."""
        slot = FAILURE_ACTIONS.get(action)
        if slot is None:
            return
        table = self._slots.dead
        key = (api_name, event_name, listener_name)
        slots = table.get(key) or self._new(table, "dead", key, len(FAILURE_ACTIONS))
        slots[slot] += 1

    def undeclared_parameters(self, api_name: str, event_name: str,
                              listener_name: str) -> None:
        """Count one event that carried parameters its API does not declare."""
        table = self._slots.undeclared
        key = (api_name, event_name, listener_name)
        slots = table.get(key) or self._new(table, "undeclared", key, 1)
        slots[0] += 1

    def rpc_called(self, api_name: str, procedure_name: str, error: BaseException | None,
                   duration: float) -> None:
        """Caller side: count one call and its outcome, observe its duration."""
        table = self._slots.called
        key = (api_name, procedure_name)
        slots = table.get(key)
        if slots is None:
            slots = self._new(table, "called", key, CALLED_BUCKETS + len(self._le))
        slots[CALLED_COUNT] += 1
        slots[CALLED_SUM] += duration
        slots[CALLED_BUCKETS + bisect_left(self.bounds, duration)] += 1
        if error is not None:
            if isinstance(error, RpcWorkerLost):
                slots[CALLED_LOST] += 1
            slots[CALLED_TIMEOUTS if isinstance(error, RpcTimeout) else CALLED_ERRORS] += 1

    def rpc_executed(self, api_name: str, procedure_name: str, error: BaseException | None,
                     duration: float) -> None:
        """Worker side: count one execution and its outcome, observe its duration."""
        table = self._slots.executed
        key = (api_name, procedure_name)
        slots = table.get(key)
        if slots is None:
            slots = self._new(table, "executed", key, EXECUTED_BUCKETS + len(self._le))
        slots[EXECUTED_COUNT] += 1
        slots[EXECUTED_SUM] += duration
        slots[EXECUTED_BUCKETS + bisect_left(self.bounds, duration)] += 1
        if error is not None:
            slots[EXECUTED_ERRORS] += 1

    # -- the collector ---------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The families, summed over the threads' slots (called by the registry per scrape)."""
        with self._shard_lock:
            shards = list(self._shards)
        fired, handled, called, executed, dead = (
            _total([shard[i] for shard in shards]) for i in range(5))
        undeclared = _total([shard[5] for shard in shards])
        p, labels = self.prefix, self._labels

        def counter(name: str, doc: str, names: Sequence[str]) -> CounterMetricFamily:
            return CounterMetricFamily(p + name, doc, labels=names)

        events_fired = counter("events_fired", "Events accepted by the event transport",
                               EVENT_LABELS)
        fire_errors = counter("event_fire_errors", "Events the event transport did not "
                              "accept (fire raised)", EVENT_LABELS)
        for key, slots in sorted(fired.items()):
            events_fired.add_metric(labels[("fired", key)], slots[FIRED_OK])
            fire_errors.add_metric(labels[("fired", key)], slots[FIRED_ERRORS])
        processed = counter("events_processed", "Events a listener's handler ran for, "
                            "successfully or not", LISTENER_LABELS)
        handling = HistogramMetricFamily(p + "event_handling_seconds", "Seconds a listener's "
                                         "handler took", labels=LISTENER_LABELS)
        listener_errors = counter("listener_errors", "Events whose handler raised (or that "
                                  "were refused before it ran)", LISTENER_LABELS)
        for key, slots in sorted(handled.items()):
            names = labels[("handled", key)]
            processed.add_metric(names, slots[HANDLED_COUNT])
            handling.add_metric(names, self._buckets(slots[HANDLED_BUCKETS:]),
                                slots[HANDLED_SUM])
            listener_errors.add_metric(names, slots[HANDLED_ERRORS])
        dead_letters = counter("dead_letters", "Events a listener gave up on and "
                               "dead-lettered", LISTENER_LABELS)
        redelivered = counter("events_redelivered", "Events put back for another delivery "
                              "after a listener failed on them", LISTENER_LABELS)
        for key, slots in sorted(dead.items()):
            dead_letters.add_metric(labels[("dead", key)], slots[0])
            redelivered.add_metric(labels[("dead", key)], slots[1])
        lag = GaugeMetricFamily(p + "listener_lag_events", "Events of the listener's "
                                "consumer group not yet acknowledged (unread + pending)",
                                labels=LISTENER_LABELS)
        for key, value in sorted(self._lag.items()):
            lag.add_metric(labels[("lag", key)], value)
        rpcs_called = counter("rpcs_called", "RPC calls made (every outcome)", RPC_LABELS)
        rpcs_processed = counter("rpcs_processed", "RPC calls a worker executed (every "
                                 "outcome)", RPC_LABELS)
        seconds = HistogramMetricFamily(p + "rpc_seconds", "RPC duration: caller side from "
                                        "send to outcome, worker side the execution",
                                        labels=RPC_SIDE_LABELS)
        errors = counter("rpc_errors", "RPCs that failed (timeouts excluded: see "
                         "rpc_timeouts)", RPC_SIDE_LABELS)
        timeouts = counter("rpc_timeouts", "RPC calls that got no result in time",
                           RPC_LABELS)
        workers_lost = counter("rpc_workers_lost", "RPC calls whose worker stopped before "
                               "answering (RpcWorkerLost, also counted in rpc_timeouts)",
                               RPC_LABELS)
        for key, slots in sorted(called.items()):
            names = labels[("called", key)]
            rpcs_called.add_metric(names, slots[CALLED_COUNT])
            seconds.add_metric((*names, "caller"), self._buckets(slots[CALLED_BUCKETS:]),
                               slots[CALLED_SUM])
            errors.add_metric((*names, "caller"), slots[CALLED_ERRORS])
            timeouts.add_metric(names, slots[CALLED_TIMEOUTS])
            workers_lost.add_metric(names, slots[CALLED_LOST])
        for key, slots in sorted(executed.items()):
            names = labels[("executed", key)]
            rpcs_processed.add_metric(names, slots[EXECUTED_COUNT])
            seconds.add_metric((*names, "worker"), self._buckets(slots[EXECUTED_BUCKETS:]),
                               slots[EXECUTED_SUM])
            errors.add_metric((*names, "worker"), slots[EXECUTED_ERRORS])
        undeclared_parameters = counter(
            "undeclared_parameters", "Events received with parameters their API does not "
            "declare (delivered without them)", LISTENER_LABELS)
        for key, slots in sorted(undeclared.items()):
            undeclared_parameters.add_metric(labels[("undeclared", key)], slots[0])
        yield from (events_fired, fire_errors, processed, handling, listener_errors,
                    dead_letters, redelivered, lag, rpcs_called, rpcs_processed, seconds,
                    errors, timeouts, workers_lost, undeclared_parameters)

    def _buckets(self, counts: Sequence[int]) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs from per-bucket counts."""
        running = 0
        pairs = []
        for le, count in zip(self._le, counts, strict=True):
            running += count
            pairs.append((le, running))
        return pairs

    # -- listener lag ----------------------------------------------------------------------

    async def refresh_lag(self, listener_names: Sequence[str]) -> None:
        """Ask the event transport how far each listener's consumer group is behind, for
        each event it listens to, and set the lag gauge."""
        client = self._client()
        if client is None:
            return
        state = await client.state()
        for listener_name in listener_names:
            listener = client.listeners.get(listener_name)
            if listener is None:
                continue
            for api_name, event_name in listener.listen_for:
                transport_name = self.config.api(api_name).transport("event")[0]
                if transport_name in self._lag_unsupported:
                    continue
                transport = await state.transport("event", api_name)
                try:
                    lag = await transport.lag(api_name, event_name, listener_name)
                except NotImplementedError:
                    logger.info("the %r event transport cannot report lag; the %slistener_"
                                "lag_events gauge stays empty for it", transport_name,
                                self.prefix)
                    self._lag_unsupported.add(transport_name)
                    continue
                key = (api_name, event_name, listener_name)
                if ("lag", key) not in self._labels:
                    self._labels[("lag", key)] = (self.service_name, *key, transport_name)
                self._lag[key] = int(lag)

    async def _keep_lag_fresh(self, worker: Worker) -> None:
        """Refresh the lag gauge now, then every `lag_interval` seconds, while `worker` runs."""
        failing = False
        while True:
            try:
                await self.refresh_lag(worker.listener_names)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:  # once per outage, not once per interval
                    logger.warning("reading listener lag failed (%s: %s); retrying every %gs",
                                   type(exc).__name__, exc, self.lag_interval)
                failing = True
            await asyncio.sleep(self.lag_interval)

    # -- the endpoint ----------------------------------------------------------------------

    @property
    def url(self) -> str | None:
        """`http://host:port/metrics` while the endpoint serves, else None."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else str(host)
        return f"http://{host}:{port}/metrics"

    async def worker_started(self, worker: Worker) -> None:
        """Serve the endpoint (the first worker starts it) and refresh lag for `worker`."""
        with self._lock:
            self._workers.add(worker)
            start = self._server is None
            if start:
                try:
                    self._server, self._thread = start_http_server(
                        self.port, self.host, registry=self.registry)
                except OSError as exc:
                    self._workers.discard(worker)
                    raise PluginError(
                        f"metrics: cannot serve on {self.host}:{self.port} ({exc}); set "
                        f"plugins.metrics.port to a free port, or 0 to pick one") from None
        if start:
            logger.info("serving metrics on %s", self.url)
        if self.lag_interval > 0 and worker.listener_names:
            self._lag_tasks[worker] = asyncio.get_running_loop().create_task(
                self._keep_lag_fresh(worker), name="bus:metrics-lag")

    async def worker_stopping(self, worker: Worker) -> None:
        """Stop refreshing lag for `worker`; the last worker to stop closes the endpoint."""
        task = self._lag_tasks.pop(worker, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        with self._lock:
            self._workers.discard(worker)
            if self._workers or self._server is None:
                return
            server, thread = self._server, self._thread
            self._server = self._thread = None
        # shutdown() waits for serve_forever's next poll (up to 0.5 s): not on the loop
        await asyncio.get_running_loop().run_in_executor(None, _close_server, server, thread)
        logger.info("metrics endpoint closed")


def _close_server(server: WSGIServer, thread: threading.Thread | None) -> None:
    server.shutdown()
    server.server_close()
    if thread is not None:
        thread.join()
