"""The relay: publishes committed outbox rows to the event transport and marks them sent.

One round, in one database transaction: lock the heads (first unsent row) of up to
`batch_size` committed transactions with SKIP LOCKED, read every unsent row of those
transactions in `seq` order, publish each transaction's events one after the other (different
transactions concurrently, so one Redis round trip carries many), mark what was published,
commit. Another relay skips locked heads and takes other transactions, so a transaction is
never split between relays nor published twice while both live. A relay that dies between
publishing and committing leaves its rows unsent: they are published again, with the same
message ids (a transactional listener's inbox absorbs the repeat).

Between rounds the relay waits for a NOTIFY from the insert trigger, or `poll_interval`
seconds (in case a notification is lost: a dropped LISTEN connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from bus_core.errors import InvalidMessage
from bus_core.messages import EventMessage, describe, valid_api_name, valid_member_name
from bus_outbox.options import Options, check_dsn, options_for, redact
from bus_outbox.sql import DDL_LOCK, Statements, ddl
from bus_outbox.stats import stats_for

if TYPE_CHECKING:
    from bus_core.client import BusClient

logger = logging.getLogger("bus.outbox")


async def create_tables_async(connection: Any, schema: str) -> None:
    """Create the outbox's tables in `schema` if missing (one creator at a time). Tables that
    exist are left alone, so a database user without CREATE rights can run with
    `create_tables: true` once someone made them."""
    st = Statements(schema)
    cursor = await connection.execute(st.tables_exist, st.table_names)
    if (await cursor.fetchone())[0]:
        return
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))
        await connection.execute(ddl(schema).encode())


def create_tables(connection: Any, schema: str) -> None:
    """`create_tables_async` for a sync psycopg connection (`bus outbox init` runs the DDL
    even when the tables exist: it also brings the trigger up to date)."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))
        connection.execute(ddl(schema).encode())


class RowProblem(Exception):
    """An outbox row that can never be published as it is."""


def message_of(row: Sequence[Any]) -> EventMessage:
    """The event of a claimed row (seq, txid, message_id, api, event, version, kwargs, headers);
    RowProblem when the row cannot be an event."""
    _, _, message_id, api_name, event_name, version, kwargs_text, headers_text = row
    if not (valid_api_name(api_name) and valid_member_name(event_name) and message_id):
        raise RowProblem(f"invalid names or id: {api_name!r}.{event_name!r} id {message_id!r}")
    try:
        kwargs = json.loads(kwargs_text)
        headers = json.loads(headers_text) if headers_text is not None else None
    except ValueError as exc:
        raise RowProblem(f"kwargs or headers are not JSON: {exc}") from None
    if not isinstance(kwargs, dict) or not (headers is None or isinstance(headers, dict)):
        raise RowProblem("kwargs (or headers) is not a JSON object")
    return EventMessage(api_name=api_name, event_name=event_name, kwargs=kwargs, id=message_id,
                        version=int(version), headers=headers)


class Relay:
    """One relay of one bus client, run on the current event loop by `run()`."""

    def __init__(self, client: BusClient, options: Options | None = None,
                 relay_id: str | None = None) -> None:
        self.client = client
        self.options = options or options_for(client)
        self.dsn = check_dsn(self.options.require_dsn("the outbox relay"))
        self.statements = Statements(self.options.schema)
        self.relay_id = relay_id or f"{client.process_name}-{secrets.token_hex(3)}"
        self.hostname = socket.gethostname()
        self.started_at = datetime.now(timezone.utc)
        self.stats = stats_for(client)
        self.published = 0
        self._conn: Any = None
        self._listen_conn: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._last_heartbeat = 0.0
        self._last_prune = time.monotonic()
        self._tables_ready = not self.options.create_tables
        self._running = False

    # -- connections ------------------------------------------------------------------

    async def _connect(self) -> None:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            if not self._tables_ready:
                await create_tables_async(self._conn, self.options.schema)
                self._tables_ready = True
        if self._listener is None or self._listener.done():
            if self._listener is not None and not self._listener.cancelled():
                problem = self._listener.exception()
                if problem is not None:
                    logger.warning("outbox relay %s: lost its LISTEN connection (%s); "
                                   "listening again, polling meanwhile", self.relay_id,
                                   redact(describe(problem), self.dsn))
            await self._close_listen_conn()
            self._listen_conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            await self._listen_conn.execute(self.statements.listen)
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(self._listen_conn), name="bus:outbox-listen")

    async def _listen(self, connection: Any) -> None:
        async for _ in connection.notifies():
            self._wake.set()

    async def _close_listen_conn(self) -> None:
        if self._listener is not None and not self._listener.done():
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
        self._listener = None
        if self._listen_conn is not None:
            with contextlib.suppress(Exception):
                await self._listen_conn.close()
            self._listen_conn = None

    async def _close(self) -> None:
        await self._close_listen_conn()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    # -- the loop ---------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run()` to return after the round in progress."""
        self._stopping.set()
        self._wake.set()

    async def run(self, once: bool = False) -> None:
        """Relay until `stop()` (or, with `once`, until no committed row is left). One run at a
        time: two would share one database transaction, whose row locks do not keep them apart,
        and publish the same rows; a second relay is another `Relay`."""
        if self._running:
            raise RuntimeError(f"outbox relay {self.relay_id} is already running: make another "
                               "Relay to run a second one")
        self._running = True
        logger.info("outbox relay %s: relaying %s.bus_outbox", self.relay_id,
                    self.options.schema)
        try:
            while not self._stopping.is_set():
                try:
                    await self._connect()
                    self._wake.clear()
                    taken, trouble = await self.round()
                    await self._housekeeping()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.stats.publish_errors += 1
                    logger.warning("outbox relay %s: database error: %s; retrying in %gs",
                                   self.relay_id, redact(describe(exc), self.dsn),
                                   self.options.retry_delay)
                    await self._close()
                    await self._pause(self.options.retry_delay)
                    continue
                if trouble is not None:
                    self.stats.publish_errors += 1
                    logger.warning("outbox relay %s: publishing failed: %s; retrying in %gs",
                                   self.relay_id, redact(describe(trouble), self.dsn),
                                   self.options.retry_delay)
                    await self._pause(self.options.retry_delay)
                elif taken < self.options.batch_size:
                    if once:
                        return
                    # Up to the next heartbeat at most: an idle relay whose NOTIFY never came
                    # must still say it is alive (status counts relays seen within three).
                    await self._pause(min(self.options.poll_interval,
                                          self.options.heartbeat_interval))
        finally:
            with contextlib.suppress(Exception):
                if self._conn is not None and not self._conn.closed:
                    await self._conn.execute(self.statements.relay_gone, (self.relay_id,))
            await self._close()
            logger.info("outbox relay %s: stopped (%d events published)", self.relay_id,
                        self.published)
            self._running = False

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less when a NOTIFY (or stop) arrives."""
        if seconds <= 0 or self._stopping.is_set():
            return
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def round(self) -> tuple[int, BaseException | None]:
        """Claim, publish and mark one batch: (transactions taken, transport error or None)."""
        conn, st = self._conn, self.statements
        async with conn.transaction():
            cursor = await conn.execute(st.claim, (self.options.batch_size,), prepare=True)
            rows = await cursor.fetchall()
            if not rows:
                return 0, None
            chains: dict[Any, list[tuple[int, EventMessage]]] = {}
            broken: list[tuple[int, str]] = []
            for row in rows:
                try:
                    chains.setdefault(row[1], []).append((row[0], message_of(row)))
                except RowProblem as exc:
                    broken.append((row[0], str(exc)))
            outcomes = await asyncio.gather(*(self._publish(chain)
                                              for chain in chains.values()))
            sent = [seq for done, _, _ in outcomes for seq in done]
            broken += [item for _, refused, _ in outcomes for item in refused]
            trouble = next((error for _, _, error in outcomes if error is not None), None)
            if sent:
                await conn.execute(st.mark_sent, (sent,), prepare=True)
            for seq, reason in broken:
                logger.error("outbox relay %s: row %d can never be published (%s); marked "
                             "failed and kept", self.relay_id, seq, reason)
                await conn.execute(st.mark_failed, (reason[:1000], seq))
        self.published += len(sent)
        self.stats.published += len(sent)
        self.stats.failed += len(broken)
        return len(chains), trouble

    async def _publish(self, chain: list[tuple[int, EventMessage]]
                       ) -> tuple[list[int], list[tuple[int, str]], BaseException | None]:
        """Send one transaction's events in order: (sent seqs, refused rows, error that
        stopped the chain). A refused event (it fails a schema, say) will never be sent;
        any other error stops the chain, to be retried from that event."""
        sent: list[int] = []
        refused: list[tuple[int, str]] = []
        for seq, message in chain:
            try:
                await self.client.send_event_async(message, fire_hooks=False)
            except InvalidMessage as exc:
                refused.append((seq, f"refused: {describe(exc)}"))
                continue
            except Exception as exc:
                return sent, refused, exc
            sent.append(seq)
        return sent, refused, None

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= self.options.heartbeat_interval:
            await self.heartbeat()
            self._last_heartbeat = now
        interval = self.options.prune_interval
        if interval > 0 and now - self._last_prune >= interval:
            self._last_prune = now
            await prune_async(self._conn, self.statements, self.options)

    async def heartbeat(self) -> None:
        """Record this relay as alive; refresh the backlog gauges."""
        conn, st = self._conn, self.statements
        await conn.execute(st.heartbeat, (self.relay_id, self.hostname, os.getpid(),
                                          self.started_at, self.published))
        backlog, oldest = await (await conn.execute(st.backlog)).fetchone()
        relays = await (await conn.execute(st.relays)).fetchall()
        alive_within = 3 * self.options.heartbeat_interval
        self.stats.backlog = int(backlog)
        self.stats.oldest_unsent_age = max(0.0, float(oldest or 0.0))
        self.stats.relays_alive = sum(1 for r in relays if r[4] <= alive_within)


async def prune_async(conn: Any, st: Statements, options: Options,
                      chunk: int = 10000) -> tuple[int, int]:
    """Delete sent outbox rows and inbox marks past their age: (outbox rows, inbox marks)."""
    pruned = [0, 0]
    for index, (statement, age) in enumerate(((st.prune_outbox, options.prune_sent_after),
                                              (st.prune_inbox, options.prune_processed_after))):
        if age <= 0:
            continue
        while True:
            cursor = await conn.execute(statement, (age, chunk))
            pruned[index] += cursor.rowcount
            if cursor.rowcount < chunk:
                break
    await conn.execute(st.forget_relays, (max(3600.0, 10 * options.heartbeat_interval),))
    if any(pruned):
        logger.info("outbox: pruned %d sent rows and %d inbox marks", *pruned)
    return pruned[0], pruned[1]
