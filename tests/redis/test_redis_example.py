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
