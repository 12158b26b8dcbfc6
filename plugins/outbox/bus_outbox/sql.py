"""The outbox's tables and every statement run on them, in one place (docs/reference/outbox.md
prints the DDL this module makes: `bus outbox init --print`).

All names live in one PostgreSQL schema (option `schema`, default `public`):

- `bus_outbox`: one row per event fired inside a transaction. `seq` orders a transaction's
  events; `txid` (the writer's transaction id) groups them, so a relay takes a transaction's
  events together; `sent_at` is set once the relay published the row (`error` too when the row
  could not be published at all, which also stops it blocking).
- `bus_inbox`: one row per (service, listener, message id) a transactional listener handled
  (a listener is a consumer group of its service, as on the event transport).
- `bus_outbox_relays`: one row per relay process, its heartbeat and counters.
"""

from __future__ import annotations

import re

SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
DEFAULT_SCHEMA = "public"
DDL_LOCK = 0x6275736F  # pg_advisory_xact_lock key: one `init` at a time ("buso")


def check_schema_name(name: str) -> str:
    """`name` if it is a plain PostgreSQL identifier (letters, digits, `_`), else ValueError."""
    if not isinstance(name, str) or not SCHEMA_NAME.match(name):
        raise ValueError(f"outbox schema {name!r} is not a plain PostgreSQL name (letters, "
                         "digits and _, not starting with a digit, at most 63 characters)")
    return name


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel the insert trigger notifies and relays listen on, cut to the
    63 bytes a channel name may have (pg_notify refuses a longer one, failing every insert;
    schema names are ASCII). Schemas that share their first 52 characters share a channel:
    a relay merely looks once more."""
    return f"bus_outbox_{schema}"[:63]


def ddl(schema: str) -> str:
    """The statements that create the tables, indexes and trigger (idempotent)."""
    s = f'"{check_schema_name(schema)}"'
    return f"""\
CREATE SCHEMA IF NOT EXISTS {s};

CREATE TABLE IF NOT EXISTS {s}.bus_outbox (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    message_id  text NOT NULL,
    api_name    text NOT NULL,
    event_name  text NOT NULL,
    version     integer NOT NULL DEFAULT 1,
    kwargs      json NOT NULL,
    headers     json,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at     timestamptz,
    error       text
);
CREATE INDEX IF NOT EXISTS bus_outbox_unsent ON {s}.bus_outbox (seq)
    WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS bus_outbox_unsent_txid ON {s}.bus_outbox (txid, seq)
    WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS bus_outbox_sent_at ON {s}.bus_outbox (sent_at)
    WHERE sent_at IS NOT NULL;

CREATE OR REPLACE FUNCTION {s}.bus_outbox_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER bus_outbox_notify AFTER INSERT ON {s}.bus_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.bus_outbox_notify('{channel(schema)}');

CREATE TABLE IF NOT EXISTS {s}.bus_inbox (
    service_name  text NOT NULL,
    listener_name text NOT NULL,
    message_id    text NOT NULL,
    api_name      text NOT NULL,
    event_name    text NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service_name, listener_name, message_id)
);
CREATE INDEX IF NOT EXISTS bus_inbox_processed_at ON {s}.bus_inbox (processed_at);

CREATE TABLE IF NOT EXISTS {s}.bus_outbox_relays (
    relay_id    text PRIMARY KEY,
    hostname    text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL,
    published   bigint NOT NULL DEFAULT 0
);
"""


class Statements:
    """The statements of one schema, formatted once."""

    def __init__(self, schema: str) -> None:
        s = f'"{check_schema_name(schema)}"'
        self.schema = schema
        self.channel = channel(schema)
        self.listen = f'LISTEN "{self.channel}"'
        self.insert = (f"INSERT INTO {s}.bus_outbox (message_id, api_name, event_name, version,"
                       " kwargs, headers) VALUES (%s, %s, %s, %s, %s::json, %s::json)")
        # A transaction's head (its first unsent row) stands for the whole transaction: a relay
        # locks heads with SKIP LOCKED and then reads every unsent row of those transactions,
        # so two relays never share (or reorder) one transaction.
        self.claim = f"""\
WITH heads AS (
    SELECT o.txid FROM {s}.bus_outbox o
    WHERE o.sent_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM {s}.bus_outbox p
                      WHERE p.sent_at IS NULL AND p.txid = o.txid AND p.seq < o.seq)
    ORDER BY o.seq
    LIMIT %s
    FOR UPDATE OF o SKIP LOCKED
)
SELECT seq, txid::text, message_id, api_name, event_name, version, kwargs::text,
       headers::text
FROM {s}.bus_outbox
WHERE sent_at IS NULL AND txid IN (SELECT txid FROM heads)
ORDER BY seq"""
        self.mark_sent = f"UPDATE {s}.bus_outbox SET sent_at = now() WHERE seq = ANY(%s)"
        self.mark_failed = (f"UPDATE {s}.bus_outbox SET sent_at = now(), error = %s "
                            "WHERE seq = %s")
        self.inbox_mark = (f"INSERT INTO {s}.bus_inbox (service_name, listener_name, "
                           "message_id, api_name, event_name) VALUES (%s, %s, %s, %s, %s) "
                           "ON CONFLICT DO NOTHING RETURNING 1")
        self.heartbeat = f"""\
INSERT INTO {s}.bus_outbox_relays (relay_id, hostname, pid, started_at, seen_at, published)
VALUES (%s, %s, %s, %s, now(), %s)
ON CONFLICT (relay_id) DO UPDATE SET seen_at = now(), published = EXCLUDED.published"""
        self.relay_gone = f"DELETE FROM {s}.bus_outbox_relays WHERE relay_id = %s"
        self.forget_relays = (f"DELETE FROM {s}.bus_outbox_relays "
                              "WHERE seen_at < now() - make_interval(secs => %s)")
        self.prune_outbox = f"""\
DELETE FROM {s}.bus_outbox WHERE seq IN (
    SELECT seq FROM {s}.bus_outbox
    WHERE sent_at < now() - make_interval(secs => %s) AND error IS NULL
    LIMIT %s)"""
        self.prune_inbox = f"""\
DELETE FROM {s}.bus_inbox WHERE (service_name, listener_name, message_id) IN (
    SELECT service_name, listener_name, message_id FROM {s}.bus_inbox
    WHERE processed_at < now() - make_interval(secs => %s)
    LIMIT %s)"""
        self.backlog = f"""\
SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8
FROM {s}.bus_outbox WHERE sent_at IS NULL"""
        self.totals = f"""\
SELECT count(*) FILTER (WHERE sent_at IS NOT NULL AND error IS NULL),
       count(*) FILTER (WHERE error IS NOT NULL)
FROM {s}.bus_outbox"""
        self.inbox_count = f"SELECT count(*) FROM {s}.bus_inbox"
        self.relays = f"""\
SELECT relay_id, hostname, pid, started_at, EXTRACT(EPOCH FROM now() - seen_at)::float8,
       published
FROM {s}.bus_outbox_relays ORDER BY started_at"""
        self.failed = f"""\
SELECT seq, message_id, api_name, event_name, error FROM {s}.bus_outbox
WHERE error IS NOT NULL ORDER BY seq DESC LIMIT %s"""
        self.tables_exist = ("SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL"
                             " AND to_regclass(%s) IS NOT NULL")
        self.table_names = (f"{s}.bus_outbox", f"{s}.bus_inbox", f"{s}.bus_outbox_relays")
