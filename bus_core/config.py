"""The one config loader: read (file, URL, plugin source), substitute `${ENV}`, validate
against the schema assembled from the kernel's part and every plugin's part, apply defaults.

    bus:      service_name, process_name, serializer, drain_timeout, max_message_size, ...
    apis:     default: {...} applies to every API; <api name>: {...} overrides it
    plugins:  <plugin name>: {enabled: true, ...}
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import urllib.parse
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import yaml

from bus_core.errors import ConfigError

if TYPE_CHECKING:
    from bus_core.plugins import PluginManager

TRANSPORT_KEYS = {
    "rpc": "rpc_transport",
    "result": "result_transport",
    "event": "event_transport",
}
DEFAULT_TRANSPORT = {"memory": {}}

API_DEFAULTS: dict[str, Any] = {
    "rpc_timeout": 5.0,
    "event_fire_timeout": 5.0,
    "rpc_transport": DEFAULT_TRANSPORT,
    "result_transport": DEFAULT_TRANSPORT,
    "event_transport": DEFAULT_TRANSPORT,
    "max_concurrent_rpcs": 64,
    "max_concurrent_events": 64,
    "ordered": False,
    "on_handler_error": "redeliver",
    "max_deliveries": 5,
    "redelivery_delay": 1.0,
    "validate": True,
    "strict_validation": False,
}

BUS_DEFAULTS: dict[str, Any] = {
    "service_name": None,
    "process_name": None,
    "serializer": "json",
    "drain_timeout": 30.0,
    "single_task_lock_ttl": 15.0,
    "max_message_size": 10 * 1024 * 1024,
    "handler_threads": 32,
    "log_level": None,
    "log_format": "text",
    "strict_parameters": False,
    "send_tracebacks": True,
    "schema": {"ttl": 60, "transport": DEFAULT_TRANSPORT},
}

_NAME = {"type": "string", "minLength": 1, "pattern": r"^[^\s]+$"}
_SECONDS = {"type": "number", "exclusiveMinimum": 0}


def _transport_choice(plugins: PluginManager | None, kind: str) -> dict[str, Any]:
    names: dict[str, Any] = {}
    if plugins is not None:
        for (entry_kind, name), entry in plugins.transports.items():
            if entry_kind == kind:
                names[name] = dict(entry.options_schema or {"type": "object"})
    installed = ", ".join(sorted(names)) or "none installed"
    return {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "properties": names,
        "additionalProperties": False,
        "x-hint": f"name exactly one {kind} transport as a key, e.g. memory: {{}} "
                  f"(installed: {installed})",
    }


def config_schema(plugins: PluginManager | None = None) -> dict[str, Any]:
    """The JSON Schema of the whole config document, with each installed plugin's part."""
    api = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "rpc_timeout": _SECONDS,
            "event_fire_timeout": _SECONDS,
            "rpc_transport": _transport_choice(plugins, "rpc"),
            "result_transport": _transport_choice(plugins, "result"),
            "event_transport": _transport_choice(plugins, "event"),
            "max_concurrent_rpcs": {"type": "integer", "minimum": 1},
            "max_concurrent_events": {"type": "integer", "minimum": 1},
            "ordered": {"type": "boolean"},
            "on_handler_error": {"enum": ["redeliver", "acknowledge", "stop"]},
            "max_deliveries": {"type": "integer", "minimum": 1},
            "redelivery_delay": {"type": "number", "minimum": 0},
            "validate": {
                "oneOf": [
                    {"type": "boolean"},
                    {"type": "object", "additionalProperties": False,
                     "properties": {"incoming": {"type": "boolean"},
                                    "outgoing": {"type": "boolean"}}},
                ]
            },
            "strict_validation": {"type": "boolean"},
        },
    }
    plugin_sections: dict[str, Any] = {}
    if plugins is not None:
        for name, info in plugins.infos.items():
            if info.status != "loaded":
                # Blocked or failed to load: its schema is unknown, so its section is taken
                # as it is (the plugin manager warns that it will not run).
                plugin_sections[name] = {"type": "object",
                                         "properties": {"enabled": {"type": "boolean"}}}
                continue
            # A plugin's own schema, with `enabled` added; a plugin that declares none takes
            # no options, so a misspelled key is caught rather than ignored.
            part = dict(plugins.config_schemas.get(name) or {})
            section: dict[str, Any] = {"type": "object", "additionalProperties": False, **part}
            section["properties"] = {"enabled": {"type": "boolean"},
                                     **dict(part.get("properties") or {})}
            plugin_sections[name] = section
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Bus configuration",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "bus": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "service_name": _NAME,
                    "process_name": _NAME,
                    "serializer": {"type": "string", "minLength": 1},
                    "drain_timeout": {"type": "number", "minimum": 0},
                    "single_task_lock_ttl": {"type": "number", "minimum": 1},
                    "max_message_size": {"type": "integer", "minimum": 1024},
                    "handler_threads": {"type": "integer", "minimum": 1},
                    "log_level": {"enum": [None, "DEBUG", "INFO", "WARNING", "ERROR"]},
                    "log_format": {"enum": ["text", "json"]},
                    "strict_parameters": {
                        "type": "boolean",
                        "description": "dead-letter a received event that carries a parameter "
                                       "its API does not declare (default: deliver it "
                                       "without that field, and log it once)"},
                    "send_tracebacks": {
                        "type": "boolean",
                        "description": "error results carry the worker's traceback "
                                       "(Lightbus does); false: only the error's type and "
                                       "message"},
                    "schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "ttl": {"type": ["number", "null"], "exclusiveMinimum": 0},
                            "transport": _transport_choice(plugins, "schema"),
                        },
                    },
                },
            },
            # Lightbus 1.x keeps these two at the root; accepted and moved under `bus`.
            "service_name": _NAME,
            "process_name": _NAME,
            "apis": {
                "type": "object",
                "propertyNames": {"pattern": r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$"},
                "additionalProperties": api,
            },
            "plugins": {
                "type": "object",
                "properties": plugin_sections,
                "additionalProperties": {
                    "type": "object",
                    "properties": {"enabled": {"type": "boolean"}},
                },
            },
        },
    }


# -- reading ------------------------------------------------------------------------------


def read_text_file(location: str) -> str:
    path = Path(location[7:] if location.startswith("file://") else location).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def read_document(location: str, plugins: PluginManager) -> dict[str, Any]:
    """Read the config document at `location` with the config source for its scheme."""
    scheme = urllib.parse.urlsplit(location).scheme.lower()
    if len(scheme) <= 1:  # no scheme, or a Windows drive letter
        scheme = "file"
    loader = plugins.config_source(scheme)
    if loader is None:
        known = ", ".join(sorted(plugins.config_sources)) or "none"
        raise ConfigError(
            f"cannot read config from {location!r}: no config source handles {scheme!r} "
            f"(available: {known})"
        )
    loaded = loader(location)
    if isinstance(loaded, Mapping):
        return dict(loaded)
    return parse_document(loaded, location)


def parse_document(text: str | bytes, origin: str) -> dict[str, Any]:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        is_json = origin.lower().endswith(".json")
        document = json.loads(text) if is_json else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config {origin} is not valid JSON: line {exc.lineno}, column "
                          f"{exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        raise ConfigError(f"config {origin} is not valid YAML{where}: "
                          + (f"{context}, {problem}" if context else problem)) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config {origin} must be a mapping at the top, got "
                          f"{type(document).__name__}")
    return document


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(value: Any, environ: Mapping[str, str] | None = None, path: str = "") -> Any:
    """Replace `${NAME}` and `${NAME:-default}` in every string. A string that is exactly one
    reference takes the YAML type of what it expands to (`${PORT:-6379}` is an int)."""
    environ = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {k: substitute_env(v, environ, f"{path}.{k}" if path else str(k))
                for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, environ, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def expand(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{path or 'config'}: environment variable {name} is not set; set it or write "
            f"${{{name}:-default}}"
        )

    parts = value.split("$${")  # `$${` is a literal `${`
    whole = len(parts) == 1 and _ENV_REFERENCE.fullmatch(value)
    expanded = "${".join(_ENV_REFERENCE.sub(expand, part) for part in parts)
    return _scalar(expanded) if whole else expanded


_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][-+]?[0-9]+)?$")


def _scalar(text: str) -> Any:
    """The type a lone `${VAR}` takes: true/false, integers and decimals as such (like YAML
    1.2's core schema; `on`, `yes`, `off` stay strings), everything else a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.match(text.strip()):
        return int(text)
    if _FLOAT.match(text.strip()):
        return float(text)
    return text


def _path_of(error: jsonschema.ValidationError) -> str:
    parts = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else ("." if parts else "") + str(part))
    return "".join(parts) or "(top level)"


def validate_document(document: Mapping[str, Any], schema: Mapping[str, Any],
                      origin: str = "config") -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path)))
    if not errors:
        return
    lines = []
    for error in errors[:10]:
        best = jsonschema.exceptions.best_match([error])
        line = f"{_path_of(best)}: {best.message}"
        hint = best.schema.get("x-hint") if isinstance(best.schema, dict) else None
        if hint:
            line += f" ({hint})"
        lines.append(line)
    more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
    raise ConfigError(f"{origin} is invalid:\n  " + "\n  ".join(lines) + more)


# -- the result ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiConfig:
    """The settings for one API: `apis.default` overlaid with `apis.<name>`."""

    name: str
    rpc_timeout: float
    event_fire_timeout: float
    rpc_transport: dict[str, Any]
    result_transport: dict[str, Any]
    event_transport: dict[str, Any]
    max_concurrent_rpcs: int
    max_concurrent_events: int
    ordered: bool
    on_handler_error: str
    max_deliveries: int
    redelivery_delay: float
    validate: bool | dict[str, bool]
    strict_validation: bool

    def transport(self, kind: str) -> tuple[str, dict[str, Any]]:
        """(name, options) of the transport of `kind` for this API."""
        selection = getattr(self, TRANSPORT_KEYS[kind])
        ((name, options),) = selection.items()
        return name, dict(options or {})


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict) \
                and not key.endswith("transport"):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def default_process_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Config:
    """A validated config document with defaults applied."""

    def __init__(self, document: Mapping[str, Any] | None = None, *,
                 default_service_name: str = "service") -> None:
        document = dict(document or {})
        bus = dict(document.get("bus") or {})
        for key in ("service_name", "process_name"):
            if key in document:
                bus.setdefault(key, document[key])
        self.document = document
        self.bus: dict[str, Any] = _deep_merge(BUS_DEFAULTS, bus)
        if not self.bus["service_name"]:
            self.bus["service_name"] = default_service_name
        # A default process name follows the pid, so a forked child names itself anew.
        self._named_for_pid: int | None = None
        if not self.bus["process_name"]:
            self.bus["process_name"] = default_process_name()
            self._named_for_pid = os.getpid()
        apis = dict(document.get("apis") or {})
        self._api_default = _deep_merge(API_DEFAULTS, apis.pop("default", None) or {})
        self._api_overrides = apis
        self.plugins: dict[str, dict[str, Any]] = {
            name: dict(section or {}) for name, section in (document.get("plugins") or {}).items()
        }
        self._api_cache: dict[str, ApiConfig] = {}

    @property
    def service_name(self) -> str:
        return str(self.bus["service_name"])

    @property
    def process_name(self) -> str:
        if self._named_for_pid is not None and self._named_for_pid != os.getpid():
            self.bus["process_name"] = default_process_name()
            self._named_for_pid = os.getpid()
        return str(self.bus["process_name"])

    @property
    def api_names(self) -> list[str]:
        """The APIs with a section of their own (besides `default`)."""
        return sorted(self._api_overrides)

    def api(self, name: str) -> ApiConfig:
        found = self._api_cache.get(name)
        if found is None:
            merged = _deep_merge(self._api_default, self._api_overrides.get(name) or {})
            found = self._api_cache[name] = ApiConfig(name=name, **merged)
        return found

    def plugin(self, name: str) -> dict[str, Any]:
        """The `plugins.<name>` section (empty when absent)."""
        return self.plugins.get(name, {})

    def selected_transports(self) -> set[tuple[str, str]]:
        """Every (kind, name) any API (or the schema) may use."""
        selected = set()
        for api_name in ("default", *self._api_overrides):
            api = self.api(api_name)
            for kind in TRANSPORT_KEYS:
                selected.add((kind, api.transport(kind)[0]))
        selected.add(("schema", self.schema_transport()[0]))
        return selected

    def schema_transport(self) -> tuple[str, dict[str, Any]]:
        ((name, options),) = self.bus["schema"]["transport"].items()
        return name, dict(options or {})


def load_config(source: str | os.PathLike[str] | Mapping[str, Any] | None,
                plugins: PluginManager, *, default_service_name: str = "service",
                environ: Mapping[str, str] | None = None) -> Config:
    """Read, substitute, validate and wrap the config. `source` None means `$BUS_CONFIG`,
    or no file at all (every default)."""
    environ = os.environ if environ is None else environ
    if source is None:
        source = environ.get("BUS_CONFIG") or None
    if source is None:
        document: dict[str, Any] = {}
        origin = "config"
    elif isinstance(source, Mapping):
        document, origin = dict(source), "config"
    else:
        origin = os.fspath(source)
        document = read_document(origin, plugins)
    document = _accept_lightbus_settings(substitute_env(document, environ), origin)
    schema = config_schema(plugins)
    validate_document(document, schema, origin)
    _apply_plugin_defaults(document, schema)
    return Config(document, default_service_name=default_service_name)


# Settings of a Lightbus 1.x config that mean nothing to Bus: dropped with a warning, so an
# existing config loads as it is. (path within the document; "*" is any API)
LIGHTBUS_ONLY = (
    ("bus", "schema", "human_readable"),
    ("apis", "*", "cast_values"),
    ("apis", "*", "event_listener_setup_timeout"),
)


def _accept_lightbus_settings(document: dict[str, Any], origin: str) -> dict[str, Any]:
    bus = document.get("bus")
    if isinstance(bus, dict) and isinstance(bus.get("log_level"), str):
        bus["log_level"] = bus["log_level"].upper()  # Lightbus writes `info`
    plugins = document.get("plugins")
    if isinstance(plugins, dict):
        _rename_lightbus_plugins(plugins, origin)
    for first, second, key in LIGHTBUS_ONLY:
        sections = document.get(first)
        if not isinstance(sections, dict):
            continue
        names = list(sections) if second == "*" else [second]
        for name in names:
            section = sections.get(name)
            if isinstance(section, dict) and key in section:
                del section[key]
                warnings.warn(f"{origin}: {first}.{name}.{key} is a Lightbus setting with no "
                              "effect in Bus; ignored", UserWarning, stacklevel=3)
    return document


def _rename_lightbus_plugins(plugins: dict[str, Any], origin: str) -> None:
    """Lightbus's `internal_state` is bus-state's `state` (same events, same options);
    `internal_metrics` has no Bus equivalent and is dropped."""
    if "internal_state" in plugins:
        section = plugins.pop("internal_state")
        if "state" in plugins:
            warnings.warn(f"{origin}: plugins.internal_state (Lightbus) ignored: "
                          "plugins.state is given too", UserWarning, stacklevel=4)
        else:
            plugins["state"] = section
    if "internal_metrics" in plugins:
        del plugins["internal_metrics"]
        warnings.warn(f"{origin}: plugins.internal_metrics is a Lightbus plugin with no Bus "
                      "equivalent; ignored (Prometheus metrics: plugins.metrics)",
                      UserWarning, stacklevel=4)


def _apply_plugin_defaults(document: dict[str, Any], schema: Mapping[str, Any]) -> None:
    """Fill each installed plugin's section (present or not) with the `default`s its schema
    declares (top-level keys), so plugins read their options without re-stating defaults."""
    sections = schema["properties"]["plugins"]["properties"]
    plugins = document.setdefault("plugins", {})
    for name, section_schema in sections.items():
        defaults = {key: copy.deepcopy(prop["default"])
                    for key, prop in section_schema.get("properties", {}).items()
                    if isinstance(prop, Mapping) and "default" in prop}
        section = plugins.get(name)
        if section is None and defaults:
            plugins[name] = defaults  # absent: the plugin still reads its defaults
        elif isinstance(section, dict):
            for key, value in defaults.items():
                section.setdefault(key, value)
