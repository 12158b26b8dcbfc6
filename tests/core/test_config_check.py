"""`bus config check` is a dry run of everything but the network: it fails (exit 1, naming the
path of the problem) wherever `create()` or `bus run` would, and `--connect` lets each
configured transport check its server, one line per transport."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

import bus_core
from bus_core import BusError
from bus_core.cli import main
from tests.core.test_plugins import fake_distribution

# A throwaway transport plugin: `checked` transports report what their options tell them to.
CHECKED_PLUGIN = '''
import asyncio
from bus_core import hookimpl
from bus_core.transports import RpcTransport


class CheckedRpc(RpcTransport):
    def __init__(self, *, problem=None, open_fails=False, slow=False, size=1, **context):
        super().__init__(**context)
        if size < 0:
            raise ValueError("size must not be negative")
        self.problem, self.open_fails, self.slow = problem, open_fails, slow

    async def open(self):
        if self.open_fails:
            raise ConnectionError("checked-server:9 refused the connection")

    async def check(self):
        if self.slow:
            await asyncio.sleep(5)
        return [self.problem] if self.problem else []

    async def call_rpc(self, message, *, timeout): ...
    async def open_consumer(self, api_names): ...


@hookimpl
def bus_register_transports(register):
    register("rpc", "checked", CheckedRpc,
             {"type": "object", "additionalProperties": False,
              "properties": {"problem": {"type": "string"}, "open_fails": {"type": "boolean"},
                             "slow": {"type": "boolean"}, "size": {"type": "integer"}}})
'''


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of fake installed distributions on sys.path, and no config in the
    environment."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("BUS_CONFIG", raising=False)
    monkeypatch.delenv("BUS_DISABLED_PLUGINS", raising=False)
    fake_distribution(folder, "bus-checked", {"checked": "bus_checked"},
                      {"bus_checked": CHECKED_PLUGIN})
    return folder


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
          *options: str) -> tuple[int, str, str]:
    """Run `bus config check [options] FILE` on `text`; (exit code, stdout, stderr)."""
    path = tmp_path / "bus.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    code = main(["config", "check", *options, str(path)])
    out, err = capsys.readouterr()
    return code, out, err


# -- where create() would fail, config check fails, naming the path ---------------------------

BAD = {
    "unknown-serializer": ("bus: {serializer: msgpak}\n",
                           "bus.serializer: no serializer named 'msgpak' is installed"),
    "transport-not-installed": ("apis:\n  default:\n    rpc_transport: {kafka: {}}\n",
                                "apis.default.rpc_transport: 'kafka' was unexpected: no rpc "
                                "transport named 'kafka' is installed"),
    "not-a-number": ("apis:\n  default:\n    rpc_timeout: .nan\n",
                     "apis.default.rpc_timeout: nan is not a number"),
    "redis-port": ("apis:\n  default:\n    event_transport:\n"
                   "      redis: {url: 'redis://127.0.0.1:70000/0'}\n",
                   "apis.default.event_transport.redis.url"),
    "factory-refuses-options": ("apis:\n  default:\n    rpc_transport:\n"
                                "      checked: {size: -1}\n",
                                "apis.default.rpc_transport: the checked rpc transport refuses "
                                "its options: ValueError: size must not be negative"),
    "transport-plugin-disabled": ("plugins:\n  memory: {enabled: false}\n",
                                  "plugins.memory.enabled is false, but the config uses its "
                                  "memory transport at apis.default.rpc_transport"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_config_check_fails_where_create_fails(case, site, tmp_path, capsys):
    text, expected = BAD[case]
    code, out, err = check(tmp_path, capsys, text)
    assert code == 1, out
    assert expected in err, err
    assert "Traceback" not in err
    if case != "factory-refuses-options":  # create() builds transports lazily
        with pytest.raises(BusError):
            bus_core.create(str(tmp_path / "bus.yaml"))


def test_a_missing_environment_variable_names_the_file(site, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BUS_TEST_UNSET_TIMEOUT", raising=False)
    code, _, err = check(tmp_path, capsys,
                         "apis:\n  default:\n    rpc_timeout: ${BUS_TEST_UNSET_TIMEOUT}\n")
    assert code == 1
    assert (f"{tmp_path / 'bus.yaml'}: apis.default.rpc_timeout: environment variable "
            "BUS_TEST_UNSET_TIMEOUT is not set") in err


def test_a_blocked_default_transport_is_an_error_not_a_surprise(site, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.setenv("BUS_DISABLED_PLUGINS", "memory")
    code, _, err = check(tmp_path, capsys, "bus: {service_name: shop}\n")
    assert code == 1
    assert ("apis.default.rpc_transport (default memory): the rpc transport 'memory' is "
            "unavailable: its plugin 'memory' is blocked by BUS_DISABLED_PLUGINS") in err


def test_an_enabled_plugin_that_failed_to_load_fails_the_check(site, tmp_path, capsys):
    fake_distribution(site, "bus-audit", {"audit": "bus_audit"},
                      {"bus_audit": "import os\nimport bus_core\nimport no_such_module_x\n"})
    code, _, err = check(tmp_path, capsys, "plugins:\n  audit: {enabled: true}\n")
    assert code == 1
    assert "bus: warning: " in err and "'audit'" in err  # the CLI's own form
    assert ("plugins.audit.enabled is true, but plugin 'audit' (bus-audit) failed to load: "
            "ModuleNotFoundError: No module named 'no_such_module_x' "
            f"(at {site / 'bus_audit.py'}:3)") in err


@pytest.mark.parametrize(("text", "expected"), [
    ("plugins:\n  metrics: true\n",
     "plugins.metrics: true is not a mapping; write metrics: {enabled: true}"),
    ("apis:\n  default:\n    rpc_timeout: null\n",
     "apis.default.rpc_timeout: null is not of type 'number'"),
    ("bus:\n  strict_parameters: {rate: 1}\n",
     "bus.strict_parameters: {rate: 1} is not of type 'boolean'"),
    ("bus:\n  on: 1\n", "bus: key true is not a string (YAML reads an unquoted on"),
    ("apis: [auth]\n", "apis: [auth] is not a mapping; write apis: followed by its keys"),
], ids=["plugin-flag", "null", "mapping", "yaml-boolean-key", "list"])
def test_config_errors_show_yaml_not_python(site, tmp_path, capsys, text, expected):
    code, _, err = check(tmp_path, capsys, text)
    assert code == 1
    assert expected in err, err
    for python in ("True", "None", "{'"):
        assert python not in err.split("is invalid:", 1)[1], err


# -- --connect ---------------------------------------------------------------------------------

def _connect_config(**rpc_options: Any) -> str:
    options = ", ".join(f"{k}: {v}" for k, v in rpc_options.items())
    return textwrap.dedent(f"""\
        bus: {{service_name: shop}}
        apis:
          default:
            rpc_transport: {{checked: {{{options}}}}}
          orders:
            rpc_transport: {{checked: {{{options}}}}}
        """)


def test_connect_prints_one_line_per_transport(site, tmp_path, capsys):
    code, out, err = check(tmp_path, capsys, _connect_config(), "--connect")
    assert code == 0, err
    lines = out.splitlines()
    head, _, enabled = lines[0].partition(", plugins enabled: ")
    assert head.endswith("bus.yaml: valid (service 'shop', 1 API section(s)")
    # plus any installed plugin that only adds commands (bus-web's `bus web`): in use at once
    assert {"checked", "config_sources", "json", "memory"} <= set(
        enabled.rstrip(")").split(", ")) <= {"checked", "config_sources", "json", "memory", "web"}
    assert lines[1:] == [
        "rpc transport checked (apis.default.rpc_transport, apis.orders.rpc_transport): ok",
        "result transport memory (apis.default.result_transport, "
        "apis.orders.result_transport): ok",
        "event transport memory (apis.default.event_transport, "
        "apis.orders.event_transport): ok",
        "schema transport memory (bus.schema.transport): ok",
    ]


@pytest.mark.parametrize(("options", "problem"), [
    ({"problem": "'server 5.0 is older than 6.2'"}, "server 5.0 is older than 6.2"),
    ({"open_fails": "true"}, "ConnectionError: checked-server:9 refused the connection"),
    ({"slow": "true"}, "no answer within 0.2s"),
], ids=["reported", "open-fails", "too-slow"])
def test_connect_reports_each_problem_and_fails(site, tmp_path, capsys, options, problem):
    code, out, err = check(tmp_path, capsys, _connect_config(**options), "--connect",
                           "--timeout", "0.2")
    assert code == 1
    assert (f"rpc transport checked (apis.default.rpc_transport, "
            f"apis.orders.rpc_transport): {problem}") in out.splitlines()
    assert "event transport memory (apis.default.event_transport, " in out  # the others too
    assert "1 of 4 transport(s) failed their check" in err


def test_only_connect_opens_the_transports(site, tmp_path, capsys):
    code, out, _ = check(tmp_path, capsys, _connect_config(open_fails="true"))
    assert (code, len(out.splitlines())) == (0, 1)
    code, out, _ = check(tmp_path, capsys, _connect_config(open_fails="true"), "--connect")
    assert (code, len(out.splitlines())) == (1, 5)


def test_the_default_transport_check_finds_nothing():
    from bus_core.transports import Transport

    class Plain(Transport):
        pass

    import asyncio

    transport = Plain(serializer=None, service_name="s", process_name="p")  # type: ignore[arg-type]
    assert asyncio.run(transport.check()) == []
