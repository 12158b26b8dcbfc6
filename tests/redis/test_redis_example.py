"""The quickstart as two processes on Redis, as the README tells it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.core.test_cli import Running

pytestmark = pytest.mark.slow
QUICKSTART = ROOT / "examples" / "quickstart"


def test_worker_and_client_processes_talk_over_redis(redis_url):
    env = {"BUS_CONFIG": "redis.yaml", "REDIS_URL": redis_url}
    worker = Running(["run"], cwd=QUICKSTART, env=env)
    worker.wait_for("serving APIs [auth]")
    client = subprocess.run([sys.executable, "client.py"], cwd=QUICKSTART, capture_output=True,
                            text=True, timeout=60, env={**os.environ, **env})
    assert client.returncode == 0, client.stderr
    assert "check_password(username='admin', password='secret') -> True" in client.stdout
    worker.wait_for("welcome grace <grace@example.com>")
    assert worker.stop(signal.SIGTERM) == 0


def test_the_quickstart_on_sentinel_carries_on_through_a_failover(tmp_path):
    """examples/quickstart/sentinel.yaml: worker and client processes through a Sentinel set;
    the master is killed, a replica promoted, and the same worker (no restart) serves the
    client's next run, events confirmed by a replica (min_replicas: 1)."""
    from tests.redis.topology import SentinelSet

    sentinels = SentinelSet(tmp_path, replica_count=2).start()
    env = {"BUS_CONFIG": "sentinel.yaml", "SENTINEL_URL": sentinels.url()}
    worker = Running(["run"], cwd=QUICKSTART, env=env)
    try:
        worker.wait_for("serving APIs [auth]")

        def client() -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "client.py"], cwd=QUICKSTART,
                                  capture_output=True, text=True, timeout=60,
                                  env={**os.environ, **env})

        first = client()
        assert first.returncode == 0, first.stderr
        assert "password='secret') -> True" in first.stdout
        worker.wait_for("welcome grace <grace@example.com>")
        old = sentinels.kill_master()
        sentinels.wait_failover(old.port)
        for _ in range(20):  # the worker's links find the new master on their next try
            again = client()
            if again.returncode == 0:
                break
        assert again.returncode == 0, again.stderr
        assert "password='secret') -> True" in again.stdout
        worker.wait_for("welcome grace <grace@example.com>")
        assert worker.stop(signal.SIGTERM) == 0
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
        sentinels.stop()
