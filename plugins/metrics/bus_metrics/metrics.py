"""The metrics of one bus client: a `CollectorRegistry` of its own, the metric families, the
label children cached per (API, name), the HTTP endpoint and the listener-lag refresher."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from bus_core import RpcTimeout
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


class BusMetrics:
    """The Prometheus metrics of one bus client (two clients in a process never share any).

    The per-message methods look their label children up in plain dicts keyed by
    (API, name[, listener]) and call `.labels()` only the first time a key is seen."""

    def __init__(self, client: BusClient, options: Mapping[str, Any] | None = None) -> None:
        settings = {**DEFAULTS, **(options or {})}
        self.client = client
        self.service_name = client.service_name
        self.prefix: str = settings["prefix"]
        self.host: str = settings["host"]
        self.port: int = int(settings["port"])
        self.lag_interval: float = float(settings["lag_interval"])
        self.registry = CollectorRegistry(auto_describe=True)
        buckets = tuple(float(b) for b in settings["buckets"])
        p, reg = self.prefix, self.registry
        self.events_fired = Counter(f"{p}events_fired", "Events accepted by the event "
                                    "transport", EVENT_LABELS, registry=reg)
        self.event_fire_errors = Counter(f"{p}event_fire_errors", "Events the event transport "
                                         "did not accept (fire raised)", EVENT_LABELS,
                                         registry=reg)
        self.events_processed = Counter(f"{p}events_processed", "Events a listener's handler "
                                        "ran for, successfully or not", LISTENER_LABELS,
                                        registry=reg)
        self.event_handling_seconds = Histogram(f"{p}event_handling_seconds", "Seconds a "
                                                "listener's handler took", LISTENER_LABELS,
                                                registry=reg, buckets=buckets)
        self.listener_errors = Counter(f"{p}listener_errors", "Events whose handler raised "
                                       "(or that were refused before it ran)", LISTENER_LABELS,
                                       registry=reg)
        self.dead_letters = Counter(f"{p}dead_letters", "Events a listener gave up on and "
                                    "dead-lettered", LISTENER_LABELS, registry=reg)
        self.listener_lag = Gauge(f"{p}listener_lag_events", "Events of the listener's "
                                  "consumer group not yet acknowledged (unread + pending)",
                                  LISTENER_LABELS, registry=reg)
        self.rpcs_called = Counter(f"{p}rpcs_called", "RPC calls made (every outcome)",
                                   RPC_LABELS, registry=reg)
        self.rpcs_processed = Counter(f"{p}rpcs_processed", "RPC calls a worker executed "
                                      "(every outcome)", RPC_LABELS, registry=reg)
        self.rpc_seconds = Histogram(f"{p}rpc_seconds", "RPC duration: caller side from send "
                                     "to outcome, worker side the execution",
                                     (*RPC_LABELS, "side"), registry=reg, buckets=buckets)
        self.rpc_errors = Counter(f"{p}rpc_errors", "RPCs that failed (timeouts excluded: see "
                                  "rpc_timeouts)", (*RPC_LABELS, "side"), registry=reg)
        self.rpc_timeouts = Counter(f"{p}rpc_timeouts", "RPC calls that got no result in "
                                    "time", RPC_LABELS, registry=reg)
        # label children, per key; filled on first sight of a key
        self._fired: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._handled: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}
        self._called: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}
        self._executed: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        # the endpoint: one per client, shared by its running workers
        self._lock = threading.Lock()
        self._workers: set[Worker] = set()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._lag_tasks: dict[Worker, asyncio.Task[None]] = {}
        self._lag_unsupported: set[str] = set()

    # -- per message (sync, cheap) -------------------------------------------------------

    def _transport(self, kind: str, api_name: str) -> str:
        return self.client.config.api(api_name).transport(kind)[0]

    def event_fired(self, api_name: str, event_name: str, error: BaseException | None) -> None:
        """Count one fire (accepted, or refused when `error` is set)."""
        children = self._fired.get((api_name, event_name))
        if children is None:
            labels = (self.service_name, api_name, event_name,
                      self._transport("event", api_name))
            children = self._fired[(api_name, event_name)] = (
                self.events_fired.labels(*labels), self.event_fire_errors.labels(*labels))
        children[0 if error is None else 1].inc()

    def event_handled(self, api_name: str, event_name: str, listener_name: str,
                      error: BaseException | None, duration: float) -> None:
        """Count one handling of an event by a listener and observe its duration."""
        key = (api_name, event_name, listener_name)
        children = self._handled.get(key)
        if children is None:
            labels = self._listener_labels(*key)
            children = self._handled[key] = (
                self.events_processed.labels(*labels),
                self.event_handling_seconds.labels(*labels),
                self.listener_errors.labels(*labels))
        children[0].inc()
        children[1].observe(duration)
        if error is not None:
            children[2].inc()

    def dead_lettered(self, api_name: str, event_name: str, listener_name: str) -> None:
        """Count one event dead-lettered by a listener."""
        self.dead_letters.labels(*self._listener_labels(api_name, event_name,
                                                        listener_name)).inc()

    def rpc_called(self, api_name: str, procedure_name: str, error: BaseException | None,
                   duration: float) -> None:
        """Caller side: count one call and its outcome, observe its duration."""
        key = (api_name, procedure_name)
        children = self._called.get(key)
        if children is None:
            labels = (self.service_name, api_name, procedure_name,
                      self._transport("rpc", api_name))
            children = self._called[key] = (
                self.rpcs_called.labels(*labels),
                self.rpc_seconds.labels(*labels, "caller"),
                self.rpc_errors.labels(*labels, "caller"),
                self.rpc_timeouts.labels(*labels))
        children[0].inc()
        children[1].observe(duration)
        if error is not None:
            children[3 if isinstance(error, RpcTimeout) else 2].inc()

    def rpc_executed(self, api_name: str, procedure_name: str, error: BaseException | None,
                     duration: float) -> None:
        """Worker side: count one execution and its outcome, observe its duration."""
        key = (api_name, procedure_name)
        children = self._executed.get(key)
        if children is None:
            labels = (self.service_name, api_name, procedure_name,
                      self._transport("rpc", api_name))
            children = self._executed[key] = (
                self.rpcs_processed.labels(*labels),
                self.rpc_seconds.labels(*labels, "worker"),
                self.rpc_errors.labels(*labels, "worker"))
        children[0].inc()
        children[1].observe(duration)
        if error is not None:
            children[2].inc()

    def _listener_labels(self, api_name: str, event_name: str,
                         listener_name: str) -> tuple[str, ...]:
        return (self.service_name, api_name, event_name, listener_name,
                self._transport("event", api_name))

    # -- listener lag ----------------------------------------------------------------------

    async def refresh_lag(self, listener_names: Sequence[str]) -> None:
        """Ask the event transport how far each listener's consumer group is behind, for
        each event it listens to, and set the lag gauge."""
        state = await self.client.state()
        for listener_name in listener_names:
            listener = self.client.listeners.get(listener_name)
            if listener is None:
                continue
            for api_name, event_name in listener.listen_for:
                transport_name = self._transport("event", api_name)
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
                self.listener_lag.labels(*self._listener_labels(
                    api_name, event_name, listener_name)).set(lag)

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
