"""Loading, substituting and validating the config."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import bus_core
from bus_core import ConfigError
from bus_core.config import Config, config_schema, load_config, substitute_env
from bus_core.plugins import PluginManager


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager()


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_no_config_means_every_default(manager):
    config = load_config(None, manager, environ={})
    api = config.api("auth")
    assert api.rpc_timeout == 5.0
    assert api.transport("rpc") == ("memory", {})
    assert api.transport("event") == ("memory", {})
    assert config.bus["serializer"] == "json"


def test_yaml_file_with_default_and_per_api_sections(tmp_path, manager):
    path = write(tmp_path, "bus.yaml", """
bus:
  service_name: billing
apis:
  default:
    rpc_timeout: 3
    event_transport: {memory: {broker: shared}}
  my_company.auth:
    rpc_timeout: 10
    max_deliveries: 2
""")
    config = load_config(path, manager, environ={})
    assert config.service_name == "billing"
    auth = config.api("my_company.auth")
    assert (auth.rpc_timeout, auth.max_deliveries) == (10, 2)
    assert auth.transport("event") == ("memory", {"broker": "shared"})  # from default
    assert config.api("other").rpc_timeout == 3


def test_json_file(tmp_path, manager):
    path = write(tmp_path, "bus.json", json.dumps({"bus": {"process_name": "p1"}}))
    assert load_config(path, manager, environ={}).process_name == "p1"


def test_bus_config_environment_variable(tmp_path, manager):
    path = write(tmp_path, "bus.yaml", "bus: {service_name: from_env_file}")
    config = load_config(None, manager, environ={"BUS_CONFIG": path})
    assert config.service_name == "from_env_file"


def test_env_substitution_with_defaults_and_types(tmp_path, manager):
    path = write(tmp_path, "bus.yaml", """
bus:
  service_name: ${SERVICE}
  process_name: worker-${HOSTNAME_X:-local}
apis:
  default:
    rpc_timeout: ${TIMEOUT:-7.5}
    ordered: ${ORDERED:-false}
""")
    config = load_config(path, manager, environ={"SERVICE": "shop"})
    assert config.service_name == "shop"
    assert config.process_name == "worker-local"
    assert config.api("x").rpc_timeout == 7.5  # a lone reference takes its YAML type
    assert config.api("x").ordered is False


def test_lone_references_take_json_like_types_and_dollar_dollar_escapes():
    env = {"ON": "on", "N": "123", "F": "1.5", "T": "TRUE", "S": "hello world"}
    document = {"a": "${ON}", "b": "${N}", "c": "${F}", "d": "${T}", "e": "${S}",
                "f": "x-${N}", "g": "$${NOT_A_VAR}", "h": "$${N} ${N}"}
    assert substitute_env(document, env) == {
        "a": "on", "b": 123, "c": 1.5, "d": True, "e": "hello world", "f": "x-123",
        "g": "${NOT_A_VAR}", "h": "${N} 123"}


def test_missing_env_variable_names_the_variable_and_path(manager):
    with pytest.raises(ConfigError, match=r"bus.service_name: environment variable SERVICE"):
        substitute_env({"bus": {"service_name": "${SERVICE}"}}, {}, "")


def test_validation_errors_name_path_value_and_expectation(tmp_path, manager):
    path = write(tmp_path, "bad.yaml", """
bus:
  drain_timeout: soon
apis:
  default:
    rpc_timeout: -1
    on_handler_error: explode
    event_transport: {redsi: {}}
plugins:
  memory: {enabled: yes-please}
""")
    with pytest.raises(ConfigError) as caught:
        load_config(path, manager, environ={})
    text = str(caught.value)
    assert "bad.yaml is invalid" in text
    assert "bus.drain_timeout: 'soon' is not of type 'number'" in text
    assert "apis.default.rpc_timeout: -1 is less than or equal to the minimum of 0" in text
    assert "apis.default.on_handler_error: 'explode' is not one of" in text
    assert "'redsi' was unexpected" in text and "installed: memory" in text
    assert "plugins.memory.enabled: 'yes-please' is not of type 'boolean'" in text


def test_unknown_keys_are_refused(manager):
    with pytest.raises(ConfigError, match="'rpc_timout' was unexpected"):
        load_config({"apis": {"default": {"rpc_timout": 1}}}, manager, environ={})
    with pytest.raises(ConfigError, match="'colour' was unexpected"):
        load_config({"colour": "blue"}, manager, environ={})


def test_transport_options_are_validated_by_the_plugins_schema(manager):
    with pytest.raises(ConfigError, match="apis.default.rpc_transport.memory.batch_size"):
        load_config({"apis": {"default": {"rpc_transport": {"memory": {"batch_size": 0}}}}},
                    manager, environ={})


def test_malformed_yaml_and_missing_file(tmp_path, manager):
    path = write(tmp_path, "broken.yaml", "bus:\n  service_name: x\n key: [1,\n")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML at line 3, column 2: "
                                          r"while parsing a block mapping, expected <block end>"):
        load_config(path, manager, environ={})
    path = write(tmp_path, "broken.json", '{"bus": {,}}')
    with pytest.raises(ConfigError, match=r"broken.json is not valid JSON: line 1, column 10: "
                                          r"Expecting property name"):
        load_config(path, manager, environ={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"), manager, environ={})
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "list.yaml", "- 1"), manager, environ={})


def test_unknown_scheme_lists_the_sources(manager):
    with pytest.raises(ConfigError, match="no config source handles 'consul'.*file.*https"):
        load_config("consul://config/bus", manager, environ={})


@pytest.fixture
def http_config() -> Iterator[tuple[str, dict]]:
    served = {"/bus.yaml": b"bus: {service_name: from_http}\n"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served["auth"] = self.headers.get("Authorization")
            body = served.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"missing")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()


def test_config_from_an_http_url(http_config, manager):
    base, _ = http_config
    assert load_config(f"{base}/bus.yaml", manager, environ={}).service_name == "from_http"


def test_http_errors_hide_the_password(http_config, manager):
    base, _ = http_config
    url = base.replace("http://", "http://user:hunter2@") + "/missing.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(url, manager, environ={})
    assert "HTTP 404" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_http_url_credentials_are_sent_as_basic_auth(http_config, manager):
    base, served = http_config
    url = base.replace("http://", "http://user:hunter2@") + "/bus.yaml"
    assert load_config(url, manager, environ={}).service_name == "from_http"
    assert served["auth"] == "Basic dXNlcjpodW50ZXIy"  # user:hunter2


def test_unreachable_url_is_a_clear_error(manager):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError, match="cannot read config from http://127.0.0.1"):
        load_config(f"http://127.0.0.1:{port}/bus.yaml", manager, environ={})


def test_lightbus_only_settings_load_with_a_warning(manager):
    lightbus = {"bus": {"log_level": "info", "schema": {"human_readable": True, "ttl": 60}},
                "apis": {"default": {"cast_values": True, "event_listener_setup_timeout": 1,
                                     "rpc_timeout": 5, "validate": True}}}
    with pytest.warns(UserWarning) as caught:
        config = load_config(lightbus, manager, environ={})
    assert sorted(str(w.message).split(" is a Lightbus")[0] for w in caught) == [
        "config: apis.default.cast_values", "config: apis.default.event_listener_setup_timeout",
        "config: bus.schema.human_readable"]
    assert config.bus["log_level"] == "INFO" and config.api("x").rpc_timeout == 5


def test_lightbus_plugin_sections_are_read_as_buss(manager):
    lightbus = {"plugins": {"internal_state": {"enabled": True, "ping_interval": 5},
                            "internal_metrics": {"enabled": True}}}
    with pytest.warns(UserWarning, match="plugins.internal_metrics is a Lightbus plugin"):
        config = load_config(lightbus, manager, environ={})
    assert config.plugin("state")["enabled"] is True
    assert config.plugin("state")["ping_interval"] == 5
    assert "internal_state" not in config.plugins and "internal_metrics" not in config.plugins


def test_lightbus_style_root_names_are_accepted(manager):
    config = load_config({"service_name": "legacy", "process_name": "p"}, manager, environ={})
    assert (config.service_name, config.process_name) == ("legacy", "p")


def test_process_name_defaults_to_host_and_pid():
    config = Config({})
    assert config.process_name == f"{socket.gethostname()}-{os.getpid()}"


def test_service_name_is_stable_and_derived_from_the_calling_module():
    first = bus_core.create({})
    second = bus_core.create({})
    try:
        # Called from a file in tests/core: the folder name, the same every time.
        assert first.client.service_name == second.client.service_name == "core"
    finally:
        first.client.close()
        second.client.close()


def test_schema_contains_every_installed_plugins_section(manager):
    schema = config_schema(manager)
    plugins = schema["properties"]["plugins"]["properties"]
    assert "memory" in plugins and plugins["memory"]["properties"]["enabled"] == {
        "type": "boolean"}
    transports = schema["properties"]["apis"]["additionalProperties"]["properties"]
    assert "memory" in transports["event_transport"]["properties"]
