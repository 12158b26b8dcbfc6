"""Real Redis topologies for the tests: a Sentinel set (a master, its replicas and three
sentinels) and a Redis Cluster, each made of redis-server processes on free loopback ports
that the test owns and stops. Sentinels run as `redis-server <conf> --sentinel` (the Debian
package `redis-sentinel` only adds a `redis-sentinel` symlink to that binary)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.redis.conftest import RedisServer, free_port, stop_process

MASTER_NAME = "mymaster"


def wait_for(check: Any, what: str, timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll `check()` until it returns something truthy (state in other processes)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (redis.exceptions.RedisError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}; last: {last!r}")
        time.sleep(interval)


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    return client.info(section)


@dataclass
class SentinelProcess:
    """One sentinel: `redis-server sentinel.conf --sentinel` (it rewrites its own conf)."""

    port: int
    folder: Path
    monitor: tuple[str, int]
    master_name: str = MASTER_NAME
    down_after_ms: int = 500
    failover_timeout_ms: int = 2000
    password: str | None = None  # the sentinel's own (requirepass)
    master_password: str | None = None  # what it sends to the master and replicas
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "sentinel.conf"
        host, port = self.monitor
        name = self.master_name
        conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", "protected-mode no",
            f"dir {self.folder}", f"logfile {self.folder / 'sentinel.log'}",
            f"sentinel monitor {name} {host} {port} 2",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
            *([f"requirepass {self.password}"] if self.password else []),
            *([f"sentinel auth-pass {name} {self.master_password}"]
              if self.master_password else []),
            "",
        ]))
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `apt-get install redis-server`")
        self.process = subprocess.Popen([binary, str(conf), "--sentinel"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with self.client(socket_connect_timeout=0.2) as client:
            wait_for(client.ping, f"sentinel on port {self.port}", timeout=10)

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True,
                           password=self.password, **options)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


@dataclass
class SentinelSet:
    """A master, `replica_count` replicas and three sentinels watching them (quorum 2)."""

    folder: Path
    replica_count: int = 1
    sentinel_count: int = 3
    master_name: str = MASTER_NAME
    down_after_ms: int = 500
    failover_timeout_ms: int = 2000
    password: str | None = None  # requirepass of the master and replicas
    sentinel_password: str | None = None  # requirepass of the sentinels
    master: RedisServer | None = None
    replicas: list[RedisServer] = field(default_factory=list)
    sentinels: list[SentinelProcess] = field(default_factory=list)

    def url(self, db: int = 0, query: str = "") -> str:
        """The redis+sentinel:// URL of this set, with its passwords."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        auth = f":{self.password}@" if self.password else ""
        if self.sentinel_password:
            query = "&".join(filter(None, [f"sentinel_password={self.sentinel_password}",
                                           query]))
        return (f"redis+sentinel://{auth}{hosts}/{self.master_name}/{db}"
                + (f"?{query}" if query else ""))

    def data_client(self, server: RedisServer, **options: Any) -> redis.Redis:
        return server.client(**options)

    def start(self) -> SentinelSet:
        # No 5 s wait before a full sync (the default delay gathers replicas for one RDB).
        fast_sync: tuple[str, ...] = ("--repl-diskless-sync-delay", "0")
        self.master = RedisServer(free_port(), self._dir("master"), extra=fast_sync,
                                  password=self.password)
        self.master.start()
        for n in range(self.replica_count):
            replica = RedisServer(free_port(), self._dir(f"replica{n}"),
                                  extra=(*fast_sync, "--replicaof", "127.0.0.1",
                                         str(self.master.port)), password=self.password)
            replica.start()
            self.replicas.append(replica)
        self.wait_replicated(self.master, self.replica_count)
        for n in range(self.sentinel_count):
            sentinel = SentinelProcess(free_port(), self._dir(f"sentinel{n}"),
                                       ("127.0.0.1", self.master.port), self.master_name,
                                       self.down_after_ms, self.failover_timeout_ms,
                                       self.sentinel_password, self.password)
            sentinel.start()
            self.sentinels.append(sentinel)
        self.wait_settled()
        return self

    def _dir(self, name: str) -> Path:
        path = self.folder / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def wait_replicated(self, master: RedisServer, count: int) -> None:
        """Until `master` has `count` replicas online."""
        with self.data_client(master) as client:
            wait_for(lambda: _info(client, "replication").get("connected_slaves", 0) >= count
                     and all(_info(client, "replication").get(f"slave{n}", {}).get("state")
                             == "online" for n in range(count)),
                     f"{count} replica(s) online on port {master.port}")

    def wait_settled(self, timeout: float = 15.0) -> None:
        """Until every sentinel sees the master, its replicas and the other sentinels (they
        find each other through hello messages every 2 s: needed for a quorum)."""
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                def ready(client: redis.Redis = client) -> bool:
                    state = client.sentinel_master(self.master_name)
                    return (int(state["num-other-sentinels"]) >= self.sentinel_count - 1
                            and int(state["num-slaves"]) >= len(self.replicas))
                wait_for(ready, f"sentinel {sentinel.port} to see the whole set", timeout)

    def master_address(self) -> tuple[str, int]:
        """Where the sentinels say the master is now (from the first that answers)."""
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            try:
                with sentinel.client(socket_timeout=1) as client:
                    host, port = client.sentinel_get_master_addr_by_name(self.master_name)
                    return host, int(port)
            except redis.exceptions.RedisError:
                continue
        raise AssertionError("no sentinel answers")

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master (no shutdown, no last sync): a crash."""
        _, port = self.master_address()
        victim = next(s for s in [self.master, *self.replicas]
                      if s is not None and s.port == port)
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        victim.process = None
        return victim

    def wait_failover(self, old_port: int, timeout: float = 20.0) -> tuple[str, int]:
        """Until the sentinels name a master other than `old_port` and it accepts writes."""
        def promoted() -> tuple[str, int] | None:
            host, port = self.master_address()
            if port == old_port:
                return None
            with redis.Redis(host=host, port=port, socket_timeout=1,
                             password=self.password) as client:
                if _info(client, "replication").get("role") != "master":
                    return None
            return host, port
        return wait_for(promoted, "the sentinels to promote a replica", timeout)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in [*self.replicas, self.master]:
            if server is not None:
                server.stop()


@dataclass
class RedisClusterSet:
    """`masters` cluster nodes (with `replicas_per_master` replicas each), made into one
    cluster by `redis-cli --cluster create`. Each node's cluster bus port is chosen free
    too (`--cluster-port`), not port + 10000, which may be taken or past 65535."""

    folder: Path
    masters: int = 3
    replicas_per_master: int = 0
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/"

    def start(self) -> RedisClusterSet:
        for n in range(self.masters * (1 + self.replicas_per_master)):
            folder = self.folder / f"node{n}"
            folder.mkdir(parents=True, exist_ok=True)
            node = RedisServer(free_port(), folder, extra=(
                "--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf"),
                "--cluster-port", str(free_port()), "--cluster-node-timeout", "2000",
                # no 5 s wait before a replica's first full sync: a replica that never
                # synced cannot be promoted
                "--repl-diskless-sync-delay", "0"))
            node.start()
            self.nodes.append(node)
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not installed: `apt-get install redis-tools`")
        created = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if created.returncode != 0:
            pytest.fail(f"redis-cli --cluster create failed:\n{created.stdout}\n"
                        f"{created.stderr}")
        for node in self.nodes:
            with node.client() as client:
                wait_for(lambda client=client: client.cluster("info")
                         .get("cluster_state") == "ok",
                         f"cluster node {node.port} to report cluster_state:ok")
        if self.replicas_per_master:
            self.wait_replicated()
        return self

    def masters_now(self) -> list[RedisServer]:
        """The running nodes that are masters now."""
        masters = []
        for node in self.nodes:
            if node.process is None:
                continue
            with node.client() as client:
                if _info(client, "replication").get("role") == "master":
                    masters.append(node)
        return masters

    def wait_replicated(self, timeout: float = 20.0) -> None:
        """Until every master has its replicas attached and in sync (only a replica that
        synced can be promoted when its master fails)."""
        def synced() -> bool:
            masters = self.masters_now()
            if len(masters) != self.masters:
                return False
            for master in masters:
                with master.client() as client:
                    info = _info(client, "replication")
                    if info.get("connected_slaves", 0) < self.replicas_per_master or not all(
                            info.get(f"slave{n}", {}).get("state") == "online"
                            for n in range(self.replicas_per_master)):
                        return False
            return True
        wait_for(synced, "every cluster master's replicas to be in sync", timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
