"""The code blocks of the plugin and config docs run, so the docs keep saying what the code does.

A block is tested when the line before its opening fence is a marker (an HTML comment, which
the docs site does not show):

    <!-- doc-test: python -->       run the Python block; its asserts are the test
    <!-- doc-test: plugin -->       import the block as a plugin module and register it on a
                                    bus: every hook name and argument must exist, every
                                    bus_* function carry @hookimpl (`hookimpl` is given), and
                                    a "before" hook refuses with `Refused`
    <!-- doc-test: config -->       the YAML block is a valid config
    <!-- doc-test: file NAME -->    write the block to NAME, for the console blocks after it
    <!-- doc-test: console -->      run each `$ bus ...` line; its output must be the lines
                                    that follow, exactly
    <!-- doc-test: pytest -->       run the block as a pytest file, with the example plugin
                                    (examples/plugin-hello) installed; all its tests pass
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
import uuid
import warnings
from pathlib import Path

import pytest
import yaml

import bus_core
from bus_core import hookimpl
from bus_core.config import load_config
from bus_core.plugins import PluginManager
from bus_core.testing import memory_config

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["docs/reference/config.md", "docs/reference/hooks.md", "docs/howto/write-a-plugin.md"]
KINDS = {"python", "plugin", "config", "file", "console", "pytest"}
_BLOCK = re.compile(r"^<!-- doc-test: (\w+)(?: (\S+))? -->\n```[\w-]*\n(.*?)^```", re.S | re.M)
# Hooks that refuse a message by raising (hooks.md: raise Refused).
_REFUSING = re.compile(r"def (bus_before_\w+|bus_on_rpc_result_received)\(")


@dataclasses.dataclass(frozen=True)
class Block:
    page: str
    line: int
    kind: str
    argument: str | None
    code: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}:{self.kind}"


def _blocks(page: str) -> list[Block]:
    text = (ROOT / page).read_text(encoding="utf-8")
    return [Block(page, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2), m.group(3))
            for m in _BLOCK.finditer(text)]


def test_every_page_has_tested_blocks_and_markers_are_known():
    for page in PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        markers = re.findall(r"<!-- doc-test: (\w+)", text)
        assert markers, f"{page} has no tested block"
        assert set(markers) <= KINDS, f"{page}: unknown marker in {sorted(set(markers))}"
        assert len(markers) == len(_blocks(page)), f"{page}: a marker is not right above a fence"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean folder (no bus.py, no config) with no BUS_* variables set."""
    for name in [n for n in os.environ if n.startswith("BUS_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_python(block: Block, workdir: Path) -> None:
    namespace = {"__name__": f"doc_block_{block.line}"}
    exec(compile(block.code, str(block), "exec"), namespace)


def _run_plugin(block: Block, workdir: Path) -> None:
    module = types.ModuleType(f"doc_plugin_{Path(block.page).stem.replace('-', '_')}_"
                              f"{block.line}")
    module.__dict__["hookimpl"] = hookimpl  # what the page's first block imports
    exec(compile(block.code, str(block), "exec"), module.__dict__)
    for refusing in _REFUSING.findall(block.code):
        raised = re.findall(r"raise (\w+)\(", block.code)
        assert raised and set(raised) == {"Refused"}, (
            f"{block}: {refusing} should refuse with Refused, raises {raised}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # e.g. a bus_* without @hookimpl
        bus = bus_core.create(memory_config(f"doc-{uuid.uuid4().hex}"), plugins=[module])
    try:
        assert module.__name__ in bus.client.plugins.enabled
    finally:
        bus.close()


def _run_config(block: Block, workdir: Path) -> None:
    load_config(yaml.safe_load(block.code), PluginManager(), environ={})


def _run_file(block: Block, workdir: Path) -> None:
    (workdir / str(block.argument)).write_text(block.code, encoding="utf-8")


def _run_console(block: Block, workdir: Path) -> None:
    commands: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
    assert commands, f"{block}: no `$ command` line"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                 f"{os.environ.get('PATH', '')}"}
    for command, expected in commands:
        argv = shlex.split(command)
        assert argv[0] == "bus", f"{block}: only `bus` commands are run, not {argv[0]}"
        result = subprocess.run([sys.executable, "-m", "bus_core.cli", *argv[1:]],
                                cwd=workdir, env=env, capture_output=True, text=True,
                                timeout=60)
        shown = (result.stdout + result.stderr).rstrip("\n").splitlines()
        assert shown == expected, f"{block}: `{command}` printed:\n" + "\n".join(shown)


def _run_pytest(block: Block, workdir: Path) -> None:
    """With examples/plugin-hello installed the way tests/core/test_plugins.py fakes it: its
    package and a dist-info declaring the `hello` entry point, on PYTHONPATH."""
    site = workdir / "site"
    shutil.copytree(ROOT / "examples" / "plugin-hello" / "bus_hello", site / "bus_hello",
                    ignore=shutil.ignore_patterns("__pycache__"))
    info = site / "bus_hello-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bus-hello\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[bus]\nhello = bus_hello\n")
    tests = workdir / "test_from_docs.py"
    tests.write_text(block.code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-p", "no:xdist", str(tests)], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{block}:\n{result.stdout}\n{result.stderr}"


RUNNERS = {"python": _run_python, "plugin": _run_plugin, "config": _run_config,
           "file": _run_file, "console": _run_console, "pytest": _run_pytest}


@pytest.mark.parametrize("page", PAGES)
def test_the_blocks_of_the_page_run(page: str, workdir: Path) -> None:
    """Every marked block of `page`, in order (console blocks use the files written before
    them)."""
    failures = []
    for block in _blocks(page):
        try:
            RUNNERS[block.kind](block, workdir)
        except Exception as exc:  # report every broken block of the page at once
            failures.append(f"{block}: {type(exc).__name__}: {exc}")
    assert not failures, "\n\n".join(failures)
