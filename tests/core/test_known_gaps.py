"""Behaviours a user relies on that no other test pinned down: `bus run`'s exit status when
a listener stops the worker, and an environment variable that is set winning over the
`:-default` written beside it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bus_core.config import substitute_env

STOPPING_SERVICE = '''
import bus_core
from bus_core import Api, Event

class JobsApi(Api):
    done = Event(parameters=("n",))

    class Meta:
        name = "jobs"

bus = bus_core.create(service_name="jobs")
bus.client.register_api(JobsApi())

def broken(event, n):
    print(f"handler failed on {n}", flush=True)
    raise RuntimeError("cannot go on")

bus.jobs.done.listen(broken, listener_name="broken", on_error="stop")

@bus.client.every(seconds=0.1)
async def fire_one():
    await bus.jobs.done.fire_async(n=1)
'''


@pytest.mark.slow
def test_bus_run_exits_1_after_a_stop_listener_stopped_the_worker(tmp_path: Path) -> None:
    (tmp_path / "bus.py").write_text(textwrap.dedent(STOPPING_SERVICE))
    result = subprocess.run([sys.executable, "-m", "bus_core.cli", "run"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    assert "handler failed on 1" in output, output
    assert "on_error='stop' failed: RuntimeError: cannot go on" in output
    assert result.returncode == 1, output


@pytest.mark.parametrize(("text", "environ", "expected"), [
    ("${PORT:-6379}", {"PORT": "7000"}, 7000),
    ("${PORT:-6379}", {"PORT": ""}, ""),  # set, though empty: still the variable's value
    ("${PORT:-6379}", {}, 6379),
    ("redis://${HOST:-localhost}:${PORT:-1}/0", {"HOST": "cache", "PORT": "2"},
     "redis://cache:2/0"),
    ("${A:-x}-${B:-y}", {"B": "set"}, "x-set"),
])
def test_a_set_variable_wins_over_its_default(text: str, environ: dict[str, str],
                                              expected: object) -> None:
    assert substitute_env({"value": text}, environ)["value"] == expected
