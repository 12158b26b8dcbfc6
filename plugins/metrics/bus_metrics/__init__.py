"""bus-metrics: Prometheus metrics for a Bus client (events, RPCs, errors, listener lag,
dead letters), served over HTTP while a worker runs."""

from bus_metrics.metrics import BusMetrics

__all__ = ["BusMetrics"]
