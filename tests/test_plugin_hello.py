"""The example third-party plugin, examples/plugin-hello, installed the way a user installs it.

One pip install per module (into a temporary `--target`, put on PYTHONPATH of every
subprocess), then: `bus plugins list` finds it through its entry point, the config enables it
and validates its section, and its lifecycle and message-flow hooks run only when enabled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SOURCE = ROOT / "examples" / "plugin-hello"
EXPECTED_HOOKS = {
    "bus_plugin_config_schema",
    "bus_worker_started",
    "bus_worker_stopping",
    "bus_after_rpc_execution",
}
TIMEOUT = 60


@dataclasses.dataclass(frozen=True)
class Installed:
    """Where the plugin was installed and how to run things that should see it."""

    site: Path
    workdir: Path
    demo: Path
    version: str
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run this venv's python with `args` in a folder holding no bus.py or config."""
        return subprocess.run([sys.executable, *args], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=TIMEOUT)

    def bus(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the `bus` command."""
        return self.run("-m", "bus_core.cli", *args)

    def config(self, name: str, text: str) -> str:
        """Write a config file into the work folder; return its path."""
        path = self.workdir / name
        path.write_text(text, encoding="utf-8")
        return str(path)


@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """pip-install examples/plugin-hello once for the module's tests."""
    base = tmp_path_factory.mktemp("plugin-hello")
    # Build from a copy: a build writes build/ and *.egg-info next to the sources, and an
    # egg-info left in the examples folder would itself be found as an installed plugin.
    source = base / "plugin-hello"
    shutil.copytree(PLUGIN_SOURCE, source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = base / "site"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
               "--disable-pip-version-check", "--no-build-isolation", "--target", str(site)]
    result = subprocess.run([*command, str(source)], capture_output=True, text=True,
                            timeout=180)
    if result.returncode != 0:
        pytest.fail(f"pip could not install examples/plugin-hello:\n{result.stdout}\n"
                    f"{result.stderr}")
    found = list(metadata.distributions(name="bus-hello", path=[str(site)]))
    assert len(found) == 1, f"expected one bus-hello distribution in {site}, found {found}"
    workdir = base / "work"
    workdir.mkdir()
    # A clean folder for the demo script, so nothing beside it can be imported instead of the
    # installed package.
    scripts = base / "scripts"
    scripts.mkdir()
    demo = scripts / "demo.py"
    shutil.copy(PLUGIN_SOURCE / "demo.py", demo)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BUS_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return Installed(site=site, workdir=workdir, demo=demo, version=found[0].version, env=env)


def _row(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    matches = [row for row in rows if row["name"] == name]
    assert len(matches) == 1, f"plugin {name!r} listed {len(matches)} times in {rows}"
    return matches[0]


def _table_line(stdout: str, name: str) -> list[str]:
    lines = [line for line in stdout.splitlines() if line.split()[:1] == [name]]
    assert len(lines) == 1, f"no single line for {name!r} in:\n{stdout}"
    return lines[0].split()


# -- discovery ------------------------------------------------------------------------------


def test_plugins_list_shows_it_installed_but_not_enabled(hello: Installed) -> None:
    result = hello.bus("plugins", "list")
    assert result.returncode == 0, result.stderr
    name, distribution, version, enabled, *hooks = _table_line(result.stdout, "hello")
    assert (name, distribution, version, enabled) == ("hello", "bus-hello", hello.version, "no")
    assert {f"bus_{h.rstrip(',')}" for h in hooks} == EXPECTED_HOOKS
    assert result.stderr == ""


def test_plugins_list_json(hello: Installed) -> None:
    result = hello.bus("plugins", "list", "--json")
    assert result.returncode == 0, result.stderr
    row = _row(json.loads(result.stdout), "hello")
    assert row["distribution"] == "bus-hello"
    assert row["version"] == hello.version == "0.1.0"
    assert row["enabled"] is False
    assert row["status"] == "loaded"
    assert row["builtin"] is False
    assert row["source"] == "entry point"
    assert row["module"] == "bus_hello"
    assert set(row["hooks"]) == EXPECTED_HOOKS
    assert row["error"] is None


@pytest.mark.parametrize(("flag", "shown"), [("true", "yes"), ("false", "no")])
def test_the_config_decides_whether_it_is_enabled(hello: Installed, flag: str,
                                                  shown: str) -> None:
    config = hello.config(f"enabled-{flag}.yaml",
                          f"plugins:\n  hello:\n    enabled: {flag}\n    greeting: Hi\n")
    result = hello.bus("plugins", "list", "-c", config)
    assert result.returncode == 0, result.stderr
    assert _table_line(result.stdout, "hello")[3] == shown
    as_json = hello.bus("plugins", "list", "--json", "-c", config)
    assert _row(json.loads(as_json.stdout), "hello")["enabled"] is (flag == "true")


# -- its config section ---------------------------------------------------------------------


def test_config_check_accepts_its_section(hello: Installed) -> None:
    config = hello.config("good.yaml", "plugins:\n  hello:\n    enabled: true\n"
                                       "    greeting: \"Good morning\"\n"
                                       "    log_each_call: true\n")
    result = hello.bus("config", "check", config)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    enabled = result.stdout.split("plugins enabled:")[1]
    assert "hello" in enabled.replace(",", " ").split()


@pytest.mark.parametrize(("section", "complaint"), [
    ("greting: hi", "'greting' was unexpected"),
    ("greeting: 42", "plugins.hello.greeting: 42 is not of type 'string'"),
    ("greeting: ''", "plugins.hello.greeting"),
    ("log_each_call: sometimes", "plugins.hello.log_each_call"),
], ids=["unknown-key", "greeting-not-a-string", "greeting-empty", "flag-not-a-boolean"])
def test_config_check_rejects_mistakes_in_its_section(hello: Installed, section: str,
                                                      complaint: str) -> None:
    config = hello.config("bad.yaml", f"plugins:\n  hello:\n    enabled: true\n    {section}\n")
    result = hello.bus("config", "check", config)
    assert result.returncode == 1, result.stdout
    assert "is invalid" in result.stderr
    assert complaint in result.stderr


def test_config_schema_includes_its_section(hello: Installed) -> None:
    result = hello.bus("config", "schema")
    assert result.returncode == 0, result.stderr
    section = json.loads(result.stdout)["properties"]["plugins"]["properties"]["hello"]
    assert set(section["properties"]) == {"enabled", "greeting", "log_each_call"}
    assert section["properties"]["greeting"]["type"] == "string"
    assert section["additionalProperties"] is False


# -- its hooks ------------------------------------------------------------------------------


def _plugin_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if "bus_hello:" in line]


def test_hooks_run_when_enabled(hello: Installed) -> None:
    config = hello.config("on.yaml", "plugins:\n  hello:\n    enabled: true\n"
                                     "    greeting: \"Bonjour from the test\"\n"
                                     "    log_each_call: true\n")
    result = hello.run(str(hello.demo), "-c", config, "--calls", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "[demo] maths.add(a=2, b=1) -> 3" in lines
    ours = _plugin_lines(result.stdout)
    assert len(ours) == 5, result.stdout
    # bus_worker_started: the greeting, before the first call is made.
    assert "Bonjour from the test" in ours[0]
    assert "APIs: maths" in ours[0]
    first_call = next(i for i, line in enumerate(lines) if line.startswith("[demo]"))
    assert lines.index(ours[0]) < first_call
    # bus_after_rpc_execution: every call counted, with its duration.
    for number, line in enumerate(ours[1:4], start=1):
        assert f"maths.add() call #{number} ok in " in line
        assert line.endswith(" ms")
    # bus_worker_stopping: the tally.
    assert ours[4].endswith("this worker served 3 call(s): maths.add x3")


def test_defaults_apply_when_options_are_left_out(hello: Installed) -> None:
    config = hello.config("defaults.yaml", "plugins:\n  hello:\n    enabled: true\n")
    result = hello.run(str(hello.demo), "-c", config, "--calls", "2")
    assert result.returncode == 0, result.stderr
    ours = _plugin_lines(result.stdout)
    assert len(ours) == 2, result.stdout  # log_each_call defaults to false
    assert "Hello from bus-hello (worker hello_demo/" in ours[0]
    assert ours[1].endswith("this worker served 2 call(s): maths.add x2")


@pytest.mark.parametrize("document", [
    "plugins:\n  hello:\n    enabled: false\n    greeting: \"Should stay quiet\"\n",
    "plugins: {}\n",
], ids=["enabled-false", "section-absent"])
def test_hooks_do_not_run_when_not_enabled(hello: Installed, document: str) -> None:
    config = hello.config("off.yaml", document)
    result = hello.run(str(hello.demo), "-c", config, "--calls", "2")
    assert result.returncode == 0, result.stderr
    assert "[demo] maths.add(a=1, b=1) -> 2" in result.stdout
    assert "serving APIs [maths]" in result.stdout  # the worker did run
    assert _plugin_lines(result.stdout) == []
    assert "Should stay quiet" not in result.stdout
