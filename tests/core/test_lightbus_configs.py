"""Lightbus 1.x configs load as they are: every Lightbus setting is read as its Bus equivalent
or dropped with exactly one warning naming the file and the path; none is refused.

The fixtures in tests/fixtures/lightbus/ are Lightbus configs as Lightbus's documentation
writes them (minimal, every option, per-API overrides, plugins, aioredis connection
parameters); `full_as_bus.yaml` is `full.yaml` in Bus's own names."""

from __future__ import annotations

import os
import re
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import bus_core
from bus_core import ConfigError
from bus_core.cli import main
from bus_core.config import _LIGHTBUS_OPTIONS, Config, load_config, register_lightbus_options
from bus_core.plugins import PluginManager

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "lightbus"
GUIDE = ROOT / "docs" / "howto" / "migrate-from-lightbus.md"
_WARNED = re.compile(r"^(?P<origin>.+?): (?P<path>\S+) is a Lightbus (setting|plugin) ")

_RPC = "apis.default.rpc_transport.redis"
_RESULT = "apis.default.result_transport.redis"
_EVENT = "apis.default.event_transport.redis"

# fixture -> the paths warned about, each exactly once, in this order
EXPECTED_WARNINGS: dict[str, list[str]] = {
    "minimal.yaml": [],
    "full.yaml": [
        "plugins.internal_metrics",
        "bus.schema.human_readable",
        "apis.default.cast_values",
        "apis.default.event_listener_setup_timeout",
        f"{_RPC}.rpc_timeout", f"{_RPC}.rpc_retry_delay", f"{_RPC}.consumption_restart_delay",
        f"{_RPC}.serializer", f"{_RPC}.deserializer",
        f"{_RESULT}.rpc_timeout", f"{_RESULT}.serializer", f"{_RESULT}.deserializer",
        f"{_EVENT}.reclaim_batch_size", f"{_EVENT}.consumption_restart_delay",
        f"{_EVENT}.service_name", f"{_EVENT}.consumer_name",
        f"{_EVENT}.serializer", f"{_EVENT}.deserializer",
    ],
    "per_api.yaml": ["apis.store.payments.rpc_transport.redis.rpc_timeout"],
    "plugins.yaml": ["plugins.internal_metrics"],
    "connection_parameters.yaml": [
        f"{_RPC}.connection_parameters.minsize",
        f"{_RESULT}.connection_parameters.db",
        f"{_RESULT}.connection_parameters.encoding",
        f"{_EVENT}.connection_parameters.password",
    ],
}


@pytest.fixture(autouse=True)
def no_bus_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("BUS_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager()


def warned_paths(caught: list[warnings.WarningMessage], origin: str) -> list[str]:
    """The config paths of the Lightbus warnings caught; each names `origin`."""
    paths = []
    for warning in caught:
        found = _WARNED.match(str(warning.message))
        assert found, f"not a Lightbus warning: {warning.message}"
        assert found["origin"] == origin, warning.message
        paths.append(found["path"])
    return paths


def load(name: str, manager: PluginManager) -> tuple[Config, list[str]]:
    """Load fixture `name`; (config, the paths warned about)."""
    path = str(FIXTURES / name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_config(path, manager, environ={})
    return config, warned_paths(caught, path)


def transport(config: Config, api: str, kind: str) -> dict[str, Any]:
    name, options = config.api(api).transport(kind)
    assert name == "redis"
    return options


# -- each fixture loads, with exactly the expected warnings ----------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED_WARNINGS))
def test_fixture_loads_with_exactly_the_expected_warnings(name, manager):
    _, paths = load(name, manager)
    assert paths == EXPECTED_WARNINGS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_WARNINGS))
def test_create_takes_the_fixture_and_its_transports_take_the_options(name):
    path = str(FIXTURES / name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bus = bus_core.create(path)
    try:
        assert warned_paths(caught, path) == EXPECTED_WARNINGS[name]
        config = bus.client.config
        for api in ("default", *config.api_names):
            for kind in ("rpc", "result", "event"):
                name, options = config.api(api).transport(kind)
                built = bus.client.make_transport(kind, name, options)  # takes its options
                for key, value in options.items():
                    assert getattr(built, key) == value, (api, kind, key)
    finally:
        bus.client.close()


@pytest.mark.parametrize("name", sorted(EXPECTED_WARNINGS))
def test_config_check_passes_with_the_same_warnings(name, capsys):
    path = str(FIXTURES / name)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code = main(["config", "check", path])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"{path}: valid (service "), out
    lines = err.splitlines()
    assert all(line.startswith("bus: warning: ") for line in lines), err  # no Python form
    paths = []
    for line in lines:
        found = _WARNED.match(line.removeprefix("bus: warning: "))
        assert found and found["origin"] == path, line
        paths.append(found["path"])
    assert paths == EXPECTED_WARNINGS[name]


# -- the values each Lightbus option becomes ------------------------------------------------


def test_minimal_config_is_read_as_written(manager):
    config, _ = load("minimal.yaml", manager)
    for kind in ("rpc", "result", "event"):
        assert transport(config, "default", kind) == {"url": "redis://redis_host:6379/0"}
    assert config.schema_transport() == ("redis", {"url": "redis://redis_host:6379/0"})


def test_full_config_maps_every_option(manager):
    config, _ = load("full.yaml", manager)
    assert config.service_name == "inventory"
    # `{hostname}-{pid}` is Bus's own default, which a forked child renews.
    assert config.process_name == f"{socket.gethostname()}-{os.getpid()}"
    assert config.bus["log_level"] == "INFO"
    assert config.bus["schema"]["ttl"] == 60
    assert config.schema_transport() == ("redis", {"url": "redis://redis_host:6379/0",
                                                   "max_connections": 100})
    api = config.api("anything")
    assert (api.rpc_timeout, api.event_fire_timeout) == (5, 5)
    assert api.validate == {"incoming": True, "outgoing": True}
    assert api.strict_validation is False
    url = "redis://redis_host:6379/0"
    assert transport(config, "default", "rpc") == {"url": url, "max_connections": 100,
                                                   "batch_size": 10}
    assert transport(config, "default", "result") == {"url": url, "max_connections": 100,
                                                      "result_ttl": 60}
    assert transport(config, "default", "event") == {
        "url": url, "max_connections": 100, "batch_size": 10, "claim_idle": 60,
        "reclaim_interval": 60, "max_stream_length": 100000, "stream_use": "per_api",
        "forget_consumers_after": 2592000}
    assert config.plugin("state")["enabled"] is True
    assert (config.plugin("state")["ping_enabled"], config.plugin("state")["ping_interval"]) \
        == (True, 60)
    assert "internal_state" not in config.plugins and "internal_metrics" not in config.plugins


def test_full_config_in_bus_names_loads_without_warnings_to_the_same_settings(manager):
    lightbus, _ = load("full.yaml", manager)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bus = load_config(str(FIXTURES / "full_as_bus.yaml"), manager, environ={})
    assert bus.bus == lightbus.bus
    assert bus.api("anything") == lightbus.api("anything")
    assert bus.plugin("state") == lightbus.plugin("state")


def test_per_api_overrides_are_mapped_each(manager):
    config, _ = load("per_api.yaml", manager)
    assert config.service_name == "store"
    assert re.fullmatch(r"store-[a-z]{4}", config.process_name)
    assert transport(config, "default", "rpc") == transport(config, "default", "result") == {
        "url": "redis://redis_host:6379/0", "max_connections": 50}
    assert transport(config, "default", "event") == {
        "url": "redis://redis_host:6379/0", "claim_idle": 60, "stream_use": "per_api"}
    payments = config.api("store.payments")
    assert payments.rpc_timeout == 30 and payments.strict_validation is True
    assert transport(config, "store.payments", "rpc") == {"url": "redis://payments_redis:6379/1"}
    assert transport(config, "store.payments", "event") == transport(config, "default", "event")
    analytics = config.api("marketing.analytics")
    assert analytics.validate == {"incoming": False, "outgoing": True}
    # Lightbus's 0 (no trimming, no consumer clean-up) is Bus's null.
    assert transport(config, "marketing.analytics", "event") == {
        "url": "redis://analytics_redis:6379/0", "stream_use": "per_event",
        "max_stream_length": None, "claim_idle": 300, "forget_consumers_after": None,
        "batch_size": 50}


def test_plugins_and_lower_case_log_level(manager):
    config, _ = load("plugins.yaml", manager)
    assert (config.service_name, config.process_name) == ("reporting", "reporting-worker-1")
    assert config.bus["log_level"] == "DEBUG"
    assert config.plugin("state")["ping_interval"] == 30
    assert transport(config, "default", "event") == {"url": "redis://redis_host:6379/0",
                                                     "forget_consumers_after": None}


def test_connection_parameters_become_pool_size_and_url_options(manager):
    config, _ = load("connection_parameters.yaml", manager)
    assert config.schema_transport()[1] == {
        "url": "unix:///var/run/redis/redis.sock?db=3&socket_connect_timeout=5"}
    # A URL with no database takes `db`; the password is quoted; maxsize is max_connections.
    assert transport(config, "default", "rpc") == {
        "url": "redis://redis_host:6379?db=4&password=p%40ss%3Aword", "max_connections": 20}
    # The URL's database wins (as in aioredis); ssl: true is rediss://; at least 2 connections.
    assert transport(config, "default", "result") == {"url": "rediss://redis_host:6379/0",
                                                      "max_connections": 2}
    assert transport(config, "default", "event") == {
        "url": "redis://:from_url@redis_host:6379/2?socket_connect_timeout=2.5"}


# -- edge cases -----------------------------------------------------------------------------


def lightbus_event(options: dict[str, Any]) -> dict[str, Any]:
    return {"apis": {"default": {"event_transport": {"redis": options}}}}


def test_a_bus_name_given_too_wins_over_the_lightbus_one(manager):
    with pytest.warns(UserWarning) as caught:
        config = load_config(lightbus_event({"acknowledgement_timeout": 5, "claim_idle": 9,
                                             "connection_parameters": {"maxsize": 7},
                                             "max_connections": 3}), manager, environ={})
    assert transport(config, "default", "event") == {"claim_idle": 9, "max_connections": 3}
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "acknowledgement_timeout is a Lightbus setting" in messages[0]
    assert "(claim_idle is given too)" in messages[0]
    assert "connection_parameters.maxsize" in messages[1]


def test_a_lightbus_value_out_of_bus_range_is_still_reported(manager):
    with pytest.raises(ConfigError, match=r"event_transport.redis.claim_idle: -1 is less"):
        load_config(lightbus_event({"acknowledgement_timeout": -1}), manager, environ={})


def test_a_misspelt_option_is_still_refused(manager):
    with pytest.raises(ConfigError, match="'consumer_tll' was unexpected"):
        load_config(lightbus_event({"consumer_tll": 0}), manager, environ={})


def test_a_transport_not_installed_is_not_translated(manager, monkeypatch):
    seen: list[dict[str, Any]] = []
    monkeypatch.setitem(_LIGHTBUS_OPTIONS, ("rpc", "absent"), lambda o: seen.append(o) or {})
    with pytest.raises(ConfigError, match="no rpc transport named 'absent' is installed"):
        load_config({"apis": {"default": {"rpc_transport": {"absent": {"x": 1}}}}}, manager,
                    environ={})
    assert seen == []


def test_a_registered_translator_rewrites_its_transports_options(manager, monkeypatch):
    def translate(options: dict[str, Any]) -> dict[str, str]:
        options.pop("old", None)
        return {"old": "because"}

    monkeypatch.setattr("bus_core.config._LIGHTBUS_OPTIONS", dict(_LIGHTBUS_OPTIONS))
    register_lightbus_options("rpc", "memory", translate)
    with pytest.warns(UserWarning, match=r"^config: apis.a.rpc_transport.memory.old is a "
                                         r"Lightbus setting with no effect in Bus; ignored "
                                         r"\(because\)$"):
        config = load_config({"apis": {"a": {"rpc_transport": {"memory": {"old": 1}}}}},
                             manager, environ={})
    assert config.api("a").transport("rpc") == ("memory", {})


def test_root_names_move_under_bus_where_a_value_there_wins(manager):
    config = load_config({"service_name": "root", "process_name": "p-{pid}",
                          "bus": {"service_name": "under_bus"}}, manager, environ={})
    assert config.service_name == "under_bus"
    assert config.process_name == f"p-{os.getpid()}"
    assert "service_name" not in config.document and "process_name" not in config.document


# -- the migration guide's configs ------------------------------------------------------------


def guide_configs() -> Iterator[tuple[str, str]]:
    """(first line, text) of each YAML block of the migration guide."""
    text = GUIDE.read_text(encoding="utf-8")
    for block in re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M):
        yield block.splitlines()[0], block


def test_the_guides_lightbus_config_loads_in_bus_unchanged(manager):
    blocks = dict(guide_configs())
    lightbus = blocks["# inventory/lightbus.yaml (Lightbus)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # it holds no setting Bus ignores
        config = load_config(yaml.safe_load(lightbus), manager, environ={})
    assert config.service_name == "inventory"
    assert transport(config, "x", "event")["forget_consumers_after"] is None
    bus = blocks["# accounts/bus.yaml (Bus)"]
    load_config(yaml.safe_load(bus), manager, environ={"REDIS_URL": "redis://127.0.0.1:6379/0"})
