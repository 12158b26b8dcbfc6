"""The example transport as a user meets it: its demo runs two processes over one file, its
entry point names its plugin module, and its options are checked when the config loads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import bus_sqlite.plugin
import pytest
from bus_sqlite import SqliteEventTransport

import bus_core
from bus_core import ConfigError
from bus_core.default_plugins.json_serializer import JsonSerializer
from bus_core.errors import TransportError
from tests.conformance.conftest import EXAMPLE
from tests.conftest import run_python


def test_the_demo_calls_and_fires_across_two_processes(tmp_path: Path) -> None:
    result = run_python(str(EXAMPLE / "demo.py"), "--db", str(tmp_path / "bus.sqlite3"),
                        timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "[warehouse] reserve 2 apples -> True",
        "[warehouse] reserve 2 apples -> False",
        "[worker] restocked 10 apple",
        "[warehouse] apples in stock: 11",
        "[worker] stopped",
    ]


def test_the_entry_point_names_the_plugin_module() -> None:
    text = (EXAMPLE / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.entry-points.bus]\n", 1)[1].split("\n\n", 1)[0]
    assert section.strip() == 'sqlite = "bus_sqlite.plugin"'

    assert callable(bus_sqlite.plugin.bus_register_transports)


@pytest.mark.parametrize(("options", "complaint"), [
    ({}, "'path' is a required property"),
    ({"path": "x.db", "poll_interval": 0}, "poll_interval"),
    ({"path": "x.db", "poll_intervall": 1}, "poll_intervall"),
])
def test_bad_options_are_refused_when_the_config_loads(options: dict[str, object],
                                                       complaint: str) -> None:
    config = {"apis": {"default": {"event_transport": {"sqlite": options}}}}
    with pytest.raises(ConfigError) as caught:
        bus_core.create(config, plugins=[bus_sqlite.plugin], service_name="svc")
    assert complaint in str(caught.value)
    assert "event_transport" in str(caught.value)


def test_an_unusable_file_is_a_transport_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-file"
    folder.mkdir()
    transport = SqliteEventTransport(path=str(folder), serializer=JsonSerializer(),
                                     service_name="svc", process_name="p")
    with pytest.raises(TransportError, match="not-a-file: cannot open the bus file"):
        asyncio.run(transport.open())

