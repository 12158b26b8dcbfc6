"""A plugin the config enables that cannot load is an error, not a silent skip; the deliberate
off switch (BUS_DISABLED_PLUGINS) stays a warning; hook functions missing @hookimpl are named;
and hooks refuse messages with `Refused`, which the `bus` command prints in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import bus_core
from bus_core import ConfigError, InvalidMessage, hookimpl
from bus_core.errors import Refused
from tests.conftest import memory_config
from tests.core.test_plugins import fake_distribution

BROKEN_IMPORT = "import bus_core\n\n\nraise RuntimeError('half installed')\n"
MISSPELLED_HOOK = ("from bus_core import hookimpl\n\n@hookimpl\n"
                   "def bus_worker_startd(client, worker): ...\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("BUS_CONFIG", raising=False)
    monkeypatch.delenv("BUS_DISABLED_PLUGINS", raising=False)
    return folder


def _create(config: dict) -> bus_core.Bus:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the discovery warning
        return bus_core.create(config)


# -- an enabled plugin that cannot load -----------------------------------------------------


def test_create_refuses_an_enabled_plugin_whose_import_failed(site, broker_name, monkeypatch,
                                                              caplog):
    fake_distribution(site, "bus-guard", {"guard": "bus_guard"}, {"bus_guard": BROKEN_IMPORT})
    config = {**memory_config(broker_name), "plugins": {"guard": {"enabled": True}}}
    # BUS_DISABLED_PLUGINS stays a deliberate off switch: a warning, and the bus works.
    monkeypatch.setenv("BUS_DISABLED_PLUGINS", "guard")
    _create(config).close()
    assert any("'guard' is enabled in the config but blocked by BUS_DISABLED_PLUGINS"
               in r.getMessage() for r in caplog.records)
    monkeypatch.delenv("BUS_DISABLED_PLUGINS")
    with pytest.raises(ConfigError) as caught:
        _create(config)
    text = str(caught.value)
    assert ("plugins.guard.enabled is true, but plugin 'guard' (bus-guard) failed to load: "
            "RuntimeError: half installed") in text
    assert f"(at {site / 'bus_guard.py'}:4)" in text


def test_create_refuses_an_enabled_plugin_with_a_misspelled_hook(site, broker_name):
    fake_distribution(site, "bus-typo", {"typo": "bus_typo"}, {"bus_typo": MISSPELLED_HOOK})
    config = {**memory_config(broker_name), "plugins": {"typo": {"enabled": True}}}
    with pytest.raises(ConfigError, match=r"plugins.typo.enabled is true, but plugin 'typo' "
                                          r"\(bus-typo\) failed to load: .*Did you mean "
                                          r"bus_worker_started\?"):
        _create(config)


def test_the_discovery_warning_shows_file_and_line(site, broker_name):
    fake_distribution(site, "bus-guard2", {"guard2": "bus_guard2"},
                      {"bus_guard2": BROKEN_IMPORT})
    with pytest.warns(RuntimeWarning, match=r"half installed \(at .*bus_guard2.py:4\)"):
        bus = bus_core.create(memory_config(broker_name))  # not enabled: a warning only
    bus.close()


def test_bus_run_refuses_to_start(site, tmp_path):
    fake_distribution(site, "bus-guard4", {"guard4": "bus_guard4"},
                      {"bus_guard4": BROKEN_IMPORT})
    service = tmp_path / "svc"
    service.mkdir()
    (service / "bus.py").write_text("import bus_core\nbus = bus_core.create()\n")
    (service / "bus.yaml").write_text("plugins:\n  guard4: {enabled: true}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "bus_core.cli", "run", "-c", "bus.yaml"],
                            cwd=service, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "bus: error:" in result.stderr and "plugins.guard4.enabled is true" in result.stderr
    assert "serving APIs" not in result.stderr


# -- transport plugins switched off while in use ----------------------------------------------


def test_disabling_a_transport_plugin_the_config_uses_is_an_error(broker_name):
    config = {**memory_config(broker_name), "plugins": {"memory": {"enabled": False}}}
    with pytest.raises(ConfigError, match=r"plugins.memory.enabled is false, but the config "
                                          r"uses its memory transport at "
                                          r"apis.default.rpc_transport \(and 3 more\)"):
        bus_core.create(config)


# -- hook functions without @hookimpl ---------------------------------------------------------


class ForgotOne:
    @hookimpl
    def bus_worker_started(self, worker):
        pass

    def bus_before_rpc_call(self, message):  # no @hookimpl: never runs
        raise AssertionError("not a hook")


def test_a_bus_function_without_hookimpl_is_named_in_a_warning(broker_name):
    with pytest.warns(RuntimeWarning, match=r"without @hookimpl, which never run: "
                                            r"bus_before_rpc_call;"):
        bus = bus_core.create(memory_config(broker_name), plugins=[ForgotOne()])
    bus.close()


def test_entry_point_modules_are_checked_too(site, broker_name):
    fake_distribution(site, "bus-forgot", {"forgot": "bus_forgot"}, {"bus_forgot": (
        "def bus_after_event_fire(message):\n    pass\n")})
    with pytest.warns(RuntimeWarning, match=r"'forgot' \(bus_forgot\).*bus_after_event_fire"):
        bus = bus_core.create(memory_config(broker_name))
    bus.close()


# -- refusing a message ----------------------------------------------------------------------


def test_refused_is_an_invalid_message():
    assert issubclass(Refused, InvalidMessage)
    assert issubclass(Refused, bus_core.BusError)


class NoPasswords:
    @hookimpl
    def bus_before_event_fire(self, message):
        if message.kwargs.get("username") == "root":
            raise Refused(f"{message.canonical_name} must not register root")


def test_a_refusing_hook_reaches_the_caller_as_refused(make_bus):
    from tests.apis import AuthApi

    bus = make_bus(plugins=[NoPasswords()])
    bus.client.register_api(AuthApi())
    with pytest.raises(Refused, match="must not register root"):
        bus.client.fire("auth", "user_registered", {"username": "root", "email": "r@x"})


SINK_PLUGIN = '''
from bus_core import hookimpl
from bus_core.transports import EventTransport


class Sink(EventTransport):
    async def send_event(self, message):
        message.native_id = "1-0"

    async def open_consumer(self, listen_for, listener_name, **options):
        raise NotImplementedError("a sink keeps nothing")


@hookimpl
def bus_register_transports(register):
    register("event", "sink", Sink, {"type": "object"})


@hookimpl
def bus_before_event_fire(message):
    if message.kwargs.get("note") == "secret":
        raise ERROR(f"{message.canonical_name} must not carry a secret")
'''

SERVICE = '''
import bus_core
from bus_core import Api, Event


class ShopApi(Api):
    ordered = Event(parameters=("item", "note"))

    class Meta:
        name = "shop"


bus = bus_core.create()
bus.client.register_api(ShopApi())
'''


@pytest.mark.parametrize("error", ["ValueError", "Refused"])
def test_bus_fire_prints_a_refusal_in_one_line(site, tmp_path, error):
    imports = "from bus_core.errors import Refused\n" if error == "Refused" else ""
    fake_distribution(site, f"bus-sink-{error.lower()}", {"sink": "bus_sink"}, {
        "bus_sink": imports + SINK_PLUGIN.replace("ERROR", error)})
    service = tmp_path / "svc"
    service.mkdir()
    (service / "bus.py").write_text(SERVICE)
    (service / "bus.yaml").write_text(textwrap.dedent("""\
        apis:
          default:
            event_transport: {sink: {}}
        plugins:
          sink: {enabled: true}
        """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "bus_core.cli", "fire", "-c", "bus.yaml",
                             "shop.ordered", "item=tea", "note=secret"],
                            cwd=service, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"bus: error: {'' if error == 'Refused' else 'ValueError: '}"
                               "shop.ordered must not carry a secret")
    ok = subprocess.run([sys.executable, "-m", "bus_core.cli", "fire", "-c", "bus.yaml",
                         "shop.ordered", "item=tea", "note=fine"],
                        cwd=service, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


# -- smaller things ------------------------------------------------------------------------


def test_bus_run_names_the_bus_module_it_imported(tmp_path):
    import signal

    service = tmp_path / "svc"
    (service / "shop").mkdir(parents=True)
    (service / "shop" / "__init__.py").write_text("")
    (service / "shop" / "bus.py").write_text("import bus_core\nbus = bus_core.create()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    process = subprocess.Popen([sys.executable, "-m", "bus_core.cli", "run"], cwd=service,
                               env=env, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stderr.readline()
        while "serving" not in (line := process.stderr.readline()) and line:
            pass
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    finally:
        process.kill()
        process.stderr.close()
    assert first.rstrip().endswith(
        f"INFO    bus.cli: bus module shop.bus ({service / 'shop' / 'bus.py'})"), first


FAILING_USER_TEST = '''
def test_expects_a_call(bus, bus_mock):
    bus_mock.assert_rpc_called("shop.price")
'''


def test_bus_mock_failures_point_at_the_test_not_at_bus(tmp_path):
    (tmp_path / "test_user.py").write_text(FAILING_USER_TEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-p", "no:xdist", "test_user.py"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "expected RPC shop.price to be called at least once" in result.stdout
    assert "bus_core/testing.py" not in result.stdout, result.stdout
