"""The `bus` command, run as a subprocess the way a user runs it."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import ROOT
from tests.core.test_plugins import fake_distribution

pytestmark = pytest.mark.slow
BUS = [sys.executable, "-m", "bus_core.cli"]


def bus(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*BUS, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


class Running:
    """A `bus run` process whose output lines can be awaited one by one."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*BUS, *args], cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 20) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                self.process.kill()
                raise AssertionError(f"never printed {text!r}; output so far:\n"
                                     + "\n".join(self.seen)) from None
            self.seen.append(line)
            if text in line:
                return line

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=timeout)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code


SERVICE = '''
import asyncio
import time
import bus_core
from bus_core import Api, Event

class EchoApi(Api):
    said = Event(parameters=("text",))

    class Meta:
        name = "echo"

    async def say(self, text: str) -> str:
        return text.upper()

bus = bus_core.create(service_name="echo_service")
bus.client.register_api(EchoApi())

def on_said(event, text):
    print(f"heard {text}", flush=True)
    if text == "slow":
        time.sleep(1.0)
        print("slow handler finished", flush=True)

bus.echo.said.listen(on_said, listener_name="printer")

@bus.client.on_start
def started():
    print("on_start ran", flush=True)

@bus.client.on_stop
async def stopped():
    print("on_stop ran", flush=True)

@bus.client.every(seconds=60, also_run_immediately=True)
async def tick():
    answer = await bus.echo.say.call_async(text="hello")
    print(f"rpc answered {answer}", flush=True)
    await bus.echo.said.fire_async(text="{EVENT_TEXT}")
'''


def write_service(folder: Path, event_text: str = "hi") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bus.py").write_text(SERVICE.replace("{EVENT_TEXT}", event_text))
    return folder


def test_help_and_usage_errors():
    assert bus("--help").returncode == 0
    for args in (["run", "--help"], ["plugins", "list", "--help"], ["config", "check", "-h"]):
        result = bus(*args)
        assert result.returncode == 0 and "--config" in result.stdout, args
    assert bus().returncode == 2
    wrong = bus("frobnicate")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr
    assert bus("plugins", "list", "--colour").returncode == 2


def test_version():
    for args in (["version"], ["-V"], ["--version"]):
        result = bus(*args)
        assert result.returncode == 0 and result.stdout.startswith("bus 0.1.0"), args


def test_run_serves_rpcs_events_and_tasks_then_drains_on_sigterm(tmp_path):
    project = write_service(tmp_path / "svc", event_text="slow")
    worker = Running(["run"], cwd=project)
    worker.wait_for("on_start ran")
    worker.wait_for("rpc answered HELLO")
    worker.wait_for("heard slow")  # the handler now sleeps: SIGTERM arrives mid-handler
    code = worker.stop(signal.SIGTERM)
    output = "\n".join(worker.seen)
    assert code == 0, output
    assert output.index("slow handler finished") < output.index("on_stop ran")


def test_run_finds_the_first_bus_py_breadth_first(tmp_path):
    write_service(tmp_path / "a" / "b" / "deep")
    (tmp_path / "a" / "bus.py").write_text("print('shallow bus imported', flush=True)\n"
                                           + SERVICE.replace("{EVENT_TEXT}", "x"))
    worker = Running(["run", "--only", "tasks"], cwd=tmp_path)
    worker.wait_for("shallow bus imported")
    worker.wait_for("serving APIs")
    assert worker.stop(signal.SIGINT) == 0


def test_run_with_bus_option_and_env(tmp_path):
    write_service(tmp_path / "pkg")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    worker = Running(["run", "-b", "pkg.bus", "--skip", "tasks"], cwd=tmp_path)
    worker.wait_for("serving APIs [echo]")
    assert worker.stop() == 0
    worker = Running(["run", "--skip", "rpcs,tasks"], cwd=tmp_path,
                     env={"BUS_MODULE": "pkg.bus"})
    line = worker.wait_for("serving APIs")
    assert "serving APIs []" in line and "listeners [printer]" in line
    assert worker.stop() == 0


def test_run_without_a_bus_module_explains(tmp_path):
    result = bus("run", cwd=tmp_path)
    assert result.returncode == 1
    assert "no bus module found" in result.stderr and "bus.py" in result.stderr
    result = bus("run", "--bus", "no_such_module", cwd=tmp_path)
    assert result.returncode == 1 and "cannot import bus module 'no_such_module'" in result.stderr
    (tmp_path / "empty.py").write_text("x = 1\n")
    result = bus("run", "--bus", "empty", cwd=tmp_path)
    assert result.returncode == 1 and "creates no bus" in result.stderr


def test_a_bus_module_that_fails_to_import_is_reported_without_a_traceback(tmp_path):
    (tmp_path / "bus.py").write_text("import bus_core\nfrom missing_helpers import thing\n")
    result = bus("run", cwd=tmp_path)
    assert result.returncode == 1
    assert "importing bus module 'bus' failed: ModuleNotFoundError" in result.stderr
    assert "bus.py:2" in result.stderr and "Traceback" not in result.stderr


def test_common_options_work_at_every_level(tmp_path):
    config = tmp_path / "bus.yaml"
    config.write_text("plugins: {metrics: {enabled: true}}\n")
    for args in (["plugins", "-c", str(config), "list", "--json"],
                 ["plugins", "list", "--json", "--config", str(config)]):
        rows = {row["name"]: row for row in json.loads(bus(*args).stdout)}
        assert rows["metrics"]["enabled"] is True, args


def test_run_rejects_unknown_features(tmp_path):
    result = bus("run", "--only", "rpcs,emails", cwd=write_service(tmp_path / "s"))
    assert result.returncode == 1 and "unknown feature 'emails'" in result.stderr


def test_plugins_list_table_json_and_all():
    table = bus("plugins", "list")
    assert table.returncode == 0
    assert "memory" in table.stdout and "bus-memory" in table.stdout
    assert "json " not in table.stdout  # built-ins only with --all
    rows = json.loads(bus("plugins", "list", "--all", "--json").stdout)
    by_name = {row["name"]: row for row in rows}
    assert by_name["json"]["builtin"] and by_name["json"]["distribution"] == "bus-core"
    assert by_name["memory"]["enabled"] is True  # the default config selects it
    assert by_name["memory"]["hooks"] == ["bus_register_transports"]


def test_plugins_list_reflects_the_config_and_survives_broken_plugins(tmp_path):
    fake_distribution(tmp_path, "bus-broken", {"broken": "bus_broken"},
                      {"bus_broken": "raise RuntimeError('half installed')\n"})
    config = tmp_path / "bus.yaml"
    config.write_text("plugins: {metrics: {enabled: true}}\n")
    result = bus("plugins", "list", "--json", "-c", str(config),
                 env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["metrics"]["enabled"] is True
    assert rows["broken"]["status"] == "failed" and "half installed" in rows["broken"]["error"]
    assert "bus-broken failed to import" in result.stderr


def test_plugin_subcommands_are_added_through_the_hook(tmp_path):
    fake_distribution(tmp_path, "bus-greeter", {"greeter": "bus_greeter"}, {"bus_greeter": (
        textwrap.dedent('''
        from bus_core import hookimpl

        def setup(parser):
            parser.add_argument("name")
            parser.add_argument("-s", "--shout", action="store_true")

        def run(args):
            text = f"hello {args.name}"
            print(text.upper() if args.shout else text)
            return 3 if args.name == "nobody" else 0

        @hookimpl
        def bus_register_commands(register):
            register("greet", "say hello", setup, run)
        ''')
    )})
    env = {"PYTHONPATH": str(tmp_path)}
    assert "greet" in bus("--help", env=env).stdout
    result = bus("greet", "ada", "--shout", env=env)
    assert (result.returncode, result.stdout.strip()) == (0, "HELLO ADA")
    assert bus("greet", "nobody", env=env).returncode == 3
    assert bus("greet", env=env).returncode == 2


def test_config_schema_is_a_valid_json_schema():
    result = bus("config", "schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "memory" in schema["properties"]["plugins"]["properties"]


def test_config_check(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("bus: {service_name: shop}\napis: {default: {rpc_timeout: 2}}\n")
    result = bus("config", "check", str(good))
    assert result.returncode == 0 and "valid" in result.stdout and "'shop'" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("apis: {default: {rpc_timeout: soon}}\n")
    result = bus("config", "check", str(bad))
    assert result.returncode == 1
    assert "apis.default.rpc_timeout: 'soon' is not of type 'number'" in result.stderr
    assert bus("config", "check", "--config", str(good)).returncode == 0
    missing = bus("config", "check", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_the_quickstart_example_runs_under_bus_run():
    worker = Running(["run", "--skip", "tasks"], cwd=ROOT / "examples" / "quickstart")
    worker.wait_for("serving APIs [auth], listeners [send_welcome_email]")
    assert worker.stop() == 0


def test_run_writes_json_logs_when_the_config_says_so(tmp_path):
    project = write_service(tmp_path / "svc")
    (project / "bus.yaml").write_text("bus: {log_format: json}\n")
    worker = Running(["run", "--skip", "tasks"], cwd=project, env={"BUS_CONFIG": "bus.yaml"})
    line = worker.wait_for("serving APIs")
    record = json.loads(line)
    assert record["level"] == "INFO" and "serving APIs [echo]" in record["message"]
    assert worker.stop() == 0


def test_call_carries_on_when_a_found_bus_module_cannot_import(tmp_path):
    (tmp_path / "bus.py").write_text("from missing_helpers import thing\n")
    result = bus("call", "nobody.ping", "-t", "0.2", cwd=tmp_path)
    assert "warning: importing bus module 'bus' failed" in result.stderr
    assert "carrying on without the bus module" in result.stderr
    # The call itself was tried: on the default in-memory transport, which it refuses.
    assert result.returncode == 1 and "is on the in-memory transport" in result.stderr
    named = bus("call", "nobody.ping", "-b", "bus", cwd=tmp_path)  # named: an error
    assert named.returncode == 1 and "carrying on" not in named.stderr


def test_timeouts_must_be_finite_positive_numbers(tmp_path):
    for value in ("nan", "inf", "-inf", "1e309", "0", "-1", "soon"):
        for verb in ("call", "fire"):
            result = bus(verb, "shop.price", f"--timeout={value}", cwd=tmp_path)
            assert result.returncode == 2, (verb, value, result.stderr)
            assert f"{value!r} is not a positive number of seconds" in result.stderr


def test_a_broken_config_is_blamed_not_the_bus_module(tmp_path):
    project = write_service(tmp_path / "svc")
    for name, content in (("latin1.yaml", b"bus:\n  service_name: caf\xe9\n"),
                          ("deep.yaml", b"[" * 5000 + b"]" * 5000),
                          ("dup.yaml", b"bus: {}\nbus: {}\n"),
                          ("nan.yaml", b"apis: {default: {rpc_timeout: .nan}}\n")):
        (project / name).write_bytes(content)
        result = bus("run", cwd=project, env={"BUS_CONFIG": name})
        assert result.returncode == 1, result.stderr
        assert f"bus: error: config {name}" in result.stderr or \
            f"bus: error: {name} is invalid" in result.stderr, result.stderr
        assert "importing bus module" not in result.stderr
        assert "Traceback" not in result.stderr
