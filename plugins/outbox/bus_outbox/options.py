"""The `plugins.outbox` config section: its JSON Schema, defaults and parsed form."""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from bus_core.errors import ConfigError
from bus_core.redaction import MASK, redact_text
from bus_outbox.sql import DEFAULT_SCHEMA, SCHEMA_NAME

if TYPE_CHECKING:
    from bus_core.client import BusClient

PLUGIN_NAME = "outbox"

DEFAULTS: dict[str, Any] = {
    "schema": DEFAULT_SCHEMA,
    "relay": True,
    "create_tables": True,
    "batch_size": 500,
    "poll_interval": 1.0,
    "heartbeat_interval": 5.0,
    "retry_delay": 1.0,
    "prune_interval": 60.0,
    "prune_sent_after": 86400.0,
    "prune_processed_after": 7 * 86400.0,
    "django": False,
    "django_database": "default",
    "transactional_listeners": [],
}

CONFIG_SCHEMA: dict[str, Any] = {
    "properties": {
        "dsn": {"type": "string", "minLength": 1,
                "description": "PostgreSQL connection string (URL or key=value) of the database "
                               "the outbox tables live in; the relay, the inbox and the CLI "
                               "connect with it (put the password in an environment variable)"},
        "schema": {"type": "string", "pattern": SCHEMA_NAME.pattern,
                   "default": DEFAULTS["schema"],
                   "description": "PostgreSQL schema of the tables bus_outbox, bus_inbox, "
                                  "bus_outbox_relays"},
        "relay": {"type": "boolean", "default": DEFAULTS["relay"],
                  "description": "run the relay inside `bus run` (false: run `bus outbox "
                                 "relay` separately, or not at all in producer-only processes)"},
        "create_tables": {"type": "boolean", "default": DEFAULTS["create_tables"],
                          "description": "a worker creates missing tables when it starts "
                                         "(false: run `bus outbox init` or the DDL yourself)"},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 100000,
                       "default": DEFAULTS["batch_size"],
                       "description": "transactions a relay takes per round"},
        "poll_interval": {"type": "number", "exclusiveMinimum": 0,
                          "default": DEFAULTS["poll_interval"],
                          "description": "seconds a relay waits for a NOTIFY before looking "
                                         "anyway (the fallback when a notification is lost; "
                                         "at most heartbeat_interval)"},
        "heartbeat_interval": {"type": "number", "exclusiveMinimum": 0,
                               "default": DEFAULTS["heartbeat_interval"],
                               "description": "seconds between a relay's heartbeats in "
                                              "bus_outbox_relays (alive: seen within 3 of them)"},
        "retry_delay": {"type": "number", "minimum": 0, "default": DEFAULTS["retry_delay"],
                        "description": "seconds a relay waits after the database or the event "
                                       "transport failed, before trying again"},
        "prune_interval": {"type": "number", "minimum": 0,
                           "default": DEFAULTS["prune_interval"],
                           "description": "seconds between a relay's prune runs (0: never)"},
        "prune_sent_after": {"type": "number", "minimum": 0,
                             "default": DEFAULTS["prune_sent_after"],
                             "description": "delete published outbox rows this many seconds "
                                            "after they were sent (0: never)"},
        "prune_processed_after": {"type": "number", "minimum": 0,
                                  "default": DEFAULTS["prune_processed_after"],
                                  "description": "delete inbox marks this many seconds after "
                                                 "the event was handled (0: never); keep it "
                                                 "longer than any redelivery can take"},
        "django": {"type": "boolean", "default": DEFAULTS["django"],
                   "description": "fires inside Django's transaction.atomic() go to the outbox "
                                  "through Django's connection; sync transactional listeners "
                                  "run in transaction.atomic()"},
        "django_database": {"type": "string", "minLength": 1,
                            "default": DEFAULTS["django_database"],
                            "description": "the Django database alias (settings.DATABASES) "
                                           "holding the outbox tables"},
        "transactional_listeners": {
            "type": "array", "items": {"type": "string", "minLength": 1},
            "uniqueItems": True, "default": DEFAULTS["transactional_listeners"],
            "description": "listener names that run transactionally (with the inbox) as if "
                           "listen(..., transactional=True) said so"},
    },
}

_KEY_VALUE_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def dsn_secrets(dsn: str | None) -> list[str]:
    """The password written in `dsn` (as written, and percent-decoded for a URL). libpq quotes
    the offending token when it cannot parse a DSN (`invalid percent-encoded token: "..."`,
    `unexpected spaces found in "..."`), so a message about a malformed DSN may hold the
    password outside of any `password=` or `user:password@` that the patterns recognise."""
    if not dsn:
        return []
    found: list[str] = []
    scheme_end = dsn.find("://")
    if scheme_end > 0:
        authority = re.split(r"[/?#]", dsn[scheme_end + 3:], maxsplit=1)[0]
        if "@" in authority:
            _, colon, password = authority.rsplit("@", 1)[0].partition(":")
            if colon and password:
                found += [password, unquote(password)]
    for match in _KEY_VALUE_PASSWORD.finditer(dsn):
        value = match.group(2)
        found += [value, value.strip("'").replace("\\'", "'").replace("\\\\", "\\")]
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def check_dsn(dsn: str) -> str:
    """`dsn` if libpq can parse it, else a ConfigError saying why (password hidden): a DSN
    that cannot be read is a configuration mistake, not an outage for the relay to wait out
    (it would retry, and warn, for ever)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise ConfigError(f"plugins.outbox.dsn is not a connection string PostgreSQL can read: "
                          f"{redact(str(exc).strip(), dsn)}") from None
    return dsn


def redact(text: str, dsn: str | None = None) -> str:
    """`text` without passwords of PostgreSQL connection strings (URL or key=value form), nor
    the password of `dsn` wherever it appears (libpq may quote it in an error)."""
    text = _KEY_VALUE_PASSWORD.sub(r"\1***", redact_text(text))
    for secret in dsn_secrets(dsn):
        if len(secret) >= 4:
            text = text.replace(secret, MASK)
        else:  # a very short one only where libpq quotes a token, to keep the text readable
            text = text.replace(f'"{secret}"', f'"{MASK}"')
    return text


@dataclass(frozen=True)
class Options:
    """A parsed `plugins.outbox` section."""

    dsn: str | None
    schema: str
    relay: bool
    create_tables: bool
    batch_size: int
    poll_interval: float
    heartbeat_interval: float
    retry_delay: float
    prune_interval: float
    prune_sent_after: float
    prune_processed_after: float
    django: bool
    django_database: str
    transactional_listeners: frozenset[str]

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> Options:
        merged = {**DEFAULTS, **{k: v for k, v in section.items() if k != "enabled"}}
        return cls(
            dsn=merged.get("dsn"), schema=merged["schema"], relay=bool(merged["relay"]),
            create_tables=bool(merged["create_tables"]), batch_size=int(merged["batch_size"]),
            poll_interval=float(merged["poll_interval"]),
            heartbeat_interval=float(merged["heartbeat_interval"]),
            retry_delay=float(merged["retry_delay"]),
            prune_interval=float(merged["prune_interval"]),
            prune_sent_after=float(merged["prune_sent_after"]),
            prune_processed_after=float(merged["prune_processed_after"]),
            django=bool(merged["django"]), django_database=merged["django_database"],
            transactional_listeners=frozenset(merged["transactional_listeners"]),
        )

    def require_dsn(self, what: str) -> str:
        if not self.dsn:
            raise ConfigError(f"{what} needs plugins.outbox.dsn: the PostgreSQL connection "
                              "string of the database holding the outbox tables")
        return self.dsn


# By id(client), dropped when the client is garbage-collected (cheaper per fire than a
# WeakKeyDictionary look-up).
_cache: dict[int, tuple[Any, Options]] = {}


def options_for(client: BusClient) -> Options:
    """The parsed `plugins.outbox` section of `client`'s config (parsed once per config)."""
    config = client.config
    found = _cache.get(id(client))
    if found is None or found[0] is not config:
        if found is None:
            weakref.finalize(client, _cache.pop, id(client), None)
        found = (config, Options.from_section(config.plugin(PLUGIN_NAME)))
        _cache[id(client)] = found
    return found[1]
