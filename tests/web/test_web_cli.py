"""`bus web` as a user starts it: what it prints, users from the config, the warning when it
listens beyond loopback, and a clean stop on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from bus_web.commands import is_loopback

TOKEN = "a-token-of-alice-0123456789"


def start(folder: Path, *args: str, env: dict[str, str] | None = None
          ) -> tuple[subprocess.Popen[str], list[str]]:
    """`bus web ARGS` in `folder` (no bus module); the process and its first two lines."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bus_core.cli", "web", *args], cwd=folder,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    lines = [process.stdout.readline(), process.stdout.readline()]
    return process, lines


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(15)
    finally:
        if process.poll() is None:
            process.kill()


def test_users_from_the_config_and_no_token_printed(tmp_path: Path) -> None:
    (tmp_path / "bus.yaml").write_text(
        'plugins:\n  web:\n    users: {alice: "${ALICE_TOKEN}"}\n    allow_writes: true\n')
    process, lines = start(tmp_path, "-c", "bus.yaml", env={"ALICE_TOKEN": TOKEN})
    try:
        match = re.match(r"bus web: the console is at (http://127\.0\.0\.1:\d+/) "
                         r"\(writes allowed\)", lines[0])
        assert match, lines
        assert lines[1] == "bus web: log in with your token (users: alice)\n"
        url = match.group(1)
        ok = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and "alice" in ok.text
        assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 303
    finally:
        assert stop(process) == 0
    assert TOKEN not in process.stdout.read() + process.stderr.read()


def test_a_fresh_token_is_printed_and_works_once_logged_in(tmp_path: Path) -> None:
    process, lines = start(tmp_path, "--port", "0")
    try:
        assert "(read-only)" in lines[0]
        url, token = re.search(r"(http://\S+/)\?token=(\S+)", lines[1]).groups()
        with httpx.Client(base_url=url) as client:
            assert client.get("/").status_code == 303  # no user yet
            assert client.get(f"/?token={token}").status_code == 303
            assert client.get("/").status_code == 200  # the session cookie
    finally:
        assert stop(process) == 0


def test_listening_beyond_loopback_warns(tmp_path: Path) -> None:
    process, lines = start(tmp_path, "--host", "0.0.0.0")
    try:
        assert "http://0.0.0.0:" in lines[0]
        assert process.stderr is not None
        warning = process.stderr.readline()
        assert warning.startswith("bus web: WARNING: listening on 0.0.0.0, not on loopback")
    finally:
        stop(process)


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "bus_core.cli", "web", "--port",
                                 str(port)], cwd=tmp_path, capture_output=True, text=True,
                                timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("10.0.0.5", False), ("example.org", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


BUS_MODULE = """
import bus_core
from bus_core import Api, Event, Parameter


class DemoApi(Api):
    happened = Event(parameters=[Parameter("what", str)])

    class Meta:
        name = "demo"


bus = bus_core.create(service_name="demo")
bus.client.register_api(DemoApi())
"""


def test_writes_are_logged_with_the_user_by_default(tmp_path: Path) -> None:
    """The audit trail needs no `-l INFO`: a write is logged with who made it."""
    (tmp_path / "bus.py").write_text(BUS_MODULE)
    (tmp_path / "bus.yaml").write_text(
        'plugins:\n  web:\n    users: {alice: "${ALICE_TOKEN}"}\n    allow_writes: true\n')
    process, lines = start(tmp_path, "-c", "bus.yaml", env={"ALICE_TOKEN": TOKEN})
    try:
        url = re.match(r"bus web: the console is at (\S+) ", lines[0]).group(1)
        fired = httpx.post(f"{url}api/fire/demo/happened", json={"kwargs": {"what": "x"}},
                           headers={"Authorization": f"Bearer {TOKEN}"})
        assert fired.status_code == 200, fired.text
    finally:
        assert stop(process) == 0
    assert process.stderr is not None
    errors = process.stderr.read()
    assert "alice (bus web, from 127.0.0.1) fires demo.happened" in errors, errors
    assert TOKEN not in errors
