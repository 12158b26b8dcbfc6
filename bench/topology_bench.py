"""Topology benchmark: Bus on Sentinel and on a Redis Cluster, next to Bus on one Redis node,
in the same run.

The rows are redis_bench.py's Bus rows (events awaited and batched, RPC sequential p50 and
CONCURRENCY in flight), run by the same role processes (bench/redis_roles.py). Each
topology's roles and the single node's roles are alive at once and their runs alternate
(single, topology, topology, single, ...), so the ratio `topology / single` is what the
topology costs, measured in one run on one machine.

- Sentinel: a master, one replica and three sentinels; Bus connects with
  `redis+sentinel://` (the client asks a sentinel for the master, then talks to it directly).
- Cluster: three masters, no replicas; Bus connects with `redis+cluster://`. On one 2-CPU
  machine three masters compete for the same cores as the bus processes, so this row shows
  the cluster client's overhead, not scaling.

    python bench/topology_bench.py            # ~2 min
    python bench/topology_bench.py --quick    # ~30 s, rough figures
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis_bench
import redis_roles
from redis_bench import Row, Run, Sizes, compare, event_run, median_rate, roles, rpc_run
from tables import HEADER, format_table, legend

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test suite's topology starters

from tests.redis.topology import RedisClusterSet, SentinelSet  # noqa: E402


@contextlib.contextmanager
def sentinel() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-sentinel-") as folder:
        topology = SentinelSet(Path(folder)).start()
        try:
            yield topology.url()
        finally:
            topology.stop()


@contextlib.contextmanager
def cluster() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as folder:
        topology = RedisClusterSet(Path(folder)).start()
        try:
            yield topology.url
        finally:
            topology.stop()


TOPOLOGIES: dict[str, Callable[[], contextlib.AbstractContextManager[str]]] = {
    "sentinel": sentinel, "cluster": cluster}


def topology_rows(name: str, single_url: str, url: str, sizes: Sizes) -> list[Row]:
    """The four Bus rows on `url`, each against the same row on the single node."""
    phases = [["bus_consumer", "bus_worker"], ["bus_producer", "bus_caller"]]
    rows: list[Row] = []
    with roles(phases, single_url, None) as one, roles(phases, url, None) as other:
        everyone = [*one.values(), *other.values()]
        for mode, n in (("awaited", sizes.events_awaited), ("batched", sizes.events_batched)):
            single_runs, topo_runs = compare(
                sizes, n, f"{name}_events_{mode}",
                lambda k, m=mode: event_run(one["bus_producer"], one["bus_consumer"], m, k),
                lambda k, m=mode: event_run(other["bus_producer"], other["bus_consumer"], m,
                                            k),
                everyone)
            rows.append(Row(f"{name}: events, {mode} fire_async", median_rate(n, topo_runs),
                            median_rate(n, single_runs), "S"))
        n = sizes.rpc_sequential
        single_runs, topo_runs = compare(
            sizes, n, f"{name}_rpc_seq",
            lambda k: rpc_run(one["bus_caller"], one["bus_worker"], "seq", k),
            lambda k: rpc_run(other["bus_caller"], other["bus_worker"], "seq", k), everyone)

        def p50(runs: list[Run]) -> float:
            return statistics.median(redis_roles.percentile(r.latencies, 0.5) for r in runs)

        rows.append(Row(f"{name}: RPC sequential, 1/p50", 1 / p50(topo_runs),
                        1 / p50(single_runs), "S",
                        note=f"p50 us: {name} {p50(topo_runs) * 1e6:,.0f}, single "
                             f"{p50(single_runs) * 1e6:,.0f}"))
        n = sizes.rpc_many
        single_runs, topo_runs = compare(
            sizes, n, f"{name}_rpc_many",
            lambda k: rpc_run(one["bus_caller"], one["bus_worker"], "many", k),
            lambda k: rpc_run(other["bus_caller"], other["bus_worker"], "many", k), everyone)
        rows.append(Row(f"{name}: RPC, {redis_roles.CONCURRENCY} in flight",
                        median_rate(n, topo_runs), median_rate(n, single_runs), "S"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bus on Sentinel and Cluster vs one node.")
    parser.add_argument("--quick", action="store_true", help="small counts, rough figures")
    parser.add_argument("--only", choices=sorted(TOPOLOGIES), help="one topology")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    started = time.perf_counter()
    rows: list[Row] = []
    failed: list[str] = []
    with redis_bench.redis_server() as (single_url, version):
        for name, start in TOPOLOGIES.items():
            if args.only and name != args.only:
                continue
            try:
                with start() as url:
                    rows += topology_rows(name, single_url, url, sizes)
            except Exception as exc:  # a topology that cannot run is reported, not fatal
                failed.append(f"  {name}: did not run ({type(exc).__name__}: {exc})")
    body = [row.cells() for row in rows]
    print(f"topology_bench{' --quick' if args.quick else ''}: Python "
          f"{platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU(s), "
          f"redis-server {version}; median of {sizes.repeats} run(s) per figure, single node "
          f"and topology alternating; {time.perf_counter() - started:.1f}s in all\n")
    print("\n".join(format_table(HEADER, body, left=(0, 7))))
    print("\n".join(legend({"S": "the same Bus roles on one redis-server node, same run "
                                 "(the bus/base column is topology / single node)"})))
    notes = [f"  {row.case}: {row.note}" for row in rows if row.note]
    print("\n".join(["", *notes, *failed]) if notes or failed else "", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
