"""Counters and gauges of one bus client's outbox and inbox, kept by the relay and the inbox
wrappers, read by `bus_outbox.stats_for(client)` and exported to Prometheus when bus-metrics
is enabled (a collector in bus-metrics' registry of the client)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bus_core.client import BusClient


@dataclass
class OutboxStats:
    """What this process saw. Gauges are as of the last relay heartbeat (None before one)."""

    published: int = 0
    failed: int = 0
    publish_errors: int = 0
    backlog: int | None = None
    oldest_unsent_age: float | None = None
    relays_alive: int | None = None
    processed: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def handled(self, listener_name: str, duplicate: bool) -> None:
        table = self.duplicates if duplicate else self.processed
        with self.lock:
            table[listener_name] = table.get(listener_name, 0) + 1


_by_client: dict[int, OutboxStats] = {}
_making = threading.Lock()


def stats_for(client: BusClient) -> OutboxStats:
    """The outbox and inbox counters of `client` (one set per bus client)."""
    stats = _by_client.get(id(client))
    if stats is None:
        with _making:
            stats = _by_client.get(id(client))
            if stats is None:
                stats = _by_client[id(client)] = OutboxStats()
                weakref.finalize(client, _by_client.pop, id(client), None)
    return stats


class OutboxCollector:
    """A prometheus-client collector of one client's `OutboxStats`."""

    def __init__(self, stats: OutboxStats, prefix: str, service_name: str) -> None:
        self.stats = stats
        self.prefix = prefix
        self.service_name = service_name

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        p, s, service = self.prefix, self.stats, self.service_name
        for name, doc, value in (
                ("outbox_published", "outbox rows this process's relay published", s.published),
                ("outbox_failed", "outbox rows that could never be published (kept, with "
                                  "their error)", s.failed),
                ("outbox_publish_errors", "relay rounds that failed on the event transport "
                                          "or the database", s.publish_errors)):
            counter = CounterMetricFamily(p + name, doc, labels=["service_name"])
            counter.add_metric([service], value)
            yield counter
        for name, doc, gauge_value in (
                ("outbox_backlog", "unsent outbox rows (as of the last relay heartbeat)",
                 s.backlog),
                ("outbox_oldest_unsent_seconds", "age of the oldest unsent outbox row (0: "
                                                 "none)", s.oldest_unsent_age),
                ("outbox_relays_alive", "relays with a recent heartbeat", s.relays_alive)):
            if gauge_value is None:
                continue
            gauge = GaugeMetricFamily(p + name, doc, labels=["service_name"])
            gauge.add_metric([service], float(gauge_value))
            yield gauge
        with s.lock:
            tables = (("inbox_processed", "events a transactional listener handled",
                       dict(s.processed)),
                      ("inbox_duplicates", "events a transactional listener had already "
                                           "handled, acknowledged without running",
                       dict(s.duplicates)))
        for name, doc, table in tables:
            counter = CounterMetricFamily(p + name, doc, labels=["service_name", "listener_name"])
            for listener_name, count in sorted(table.items()):
                counter.add_metric([service, listener_name], count)
            yield counter
