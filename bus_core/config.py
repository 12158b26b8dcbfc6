"""The one config loader: read (file, URL, plugin source), substitute `${ENV}`, validate
against the schema assembled from the kernel's part and every plugin's part, apply defaults.

    bus:      service_name, process_name, serializer, drain_timeout, max_message_size, ...
    apis:     default: {...} applies to every API; <api name>: {...} overrides it
    plugins:  <plugin name>: {enabled: true, ...}
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
import secrets
import socket
import string
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# jsonschema and PyYAML load on first use (validating, reading YAML): `import bus_core` and
# `bus --help` do without them.
if TYPE_CHECKING:
    import jsonschema
    import yaml

from bus_core.errors import ConfigError
from bus_core.redaction import redact_text, redact_url

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
    "idempotent": False,
    "idempotent_rpcs": [],
    "local": False,
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
    "event_loop": "asyncio",
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
        "x-transport-kind": kind,
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
            "idempotent": {
                "type": "boolean",
                "description": "every RPC of the API may run again: a call whose worker "
                               "died is re-queued for another worker instead of failing "
                               "with RpcWorkerLost"},
            "idempotent_rpcs": {
                "type": "array", "uniqueItems": True,
                "items": {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9_]*$"},
                "description": "names of the API's RPCs that may run again (as "
                               "@rpc(idempotent=True) declares): re-queued if their worker "
                               "dies"},
            "local": {
                "type": "boolean",
                "description": "a call of this API from a process that registers it runs "
                               "there, without the RPC transport (same checks, casting, "
                               "hooks and errors; no queue, no load sharing)"},
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
                    "log_level": {"enum": [None, "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]},
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
                    "event_loop": {
                        "enum": ["asyncio", "uvloop"],
                        "description": "the event loop of `bus run` and of the client's "
                                       "background thread (sync calls): uvloop needs "
                                       "`pip install bus-core[fast]`"},
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


# Bounds on what a config document may cost, wherever it comes from: a config is a few KB.
MAX_CONFIG_BYTES = 1024 * 1024  # the text read from a file or URL
MAX_CONFIG_NODES = 100_000  # values (mappings, lists, scalars) once YAML aliases are expanded
MAX_CONFIG_DEPTH = 32  # mappings/lists inside each other
_INT64 = 2**63


def read_text_file(location: str) -> str:
    """The `file` config source: a plain path or a `file://` URL, read as UTF-8 text (at
    most MAX_CONFIG_BYTES, so `/dev/zero` is an error rather than a hang)."""
    path = Path(location[7:] if location.startswith("file://") else location).expanduser()
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    return decode_document(data, str(path))


def decode_document(data: bytes, origin: str) -> str:
    """`data` as text: refused past MAX_CONFIG_BYTES, and when it is not UTF-8 (naming the
    line and column of the first bad byte, where an editor can find it)."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {origin} is larger than {MAX_CONFIG_BYTES // 1024} KiB; "
                          "a config is a few KB: is this the right file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        raise ConfigError(f"config {origin} is not valid UTF-8 text: line {line}, column "
                          f"{column} (byte {offset}: {exc.reason}); save it as UTF-8") from None


def read_document(location: str, plugins: PluginManager) -> dict[str, Any]:
    """Read the config document at `location` with the config source for its scheme.
    Messages show `location` with its credentials masked."""
    shown = redact_url(location)
    found = _SCHEME.match(location)
    scheme = found.group(1).lower() if found else ""
    if len(scheme) <= 1:  # no scheme, or a Windows drive letter
        scheme = "file"
    loader = plugins.config_source(scheme)
    if loader is None:
        known = ", ".join(sorted(plugins.config_sources)) or "none"
        raise ConfigError(
            f"cannot read config from {shown!r}: no config source handles {scheme!r} "
            f"(available: {known})"
        )
    try:
        loaded = loader(location)
    except ConfigError as exc:  # a plugin's source may quote the location as it is
        raise ConfigError(redact_text(str(exc))) from None
    except Exception as exc:
        raise ConfigError(f"cannot read config from {shown}: the {scheme!r} config source "
                          f"failed: {type(exc).__name__}: {redact_text(str(exc))}") from None
    if isinstance(loaded, Mapping):
        return dict(loaded)
    return parse_document(loaded, shown)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


@functools.cache
def _config_loader() -> type:
    """YAML's safe loader, refusing a key given twice in one mapping (YAML forbids it;
    PyYAML would silently keep the last one). Keys merged in with `<<` may be overridden."""
    import yaml

    class ConfigLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode,
                              deep: bool = False) -> dict[Any, Any]:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, yaml.Node] = {}
                for key_node, _ in node.value:
                    if not isinstance(key_node, yaml.ScalarNode) \
                            or key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node)
                    first = seen.setdefault(key, key_node)
                    if first is not key_node:
                        raise yaml.constructor.ConstructorError(
                            None, None,
                            f"key {key!r} is given twice in one mapping (line "
                            f"{first.start_mark.line + 1} and line "
                            f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return ConfigLoader


def _unique_json_object(origin: str) -> Any:
    def pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        document: dict[str, Any] = {}
        for key, value in pairs:
            if key in document:
                raise ConfigError(f"config {origin} is not valid: key {key!r} is given twice "
                                  "in one JSON object; keep one")
            document[key] = value
        return document
    return pairs_to_dict


def parse_document(text: str | bytes, origin: str) -> dict[str, Any]:
    """The YAML (or, for a name ending in .json, JSON) `text` as a mapping; every way it can
    be wrong is a ConfigError naming `origin` (and the line where the parser knows it)."""
    if isinstance(text, bytes):
        text = decode_document(text, origin)
    elif len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {origin} is larger than {MAX_CONFIG_BYTES // 1024} KiB; "
                          "a config is a few KB: is this the right file?")
    import yaml

    try:
        is_json = origin.lower().split("?", 1)[0].endswith(".json")
        document = (json.loads(text, object_pairs_hook=_unique_json_object(origin)) if is_json
                    else yaml.load(text, Loader=_config_loader()))  # a SafeLoader
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
    except RecursionError:
        raise ConfigError(f"config {origin} nests mappings/lists too deeply to read (at most "
                          f"{MAX_CONFIG_DEPTH} levels are allowed)") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config {origin} must be a mapping at the top, got "
                          f"{type(document).__name__}")
    return document


def check_size(document: Any, origin: str) -> None:
    """Refuse a document that would expand past MAX_CONFIG_NODES values or nest deeper than
    MAX_CONFIG_DEPTH, before anything copies it: YAML aliases let a 3 KB file stand for
    billions of values ("billion laughs"), and an alias may even refer to itself. Counts as
    if expanded, but stops at the limit, so the check costs at most the limit."""
    count = 0
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        if depth >= MAX_CONFIG_DEPTH:
            raise ConfigError(f"config {origin} nests mappings/lists more than "
                              f"{MAX_CONFIG_DEPTH} levels deep (YAML aliases that refer to "
                              "themselves?)")
        count += len(children)
        if count > MAX_CONFIG_NODES:
            raise ConfigError(f"config {origin} expands to more than {MAX_CONFIG_NODES} values "
                              "(YAML aliases repeating each other?); a config needs far fewer")
        stack.extend((child, depth + 1) for child in children)


def check_values(document: Any, origin: str) -> None:
    """Refuse what JSON Schema lets through but nothing can use, anywhere in the document
    (so every plugin's options are covered too): NaN and infinite numbers (YAML `.nan`,
    `.inf`, JSON `NaN`, `1e309`; JSON Schema's "number" accepts them), integers beyond 64
    bits, and keys that are not strings."""
    problems: list[str] = []
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack and len(problems) < 10:
        value, path = stack.pop()
        where = path or "(top level)"
        if isinstance(value, Mapping):
            for key, child in reversed(list(value.items())):
                if isinstance(key, bool):
                    problems.append(f"{where}: key {as_yaml(key)} is not a string (YAML reads "
                                    "an unquoted on, off, yes, no, true or false as true or "
                                    "false: quote the key, e.g. 'on')")
                    continue
                if not isinstance(key, str):
                    problems.append(f"{where}: key {as_yaml(key)} is not a string (quote it: "
                                    f"'{as_yaml(key)}')")
                    continue
                stack.append((child, f"{path}.{key}" if path else key))
        elif isinstance(value, list | tuple):
            stack.extend((child, f"{path}[{i}]") for i, child in reversed(list(enumerate(value))))
        elif isinstance(value, float) and not math.isfinite(value):
            why = "is not a number" if math.isnan(value) else (
                "is not a finite number (a number too large for a float, such as 1e309, is "
                "read as inf)")
            problems.append(f"{where}: {value} {why}; give a finite number such as 5")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INT64:
            problems.append(f"{where}: {value:.3g} is too large (integers must fit in 64 bits)")
    if problems:
        raise ConfigError(f"{origin} is invalid:\n  " + "\n  ".join(problems))


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(value: Any, environ: Mapping[str, str] | None = None, path: str = "",
                   origin: str = "") -> Any:
    """Replace `${NAME}` and `${NAME:-default}` in every string. A string that is exactly one
    reference takes the YAML type of what it expands to (`${PORT:-6379}` is an int). An unset
    variable without a default is a ConfigError naming `origin` (the file) and the path."""
    environ = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {k: substitute_env(v, environ, f"{path}.{k}" if path else str(k), origin)
                for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, environ, f"{path}[{i}]", origin)
                for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def expand(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        where = f"{origin}: " if origin and origin != "config" else ""
        raise ConfigError(
            f"{where}{path or 'config'}: environment variable {name} is not set; set it or "
            f"write ${{{name}:-default}}"
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


# Checks JSON Schema cannot express, by "format" name (a transport's URL: its port range,
# its database number...). Formats nobody registered are not checked (JSON Schema's rule).
_FORMATS: dict[str, Callable[[str], str | None]] = {}


def register_format(name: str, problem: Callable[[str], str | None]) -> None:
    """Let an options schema say `{"type": "string", "format": name}`: `problem(value)`
    returns what is wrong with a string value (None when it is fine), reported as
    `<path>: <problem>` by create() and `bus config check`. Plugins register their formats
    when imported (the Redis plugin's `bus-redis-url`), so the kernel stays free of them."""
    _FORMATS[name] = problem


def _format_checker() -> jsonschema.FormatChecker:
    import jsonschema

    checker = jsonschema.FormatChecker(formats=())
    for name, problem in _FORMATS.items():
        def check(value: Any, problem: Callable[[str], str | None] = problem) -> bool:
            found = problem(value) if isinstance(value, str) else None
            if found:
                raise ValueError(found)
            return True
        checker.checks(name, raises=ValueError)(check)
    return checker


def as_yaml(value: Any, limit: int = 80) -> str:
    """`value` as it would be written in YAML (`true`, `null`, `{enabled: true}`, `'text'`),
    for messages about a config, which is YAML to its reader, not Python."""
    if isinstance(value, str):
        text = "'" + value.replace("'", "''") + "'"
    else:
        import yaml

        try:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6,
                                  allow_unicode=True).strip()
        except yaml.YAMLError:
            text = repr(value)
        text = text.removesuffix("\n...").removesuffix("...").strip()
    return text if len(text) <= limit else text[:limit - 4] + " ..."


def _error_line(error: jsonschema.ValidationError,
                plugins: PluginManager | None) -> str:
    """One line for one schema error: its path, and the problem in the config's own terms."""
    path = _path_of(error)
    schema = error.schema if isinstance(error.schema, dict) else {}
    message = error.message
    if schema.get("writeOnly"):
        # A secret (a token, a password: `writeOnly` in the schema): say what is wrong
        # with it, never the value itself.
        message = message.replace(repr(error.instance), "(the value, hidden)")
    elif error.validator == "format" and error.cause is not None:
        message = str(error.cause)  # the check's own words, not "... is not a 'format'"
    elif message.startswith(repr(error.instance)):
        message = as_yaml(error.instance) + message[len(repr(error.instance)):]
    kind = schema.get("x-transport-kind")
    if kind and error.validator == "additionalProperties" and plugins is not None \
            and isinstance(error.instance, Mapping):
        known = [name for (k, name) in plugins.transports if k == kind]
        unknown = [str(name) for name in error.instance if name not in known]
        if unknown:
            return f"{path}: {unknown[0]!r} was unexpected: " + plugins.missing(
                "transport", unknown[0], known, kind=kind)
    if error.validator == "type" and "object" in _as_list(error.validator_value):
        key = path.rsplit(".", 1)[-1]
        fix = (f"write {key}: {{enabled: {as_yaml(error.instance)}}}"
               if isinstance(error.instance, bool) and path.startswith("plugins.")
               else f"write {key}: followed by its keys, one per line")
        return f"{path}: {as_yaml(error.instance)} is not a mapping; {fix}"
    line = f"{path}: {message}"
    hint = schema.get("x-hint")
    return f"{line} ({hint})" if hint else line


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def validate_document(document: Mapping[str, Any], schema: Mapping[str, Any],
                      origin: str = "config", plugins: PluginManager | None = None) -> None:
    """Validate `document` against `schema`; a ConfigError lists up to ten problems, each
    with its path. `plugins` lets a missing transport name the distribution to install."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema, format_checker=_format_checker())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path)))
    if not errors:
        return
    lines = [_error_line(jsonschema.exceptions.best_match([error]), plugins)
             for error in errors[:10]]
    more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
    # Messages quote the bad value: a URL in it loses its password.
    raise ConfigError(redact_text(f"{origin} is invalid:\n  " + "\n  ".join(lines) + more))


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
    idempotent: bool
    idempotent_rpcs: list[str]
    local: bool

    def is_idempotent(self, procedure_name: str) -> bool:
        """Whether the config declares `procedure_name` of this API safe to run twice."""
        return self.idempotent or procedure_name in self.idempotent_rpcs

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


MAX_CACHED_APIS = 1000


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
            found = ApiConfig(name=name, **merged)
            # API names can come from the wire (a call naming an API nobody serves): the
            # cache keeps a bounded number of them, so they cannot grow it for ever.
            if name in self._api_overrides or len(self._api_cache) < MAX_CACHED_APIS:
                self._api_cache[name] = found
        return found

    def plugin(self, name: str) -> dict[str, Any]:
        """The `plugins.<name>` section (empty when absent)."""
        return self.plugins.get(name, {})

    def selected_transports(self) -> set[tuple[str, str]]:
        """Every (kind, name) any API (or the schema) may use."""
        return {(kind, name) for _, kind, name in self.transport_selections()}

    def transport_selections(self) -> list[tuple[str, str, str]]:
        """(config path, kind, name) of every transport selection, defaults included
        (`apis.default.rpc_transport`, ..., `bus.schema.transport`)."""
        selections = []
        for api_name in ("default", *self._api_overrides):
            api = self.api(api_name)
            for kind, key in TRANSPORT_KEYS.items():
                selections.append((f"apis.{api_name}.{key}", kind, api.transport(kind)[0]))
        selections.append(("bus.schema.transport", "schema", self.schema_transport()[0]))
        return selections

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
        location = os.fspath(source)
        origin = redact_url(location)  # what messages show
        document = read_document(location, plugins)
    check_size(document, origin)
    document = substitute_env(document, environ, origin=origin)
    check_values(document, origin)
    document = _accept_lightbus_settings(document, origin, plugins)
    schema = config_schema(plugins)
    validate_document(document, schema, origin, plugins)
    _apply_plugin_defaults(document, schema)
    config = Config(document, default_service_name=default_service_name)
    check_against_plugins(config, plugins, origin)
    return config


def check_against_plugins(config: Config, plugins: PluginManager, origin: str = "config") -> None:
    """What the schema cannot say, because it depends on what is installed and loaded: the
    serializer exists; every plugin the config enables loaded (one that failed would leave
    a validation, audit or security plugin silently off); no plugin whose transport or
    serializer the config selects is switched off. Raises ConfigError naming `origin`."""
    problems: list[str] = []
    serializer = config.bus["serializer"]
    if serializer not in plugins.serializers:
        problems.append("bus.serializer: " + plugins.missing("serializer", serializer,
                                                             list(plugins.serializers)))
    for path, kind, name in config.transport_selections():
        if (kind, name) not in plugins.transports:  # a default: explicit ones are validated
            known = [n for (k, n) in plugins.transports if k == kind]
            problems.append(f"{path} (default {name}): "
                            + plugins.missing("transport", name, known, kind=kind))
    in_use = _plugins_in_use(config, plugins)
    for name, section in config.plugins.items():
        flag = section.get("enabled") if isinstance(section, Mapping) else None
        info = plugins.infos.get(name)
        if flag is True and info is not None and info.status == "failed":
            problems.append(f"plugins.{name}.enabled is true, but plugin {name!r} "
                            f"({info.distribution or info.module}) failed to load: "
                            f"{info.error}")
        elif flag is False and name in in_use:
            where = in_use[name]
            more = f" (and {len(where) - 1} more)" if len(where) > 1 else ""
            problems.append(
                f"plugins.{name}.enabled is false, but the config uses its {where[0][1]} at "
                f"{where[0][0]}{more}: messages would still go through it. Select another "
                f"one there, or remove `enabled: false`")
    if problems:
        raise ConfigError(f"{origin} is invalid:\n  " + "\n  ".join(problems))


def _plugins_in_use(config: Config, plugins: PluginManager) -> dict[str, list[tuple[str, str]]]:
    """plugin name -> [(config path, "memory transport"/"json serializer")] it serves."""
    found: dict[str, list[tuple[str, str]]] = {}
    for path, kind, name in config.transport_selections():
        entry = plugins.transports.get((kind, name))
        if entry is not None:
            found.setdefault(entry.plugin_name, []).append((path, f"{name} transport"))
    serializer = plugins.serializers.get(config.bus["serializer"])
    if serializer is not None:
        found.setdefault(serializer[1], []).append(
            ("bus.serializer", f"{config.bus['serializer']} serializer"))
    return found


# -- Lightbus 1.x configs ------------------------------------------------------------------
#
# A Lightbus 1.x config loads as it is: each Lightbus setting is read as its Bus equivalent,
# or dropped with one warning naming it (origin and path). Kernel settings are handled here;
# a transport's options are translated by the plugin that registered the transport (the
# kernel knows no transport's option names), through `register_lightbus_options`.

# Settings of a Lightbus 1.x config that mean nothing to Bus: dropped with a warning, so an
# existing config loads as it is. (path within the document; "*" is any API)
LIGHTBUS_ONLY = (
    ("bus", "schema", "human_readable", "Bus stores schemas in one form"),
    ("apis", "*", "cast_values", "Bus always casts received values by type hints"),
    ("apis", "*", "event_listener_setup_timeout",
     "Bus has no separate timeout for setting a listener up"),
)

LightbusTranslator = Callable[[dict[str, Any]], Mapping[str, str]]
"""Rewrites one transport's options (a fresh dict it may change) from Lightbus's option names
and values to the transport's own, and returns {option path, dotted: why it is ignored} for
the Lightbus options it removed because Bus has no use for them."""

_LIGHTBUS_OPTIONS: dict[tuple[str, str], LightbusTranslator] = {}


def register_lightbus_options(kind: str, name: str, translate: LightbusTranslator) -> None:
    """Let the `name` transport of `kind` take Lightbus 1.x's options for its counterpart:
    before validation, `translate(options)` rewrites each selection of that transport in a
    config, and the kernel warns once per option it reports ignored. Plugins register when
    imported (the Redis plugin for its four transports), like `register_format`."""
    _LIGHTBUS_OPTIONS[(kind, name)] = translate


# Lightbus expands these in service_name and process_name (a new value at every start).
_LIGHTBUS_NAME_FIELD = re.compile(r"\{(hostname|pid|random4|random8|random16|friendly)\}")


def _lightbus_name(template: str) -> str:
    """`template` with Lightbus's placeholders filled in as Lightbus fills them."""
    def fill(match: re.Match[str]) -> str:
        field = match.group(1)
        if field == "hostname":
            return socket.gethostname().lower()
        if field == "pid":
            return str(os.getpid())
        size = 8 if field == "friendly" else int(field.removeprefix("random"))
        return "".join(secrets.choice(string.ascii_lowercase) for _ in range(size))
    return _LIGHTBUS_NAME_FIELD.sub(fill, template)


def _warn_ignored(origin: str, path: str, why: str, depth: int = 1) -> None:
    """One warning for one ignored Lightbus setting, shown at the caller of load_config
    (`depth`: the functions between this one and load_config)."""
    warnings.warn(f"{origin}: {path} is a Lightbus setting with no effect in Bus; ignored "
                  f"({why})", UserWarning, stacklevel=3 + depth)


def _accept_lightbus_settings(document: dict[str, Any], origin: str,
                              plugins: PluginManager | None = None) -> dict[str, Any]:
    """A Lightbus 1.x config as the Bus config of the same meaning (see the module's part
    above); a Bus config comes back as it is, with no warning."""
    bus = document.get("bus")
    if isinstance(bus, dict) and isinstance(bus.get("log_level"), str):
        bus["log_level"] = bus["log_level"].upper()  # Lightbus writes `info`
    _accept_lightbus_names(document)
    plugin_sections = document.get("plugins")
    if isinstance(plugin_sections, dict):
        _rename_lightbus_plugins(plugin_sections, origin)
    for first, second, key, why in LIGHTBUS_ONLY:
        sections = document.get(first)
        if not isinstance(sections, dict):
            continue
        names = list(sections) if second == "*" else [second]
        for name in names:
            section = sections.get(name)
            if isinstance(section, dict) and key in section:
                del section[key]
                _warn_ignored(origin, f"{first}.{name}.{key}", why)
    _translate_lightbus_transports(document, origin, plugins)
    return document


def _accept_lightbus_names(document: dict[str, Any]) -> None:
    """Root `service_name`/`process_name` (Lightbus's place) move under `bus` (where a value
    already there wins); Lightbus's `{hostname}`, `{pid}`, `{random4}`... are filled in.
    `{hostname}-{pid}` is Bus's own default process name, which a forked child renews."""
    bus = document.get("bus")
    if bus is None and any(key in document for key in ("service_name", "process_name")):
        bus = document["bus"] = {}
    if not isinstance(bus, dict):
        return
    for key in ("service_name", "process_name"):
        if key in document:
            bus.setdefault(key, document.pop(key))
        value = bus.get(key)
        if not isinstance(value, str) or not _LIGHTBUS_NAME_FIELD.search(value):
            continue
        if key == "process_name" and value == "{hostname}-{pid}":
            del bus[key]
        else:
            bus[key] = _lightbus_name(value)


def _translate_lightbus_transports(document: dict[str, Any], origin: str,
                                   plugins: PluginManager | None) -> None:
    """Each transport selection whose transport registered a Lightbus translator gets its
    options translated (a copy: YAML aliases may share one mapping between selections)."""
    places: list[tuple[str, dict[str, Any], str, str]] = []
    apis = document.get("apis")
    if isinstance(apis, dict):
        for api_name, section in apis.items():
            if isinstance(section, dict):
                places += [(f"apis.{api_name}", section, key, kind)
                           for kind, key in TRANSPORT_KEYS.items()]
    bus = document.get("bus")
    schema = bus.get("schema") if isinstance(bus, dict) else None
    if isinstance(schema, dict):
        places.append(("bus.schema", schema, "transport", "schema"))
    for prefix, section, key, kind in places:
        selection = section.get(key)
        if not isinstance(selection, dict) or len(selection) != 1:
            continue  # validation reports it
        ((name, options),) = selection.items()
        translate = _LIGHTBUS_OPTIONS.get((kind, name))
        if translate is None or not isinstance(options, dict) or (
                plugins is not None and (kind, name) not in plugins.transports):
            continue
        translated = copy.deepcopy(options)
        ignored = translate(translated)
        section[key] = {name: translated}
        for option, why in ignored.items():
            _warn_ignored(origin, f"{prefix}.{key}.{name}.{option}", why, depth=2)


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
