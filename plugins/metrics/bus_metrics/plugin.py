"""The `metrics` plugin: Prometheus metrics of events, RPCs, errors, listener lag and dead
letters, served over HTTP while a worker runs.

    plugins:
      metrics:
        enabled: true
        host: 127.0.0.1      # the address the endpoint listens on (0.0.0.0: every interface)
        port: 9464           # 0: pick a free port (the worker logs the URL)
        prefix: bus_         # of every metric name
        lag_interval: 15     # seconds between listener-lag refreshes (0: never)

Per-message hooks are plain functions: a dict look-up for the client's metrics, one for the
label children, and the increments.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from bus_core import EventMessage, hookimpl
from bus_metrics.metrics import DEFAULTS, BusMetrics

if TYPE_CHECKING:
    from bus_core.client import BusClient
    from bus_core.messages import RpcMessage
    from bus_core.worker import Worker

PLUGIN_NAME = "metrics"

# By id(client), dropped when the client is garbage-collected: cheaper per message than a
# WeakKeyDictionary (which makes a weak reference per look-up).
_by_client: dict[int, BusMetrics] = {}
_making = threading.Lock()


def metrics_for(client: BusClient) -> BusMetrics:
    """The metrics of `client` (made on first use, one per bus client)."""
    metrics = _by_client.get(id(client))
    if metrics is None:
        with _making:
            metrics = _by_client.get(id(client))
            if metrics is None:
                metrics = BusMetrics(client, client.config.plugin(PLUGIN_NAME))
                _by_client[id(client)] = metrics
                weakref.finalize(client, _by_client.pop, id(client), None)
    return metrics


def registry_for(client: BusClient) -> CollectorRegistry:
    """The `CollectorRegistry` holding `client`'s metrics (to serve or push it yourself)."""
    return metrics_for(client).registry


@hookimpl
def bus_plugin_config_schema() -> dict[str, Any]:
    return {
        "properties": {
            "host": {"type": "string", "default": DEFAULTS["host"],
                     "description": "address the metrics endpoint listens on "
                                    "(0.0.0.0 or :: for every interface)"},
            "port": {"type": "integer", "minimum": 0, "maximum": 65535,
                     "default": DEFAULTS["port"],
                     "description": "port of the metrics endpoint; 0 picks a free one "
                                    "(the worker logs the URL)"},
            "prefix": {"type": "string", "pattern": "^([a-zA-Z_:][a-zA-Z0-9_:]*)?$",
                       "default": DEFAULTS["prefix"],
                       "description": "prefix of every metric name"},
            "lag_interval": {"type": "number", "minimum": 0,
                             "default": DEFAULTS["lag_interval"],
                             "description": "seconds between refreshes of the listener lag "
                                            "gauge while a worker runs; 0 turns it off"},
            "buckets": {"type": "array", "minItems": 1,
                        "items": {"type": "number", "exclusiveMinimum": 0},
                        "default": DEFAULTS["buckets"],
                        "description": "upper bounds (seconds) of the duration histograms' "
                                       "buckets"},
        },
    }


# -- lifecycle ------------------------------------------------------------------------------


@hookimpl
async def bus_worker_started(client: BusClient, worker: Worker) -> None:
    await metrics_for(client).worker_started(worker)


@hookimpl
async def bus_worker_stopping(client: BusClient, worker: Worker) -> None:
    await metrics_for(client).worker_stopping(worker)


# -- message flow: plain functions, no coroutine per message ------------------------------


@hookimpl
def bus_after_event_fire(client: BusClient, message: EventMessage,
                         error: BaseException | None, duration: float) -> None:
    (_by_client.get(id(client)) or metrics_for(client)).event_fired(
        message.api_name, message.event_name, error)


@hookimpl
def bus_after_event_handling(client: BusClient, message: EventMessage, listener_name: str,
                             error: BaseException | None, duration: float) -> None:
    (_by_client.get(id(client)) or metrics_for(client)).event_handled(
        message.api_name, message.event_name, listener_name, error, duration)


@hookimpl
def bus_on_handler_error(client: BusClient, message: RpcMessage | EventMessage,
                         listener_name: str | None, error: BaseException, action: str) -> None:
    if listener_name is not None and isinstance(message, EventMessage):
        metrics_for(client).handler_failed(message.api_name, message.event_name,
                                           listener_name, action)


@hookimpl
def bus_on_undeclared_parameters(client: BusClient, message: EventMessage, listener_name: str,
                                 parameter_names: list[str]) -> None:
    metrics_for(client).undeclared_parameters(message.api_name, message.event_name,
                                              listener_name)


@hookimpl
def bus_after_rpc_call(client: BusClient, message: RpcMessage, result: Any,
                       error: BaseException | None, duration: float) -> None:
    (_by_client.get(id(client)) or metrics_for(client)).rpc_called(
        message.api_name, message.procedure_name, error, duration)


@hookimpl
def bus_after_rpc_execution(client: BusClient, message: RpcMessage, result: Any,
                            error: BaseException | None, duration: float) -> None:
    (_by_client.get(id(client)) or metrics_for(client)).rpc_executed(
        message.api_name, message.procedure_name, error, duration)
