"""Redis URLs: which forms and query options Bus takes, and why one is refused.

Checked when the config is loaded (`bus config check`, create()) and again when a pool is
made. Free of redis-py, so the plugin can register its config checks without importing it.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Callable

from bus_core.errors import ConfigError
from bus_core.redaction import redact_url as redact

DEFAULT_URL = "redis://127.0.0.1:6379/0"


# -- URLs ---------------------------------------------------------------------------------
#
# Checked when the config is loaded (`bus config check`, create()) and again when a pool is
# made, so a URL redis-py would misread (`/abc` silently meaning db 0) or refuse only at the
# first command (TypeError, ValueError) is a clear error naming the setting instead.

DATABASES_ENV = "BUS_REDIS_DATABASES"  # how many databases the servers have (default 16)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _seconds(text: str) -> str | None:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        return f"{text!r} is not a positive number of seconds"
    return None


def _whole_seconds(text: str) -> str | None:
    if not text.isdigit():
        return f"{text!r} is not a whole number of seconds"
    return None


def _boolean(text: str) -> str | None:
    if text.lower() not in _TRUE + _FALSE:
        return f"{text!r} is not true or false"
    return None


def _database(text: str) -> str | None:
    limit = os.environ.get(DATABASES_ENV, "")
    databases = int(limit) if limit.isdigit() and int(limit) > 0 else 16
    if not text.isdigit():
        return f"{text!r} is not a database number (0 to {databases - 1})"
    if int(text) >= databases:
        return (f"database {int(text)} is out of range 0-{databases - 1} (redis-server has 16 "
                f"unless its `databases` setting says more; then set {DATABASES_ENV})")
    return None


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        return None if text in choices else f"{text!r} is not one of {', '.join(choices)}"
    return check


def _anything(text: str) -> str | None:
    return None


# Query options by scheme: what redis-py takes from a URL and Bus lets through, with checks.
_OPTIONS: dict[str, Callable[[str], str | None]] = {
    "db": _database, "username": _anything, "password": _anything, "client_name": _anything,
    "socket_timeout": _seconds, "socket_connect_timeout": _seconds,
    "health_check_interval": _whole_seconds,
}
_TCP_OPTIONS = {"socket_keepalive": _boolean}
_TLS_OPTIONS = {
    "ssl_cert_reqs": _one_of("none", "optional", "required"),
    "ssl_check_hostname": _boolean,
    "ssl_ca_certs": _anything, "ssl_certfile": _anything, "ssl_keyfile": _anything,
}
# The Sentinel's own credentials (the user part of the URL is for the master).
_SENTINEL_OPTIONS = {"sentinel_username": _anything, "sentinel_password": _anything}
_CLUSTER_OPTIONS = {name: check for name, check in _OPTIONS.items() if name != "db"}
URL_OPTIONS = {
    "redis": {**_OPTIONS, **_TCP_OPTIONS},
    "rediss": {**_OPTIONS, **_TCP_OPTIONS, **_TLS_OPTIONS},
    "unix": dict(_OPTIONS),
    "redis+sentinel": {**_OPTIONS, **_TCP_OPTIONS, **_SENTINEL_OPTIONS},
    "rediss+sentinel": {**_OPTIONS, **_TCP_OPTIONS, **_TLS_OPTIONS, **_SENTINEL_OPTIONS},
    "redis+cluster": {**_CLUSTER_OPTIONS, **_TCP_OPTIONS},
    "rediss+cluster": {**_CLUSTER_OPTIONS, **_TCP_OPTIONS, **_TLS_OPTIONS},
}
SENTINEL_PORT = 26379  # a sentinel's port when the URL names none
CLUSTER_PORT = 6379
_SCHEMES = ("use redis://, rediss:// (TLS), unix:// (a socket file), redis+sentinel:// or "
            "rediss+sentinel:// (Sentinel), redis+cluster:// or rediss+cluster:// (Cluster)")
_SENTINEL_FORM = "redis+sentinel://HOST:26379,HOST:26379/MASTER-NAME/DB"
_CLUSTER_FORM = "redis+cluster://HOST:PORT,HOST:PORT/"


def url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL (None when nothing): the scheme, a malformed or
    missing host, a port outside 1-65535, a path that is not a database number, an unknown
    or malformed query option. The answer never quotes the password."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in URL_OPTIONS:
        return _SCHEMES
    if "#" in rest:
        return "a Redis URL has no #fragment"
    if "+" in scheme:
        return _multi_node_problem(scheme, rest)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "malformed host: '[' without its ']' (IPv6 addresses are written [::1])"
    host = parts.netloc.rsplit("@", 1)[-1]
    if scheme == "unix":
        if host:
            return "write unix:///path/to/redis.sock (three slashes: no host)"
        if not parts.path.startswith("/") or parts.path.endswith("/"):
            return "name the socket file by its absolute path: unix:///path/to/redis.sock"
        database = None
    else:
        problem = _host_problem(host)
        if problem:
            return problem
        database = parts.path[1:] if parts.path not in ("", "/") else None
        if database is not None and not database.isdigit():
            return f"the path /{database} is not a database number (write /0 for database 0)"
    return _options_problem(scheme, parts.query, database)


def _options_problem(scheme: str, query: str, database: str | None) -> str | None:
    """What is wrong with the query options (and the database from the path), or None."""
    options = URL_OPTIONS[scheme]
    seen: set[str] = set()
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name not in options:
            return (f"unknown option {name!r} for {scheme}:// (known: "
                    f"{', '.join(sorted(options))})")
        problem = options[name](value)
        if problem:
            return f"option {name}: {problem}"
        if name in seen or (name == "db" and database is not None):
            return f"option {name!r} is given twice (or as both the path and ?db=)"
        seen.add(name)
    if database is not None:
        problem = _database(database)
        if problem:
            return problem
    return None


def _split_multi_node(rest: str) -> tuple[str, str, str, str]:
    """(user part, host list, path without its first /, query) of what follows `://`."""
    before, _, query = rest.partition("?")
    authority, _, path = before.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    return (userinfo if at else ""), hosts, path, query


def _multi_node_problem(scheme: str, rest: str) -> str | None:
    """url_problem for the Sentinel and Cluster schemes: a host list, then the master's
    name and database (Sentinel) or nothing but `/` (Cluster: database 0 only)."""
    sentinel = scheme.endswith("+sentinel")
    form = _SENTINEL_FORM if sentinel else _CLUSTER_FORM
    _, hosts, path, query = _split_multi_node(rest)
    if not hosts:
        return f"no host: write {form}"
    for number, host in enumerate(hosts.split(","), 1):
        if not host:
            return (f"bad host list {hosts!r}: entry {number} is empty (hosts are separated "
                    f"by single commas: {form})")
        problem = _host_problem(host)
        if problem:
            if problem.startswith("no host"):
                problem = f"{host!r} has no host name"
            return f"host {number} of the list: {problem}"
    database: str | None = None
    if sentinel:
        name, _, database = path.partition("/")
        if not name:
            return f"no master name: write {form} (the name in `sentinel monitor NAME ...`)"
        if not name.isprintable() or any(char in name for char in " %?#,@"):
            return f"master name {name!r} has a character Sentinel names do not"
        if "/" in database:
            return f"the path /{path} is not /MASTER-NAME or /MASTER-NAME/DB"
        if database and not database.isdigit():
            return f"database {database!r} (after the master name) is not a database number"
        database = database or None
    elif path not in ("", "0"):
        return (f"the path /{path}: a cluster has database 0 only; end the URL with / "
                f"({form})")
    return _options_problem(scheme, query, database)


def _host_problem(host: str) -> str | None:
    if host.startswith("["):
        name, _, port = host[1:].partition("]")
        if port and not port.startswith(":"):
            return f"malformed host [{name}]{port}"
        port = port[1:]
    else:
        if "[" in host or "]" in host:
            return "malformed host: brackets go around an IPv6 address only ([::1])"
        name, _, port = host.partition(":")
    if not name:
        return "no host: write redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0"
    if port or host.endswith(":"):
        if not port.isdigit():
            return f"port {port!r} is not a number"
        if not 1 <= int(port) <= 65535:
            return f"port {int(port)} is out of range 1-65535"
    return None


def is_cluster_url(url: str) -> bool:
    """True for `redis+cluster://` and `rediss+cluster://`: the transports then keep every
    script and multi-key command within one hash slot (see docs/protocol)."""
    return url.partition("://")[0].lower().endswith("+cluster")


def hash_tagged(tag: str) -> str:
    """`{tag}`: a key part that makes the key hash like the key `tag` itself."""
    return "{" + tag + "}"


def check_url(url: str) -> None:
    """Raise ConfigError when `url` is not a usable Redis URL (password masked)."""
    problem = url_problem(url)
    if problem:
        raise ConfigError(f"Redis URL {redact(url)}: {problem}")
