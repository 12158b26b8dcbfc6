"""The `redis` plugin: registers the four Redis transports by name, with options schemas
whose `url` is checked when the config is loaded (format `bus-redis-url`), not at the first
command, and translates the options of Lightbus 1.x's Redis transports to theirs (so a
Lightbus config loads as it is: see `lightbus_options`)."""

from __future__ import annotations

import copy
import functools
import urllib.parse
from collections.abc import Mapping
from typing import Any

from bus_core import hookimpl
from bus_core.config import register_format, register_lightbus_options
from bus_redis.options import EVENT_OPTIONS, RESULT_OPTIONS, RPC_OPTIONS, SCHEMA_OPTIONS
from bus_redis.urls import DEFAULT_URL, URL_OPTIONS, url_problem

URL_FORMAT = "bus-redis-url"
register_format(URL_FORMAT, url_problem)


def checked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A transport's options schema with its `url` checked by `url_problem`."""
    checked = copy.deepcopy(dict(options))
    url = checked.get("properties", {}).get("url")
    if isinstance(url, dict):
        url["format"] = URL_FORMAT
    return checked


def _lazy(module: str, name: str) -> Any:
    """A factory that imports its transport class (and redis-py) on first use, so listing
    plugins or `bus --help` never pays for them."""
    def make(**options: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(f"bus_redis.{module}"), name)(**options)

    make.__qualname__ = make.__name__ = name
    return make


@hookimpl
def bus_register_transports(register: Any) -> None:
    register("rpc", "redis", _lazy("rpc", "RedisRpcTransport"), checked_options(RPC_OPTIONS))
    register("result", "redis", _lazy("result", "RedisResultTransport"),
             checked_options(RESULT_OPTIONS))
    register("event", "redis", _lazy("event", "RedisEventTransport"),
             checked_options(EVENT_OPTIONS))
    register("schema", "redis", _lazy("schema", "RedisSchemaTransport"),
             checked_options(SCHEMA_OPTIONS))


# -- Lightbus 1.x options -----------------------------------------------------------------

_SERIALIZER = ("Bus encodes with bus.serializer, whose json serializer writes Lightbus's "
               "format")
_RESTART = "Bus's connections retry and reconnect by themselves"

# Options of Lightbus's Redis transports that Bus has no use for, by transport kind, with why.
LIGHTBUS_DROPPED: dict[str, dict[str, str]] = {
    "rpc": {
        "rpc_timeout": "a queued call stays valid for its caller's timeout "
                       "(apis.<api>.rpc_timeout)",
        "rpc_retry_delay": _RESTART,
        "consumption_restart_delay": _RESTART,
        "serializer": _SERIALIZER,
        "deserializer": _SERIALIZER,
    },
    "result": {
        "rpc_timeout": "a caller waits for its result up to its own timeout "
                       "(apis.<api>.rpc_timeout)",
        "serializer": _SERIALIZER,
        "deserializer": _SERIALIZER,
    },
    "event": {
        "reclaim_batch_size": "a reclaim pass takes at most as many entries as the listener "
                              "has room for",
        "consumption_restart_delay": _RESTART,
        "service_name": "groups and consumers are named after service_name and process_name",
        "consumer_name": "groups and consumers are named after service_name and process_name",
        "serializer": _SERIALIZER,
        "deserializer": _SERIALIZER,
    },
    "schema": {},
}

# Lightbus option -> the Bus option of the same meaning, by transport kind. A value of 0 for
# these means "never" / "no limit" in Lightbus, which Bus writes as null.
LIGHTBUS_RENAMED: dict[str, dict[str, str]] = {
    "event": {"acknowledgement_timeout": "claim_idle", "consumer_ttl": "forget_consumers_after"},
}
_ZERO_IS_NULL = {"forget_consumers_after", "max_stream_length"}


def lightbus_options(kind: str, options: dict[str, Any]) -> dict[str, str]:
    """Rewrite the options of a Redis transport of `kind`, in place, from Lightbus 1.x's
    names and values to Bus's; return {Lightbus option (dotted path): why it is ignored}
    for those Bus has no use for. Options Bus shares with Lightbus (url, batch_size,
    stream_use, max_stream_length, reclaim_interval, result_ttl) stay as they are."""
    ignored: dict[str, str] = {}
    for key, why in LIGHTBUS_DROPPED.get(kind, {}).items():
        if key in options:
            del options[key]
            ignored[key] = why
    for old, new in LIGHTBUS_RENAMED.get(kind, {}).items():
        if old not in options:
            continue
        value = options.pop(old)
        if new in options:
            ignored[old] = f"{new} is given too"
        else:
            options[new] = None if value == 0 and new in _ZERO_IS_NULL else value
    if options.get("max_stream_length") == 0:  # Lightbus: 0 (or null) means no trimming
        options["max_stream_length"] = None
    if "connection_parameters" in options:
        parameters = options.pop("connection_parameters")
        if isinstance(parameters, Mapping):
            for key, why in _connection_parameters(options, dict(parameters)).items():
                ignored[f"connection_parameters.{key}"] = why
        elif parameters is not None:
            ignored["connection_parameters"] = "it is not a mapping"
    return ignored


def _connection_parameters(options: dict[str, Any], parameters: dict[str, Any]
                           ) -> dict[str, str]:
    """aioredis's pool arguments as Bus's: `maxsize` is `max_connections` (at least 2);
    `db`, `password` and `timeout` (to connect) go into the URL unless it has them (as in
    aioredis, the URL wins); `ssl: true` makes it `rediss://`. Returns the ignored ones."""
    ignored: dict[str, str] = {}
    url = str(options.get("url") or DEFAULT_URL)
    if "maxsize" in parameters:
        maxsize = parameters.pop("maxsize")
        if "max_connections" in options:
            ignored["maxsize"] = "max_connections is given too"
        elif isinstance(maxsize, int) and not isinstance(maxsize, bool):
            options["max_connections"] = max(2, maxsize)
        else:
            ignored["maxsize"] = f"{maxsize!r} is not a number of connections"
    if "minsize" in parameters:
        del parameters["minsize"]
        ignored["minsize"] = "connections are opened as they are needed"
    for key, option in (("db", "db"), ("password", "password"),
                        ("timeout", "socket_connect_timeout")):
        if key not in parameters:
            continue
        value = parameters.pop(key)
        if value is None:
            continue
        url, why = _url_with(url, option, value)
        if why:
            ignored[key] = why
    if "ssl" in parameters:
        ssl = parameters.pop("ssl")
        scheme, sep, rest = url.partition("://")
        if ssl and scheme.lower() in ("redis", "redis+sentinel"):
            url = f"{scheme}s{sep}{rest}"
        elif ssl and not scheme.lower().startswith("rediss"):
            ignored["ssl"] = f"{scheme}:// has no TLS"
    for key in parameters:
        ignored[key] = "not a connection setting of Bus's (see the URL's options)"
    if url != str(options.get("url") or DEFAULT_URL):
        options["url"] = url
    return ignored


def _url_with(url: str, option: str, value: Any) -> tuple[str, str | None]:
    """`url` with the query option `option=value` added; or `url` and why not (the URL
    already has it, or its scheme takes no such option)."""
    scheme = url.partition("://")[0]
    if option not in URL_OPTIONS.get(scheme.lower(), {}):
        return url, f"{scheme}:// URLs take no {option}"
    parts = urllib.parse.urlsplit(url)
    given = {name for name, _ in urllib.parse.parse_qsl(parts.query)}
    has_db_path = scheme.lower() in ("redis", "rediss") and parts.path not in ("", "/")
    if option in given or (option == "db" and has_db_path) \
            or (option == "password" and parts.password is not None):
        return url, f"the url gives the {option} (in Lightbus too, the URL's wins)"
    text = str(value).lower() if isinstance(value, bool) else str(value)
    pair = urllib.parse.urlencode({option: text})
    base, hash_mark, fragment = url.partition("#")
    joined = f"{base}{'&' if '?' in base else '?'}{pair}"
    return f"{joined}{hash_mark}{fragment}", None


for _kind in ("rpc", "result", "event", "schema"):
    register_lightbus_options(_kind, "redis", functools.partial(lightbus_options, _kind))
