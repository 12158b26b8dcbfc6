"""The state plugin on Redis: announcements are ordinary Lightbus-shaped stream entries, and
`bus state` (a subprocess, as a user runs it) sees a `bus run` worker come, and go after
SIGKILL (its pings stop) or SIGTERM (it says worker_stopped)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from bus_state import read_workers

from bus_core import Bus
from bus_core.cli import main
from tests.apis import AuthApi
from tests.core.test_cli import Running
from tests.helpers import serving, wait_until
from tests.redis.conftest import redis_config
from tests.state.conftest import with_state

BUS = [sys.executable, "-m", "bus_core.cli"]
INTERVAL = 0.5


async def test_announcements_are_lightbus_shaped_stream_entries(make_redis_bus, redis_url,
                                                                 raw: Any) -> None:
    bus: Bus = make_redis_bus(config=with_state(redis_config(redis_url)),
                              service_name="auth_service", process_name="auth-1")
    bus.client.register_api(AuthApi())
    async with serving(bus):
        (worker,) = await read_workers(bus.client, window=10)
        assert worker.alive and worker.api_names == ["auth"]
        groups_while_reading = raw.xinfo_groups("internal.state.*:stream")
    (worker,) = await read_workers(bus.client, window=10)
    await bus.client.close_async()
    assert worker.status == "stopped"
    assert groups_while_reading == []  # reading joins no consumer group
    entries = raw.xrange("internal.state.*:stream")
    assert [e[1][b"event_name"] for e in entries] == [b"worker_started", b"worker_stopped"]
    fields = entries[0][1]
    assert fields[b"api_name"] == b"internal.state" and fields[b"version"] == b"1"
    assert json.loads(fields[b":process_name"]) == "auth-1"
    assert json.loads(fields[b":api_names"]) == ["auth"]
    assert isinstance(json.loads(fields[b":timestamp"]), float)
    lightbus = {"process_name", "service_name", "metrics_enabled", "api_names",
                "listening_for", "timestamp", "ping_enabled", "ping_interval", "hostname",
                "pid", "max_memory_use"}
    assert lightbus <= {k.decode()[1:] for k in fields if k.startswith(b":")}


SERVICE = '''
import bus_core
from bus_core import Api


class PingApi(Api):
    class Meta:
        name = "pinger"

    def ping(self) -> str:
        return "pong"


bus = bus_core.create(service_name="pinger_service")
bus.client.register_api(PingApi())
'''


def write_project(folder: Path, redis_url: str) -> Path:
    transport = f"{{redis: {{url: '{redis_url}'}}}}"
    (folder / "bus.py").write_text(SERVICE)
    (folder / "bus.yaml").write_text(textwrap.dedent(f"""\
        bus:
          schema: {{transport: {transport}}}
        apis:
          default:
            rpc_transport: {transport}
            result_transport: {transport}
            event_transport: {transport}
        plugins:
          state: {{enabled: true, ping_interval: {INTERVAL}, grace: {INTERVAL}}}
        """))
    return folder


def state(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`bus state ARGS` as a subprocess, from a folder without the service's code."""
    return subprocess.run([*BUS, "state", "-c", str(folder / "bus.yaml"), *args],
                          cwd=folder / "elsewhere", capture_output=True, text=True, timeout=30)


class InProcess:
    """`bus state ARGS` through the CLI's main() in this process: the same code as the
    subprocess without its start-up cost, for polling."""

    def __init__(self, folder: Path, capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.config = str(folder / "bus.yaml")
        self.capsys = capsys
        monkeypatch.setenv("BUS_CONFIG", self.config)  # main() sets it; restored after
        monkeypatch.chdir(folder / "elsewhere")

    def __call__(self, *args: str) -> tuple[int, str]:
        self.capsys.readouterr()
        code = main(["state", "-c", self.config, *args])
        return code, self.capsys.readouterr().out

    def rows(self, *args: str) -> list[dict[str, Any]]:
        code, out = self("--json", *args)
        assert code == 0, out
        return json.loads(out)

    def status_of(self, pid: int) -> str | None:
        found = [row for row in self.rows("--all") if row["pid"] == pid]
        return found[0]["status"] if found else None


@pytest.fixture
def project(tmp_path: Path, redis_url: str) -> Path:
    folder = write_project(tmp_path, redis_url)
    (folder / "elsewhere").mkdir()
    return folder


@pytest.fixture
def bus_state(project: Path, capsys: pytest.CaptureFixture[str],
              monkeypatch: pytest.MonkeyPatch) -> InProcess:
    return InProcess(project, capsys, monkeypatch)


@pytest.mark.slow
def test_bus_state_sees_a_worker_and_sees_it_gone_after_sigkill(
        project: Path, bus_state: InProcess) -> None:
    assert bus_state("--check", "pinger_service")[0] == 1  # nobody yet
    worker = Running(["run", "-c", str(project / "bus.yaml")], cwd=project)
    try:
        worker.wait_for("serving APIs [pinger]")
        pid = worker.process.pid
        (row,) = bus_state.rows()  # worker_started is fired before "serving" is logged
        assert row["pid"] == pid and row["status"] == "alive"
        assert row["service_name"] == "pinger_service" and row["api_names"] == ["pinger"]
        assert row["bus_version"] and row["max_memory_use"] > 0
        table = state(project)  # the real command, as a user runs it
        assert table.returncode == 0, table.stderr
        (line,) = [line for line in table.stdout.splitlines() if str(pid) in line]
        assert line.startswith("pinger_service ") and line.endswith(" alive")
        wait_until(lambda: bus_state.rows()[0]["uptime"] > 0, "a ping")  # pings come
        assert bus_state("--check", "pinger_service")[0] == 0
        assert bus_state("--check", "other_service")[0] == 1

        worker.process.kill()  # SIGKILL: no worker_stopped, the pings just stop
        worker.process.wait(10)
        killed = time.monotonic()
        wait_until(lambda: bus_state.status_of(pid) == "gone", "the killed worker to be gone")
        assert time.monotonic() - killed < 4 * INTERVAL + 1  # interval + grace, plus slack
        assert bus_state.rows() == []  # not live: only --all shows it
        check = state(project, "--check", "pinger_service")
        assert check.returncode == 1 and "no live process" in check.stdout, check
    finally:
        if worker.process.poll() is None:
            worker.process.kill()


@pytest.mark.slow
def test_bus_state_shows_a_worker_stopped_at_once_after_sigterm(
        project: Path, bus_state: InProcess) -> None:
    worker = Running(["run", "-c", str(project / "bus.yaml")], cwd=project)
    worker.wait_for("serving APIs [pinger]")
    pid = worker.process.pid
    assert bus_state.status_of(pid) == "alive"
    assert bus_state("--check", "pinger_service")[0] == 0
    assert worker.stop(signal.SIGTERM) == 0
    assert bus_state.status_of(pid) == "stopped"  # no waiting: it said worker_stopped
    assert bus_state("--check", "pinger_service")[0] == 1
    result = state(project, "--all", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["pid"] == pid and row["status"] == "stopped" and row["stopped_at"]


def test_bus_state_watch_refreshes_count_times(bus_state: InProcess) -> None:
    code, out = bus_state("--watch", "0.01", "--count", "3")
    assert code == 0
    assert out.count("no live workers announced themselves") == 3
    assert out.count("Ctrl-C to stop") == 3
    code, out = bus_state("--watch", "0.01", "--count", "2", "--json")
    assert [json.loads(line) for line in out.splitlines()] == [[], []]  # JSON lines
    assert bus_state("--check", "x", "--watch")[0] == 1
    assert bus_state("--count", "2")[0] == 1
    with pytest.raises(SystemExit):
        bus_state("--watch", "0")


def test_bus_state_groups_shows_idle_consumers_and_what_they_hold(
        bus_state: InProcess, raw: Any) -> None:
    stream = "internal.state.*:stream"  # a stream of an API every bus here knows
    raw.xgroup_create(stream, "monitor-watch", id="0", mkstream=True)
    raw.xadd(stream, {"": ""})
    raw.xadd(stream, {"": ""})
    raw.xreadgroup("monitor-watch", "gone-process", {stream: ">"}, count=2)  # then died
    time.sleep(0.2)  # the consumer's idle time is what is measured
    raw.xadd(stream, {"": ""})  # one more, not yet read by the group
    rows = bus_state.rows("--groups", "--idle-after", "0.1")
    (group,) = [row for row in rows if row["group"] == "monitor-watch"]
    assert group["stream"] == stream
    assert (group["idle_consumers"], group["held_by_idle"]) == (1, 2)
    assert (group["pending"], group["unread"]) == (2, 1)
    assert [c["name"] for c in group["consumers"]] == ["gone-process"]
    code, table = bus_state("--groups", "--idle-after", "0.1")
    assert code == 0
    (line,) = [line for line in table.splitlines() if line.startswith("monitor-watch")]
    assert line.split() == ["monitor-watch", stream, "1", "1", "2", "2", "1"]
    assert bus_state.rows("--groups", "--idle-after", "3600")[0]["idle_consumers"] == 0
