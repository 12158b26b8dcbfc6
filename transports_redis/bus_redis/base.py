"""What the four Redis transports share: options, the shared connection, and batching."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from redis.exceptions import NoPermissionError, NoScriptError, RedisError

from bus_core.logs import detached
from bus_core.transports import CheckNote, Transport
from bus_redis.connection import (
    DEFAULT_URL,
    SharedClient,
    acquire,
    is_cluster_url,
    node_clients,
    redact,
    release,
    server_facts,
    slot_of,
)
from bus_redis.options import OPTIONS_SCHEMA as OPTIONS_SCHEMA

T = TypeVar("T")
R = TypeVar("R")



class Scripts:
    """Lua scripts by name, run with EVALSHA (loading them with EVAL the first time a
    server has not seen them, e.g. after a restart)."""

    def __init__(self, **sources: str) -> None:
        self.sources = sources
        self.shas = {name: hashlib.sha1(src.encode()).hexdigest()
                     for name, src in sources.items()}

    async def run(self, client: Any, name: str, keys: Sequence[Any], args: Sequence[Any]
                  ) -> Any:
        try:
            return await client.evalsha(self.shas[name], len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.sources[name], len(keys), *keys, *args)

    def probes(self, name: str, keys: Sequence[Any], args: Sequence[Any]
               ) -> list[tuple[Any, ...]]:
        """The commands `run` may send for script `name` (EVALSHA, then EVAL when the server
        lacks it), for ACL DRYRUN: Redis checks the keys a script is given, not the commands
        inside it, which are probed on their own."""
        return [("EVALSHA", self.shas[name], len(keys), *keys, *args),
                ("EVAL", self.sources[name], len(keys), *keys, *args)]


# -- `bus config check --connect`: the commands each role sends, asked of ACL DRYRUN ----------

CHECK_ID = "00000000000000000000000000000000"  # a message id in the keys probed
ROLE_HINT = "connection"  # the role of the commands every connection needs


@dataclass(frozen=True)
class Probe:
    """One command a role sends, with real key names, for `ACL DRYRUN`. `doing` says what
    the role does ("listen on auth events"); `without` marks an optional part, saying what
    is lost when it is refused (the service warns and carries on)."""

    role: str
    doing: str
    command: tuple[Any, ...]
    without: str | None = None

    @property
    def label(self) -> str:
        name = str(self.command[0]).upper()
        if name in ("XGROUP", "XINFO", "CLUSTER", "CLIENT") and len(self.command) > 1:
            name += f" {str(self.command[1]).upper()}"
        return name


def _refusal(probe: Probe, answer: Any) -> str | None:
    """What ACL DRYRUN's answer says of `probe`: None when allowed, else a short phrase
    ("XREADGROUP refused on auth.*:stream")."""
    text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)
    if text == "OK":
        return None
    rest = text.partition("'")[2]
    subject = rest.rpartition("'")[0]
    if subject and text.endswith(" key"):
        return f"{probe.label} refused on {subject}"
    if subject and text.endswith(" channel"):
        return f"{probe.label} refused on channel {subject}"
    if subject and text.endswith(" command"):
        return f"{probe.label} refused"
    return f"{probe.label} refused ({text})"


async def _dry_run(clients: list[tuple[str | None, Any]], user: str,
                   probes: Sequence[Probe]) -> tuple[list[str | None], CheckNote | None]:
    """Each probe's refusal (None: allowed) on every node asked, or why they could not be
    asked: the note then says so (and the refusals are all None)."""
    refusals: list[str | None] = [None] * len(probes)
    for where, client in clients:
        pipe = client.pipeline(transaction=False)
        for probe in probes:
            pipe.execute_command("ACL", "DRYRUN", user, *probe.command)
        answers = await pipe.execute(raise_on_error=False)
        for position, (probe, answer) in enumerate(zip(probes, answers, strict=True)):
            if isinstance(answer, NoPermissionError):
                return [None] * len(probes), CheckNote(
                    f"permissions not verified: user {user} may not run ACL DRYRUN; grant "
                    f"it +acl|dryrun to check them (that lets it ask what any user may do, "
                    f"nothing more), or look at ACL LOG after a trial run", unverified=True)
            if isinstance(answer, RedisError):
                if "unknown" in str(answer).lower():  # no DRYRUN before Redis 7
                    return [None] * len(probes), CheckNote(
                        "permissions not verified: ACL DRYRUN needs Redis 7", unverified=True)
                return [None] * len(probes), CheckNote(
                    f"permissions not verified: ACL DRYRUN {probe.label} failed: {answer}",
                    unverified=True)
            refused = _refusal(probe, answer)
            if refused is not None and refusals[position] is None:
                refusals[position] = refused + (f" (node {where})" if where else "")
    return refusals, None


def _role_notes(probes: Sequence[Probe], refusals: Sequence[str | None]
                ) -> tuple[list[str], list[str]]:
    """(problems, notes) from the probes' refusals: a refused connection command is a
    problem; a role's refused command, one note per thing the role cannot do (tagged with
    the role); an optional part's, one note saying what is lost."""
    problems: list[str] = []
    required: dict[tuple[str, str], list[str]] = {}
    optional: dict[tuple[str, str, str], list[str]] = {}
    for probe, refused in zip(probes, refusals, strict=True):
        if probe.without is None:
            found = required.setdefault((probe.role, probe.doing), [])
        else:
            found = optional.setdefault((probe.role, probe.doing, probe.without), [])
        if refused is not None and refused not in found:
            found.append(refused)
    notes: list[str] = []
    allowed: list[str] = []
    for (role, doing), refused in required.items():
        if not refused:
            if role != ROLE_HINT:
                allowed.append(doing)
        elif role == ROLE_HINT:
            problems.append(f"{', '.join(refused)}: {doing}")
        else:
            notes.append(CheckNote(f"cannot {doing}: {', '.join(refused)}", role=role))
    playable = {role for (role, doing), refused in required.items() if not refused}
    for (role, doing, without), refused in optional.items():
        # Only for a role the user can play, and not when its main part is refused already.
        if refused and role in playable and not required.get((role, doing)):
            notes.append(CheckNote(f"{', '.join(refused)}: {without}"))
    if allowed:
        notes.insert(0, CheckNote(f"may {', '.join(allowed)}"))
    return problems, notes


class RedisTransport(Transport):
    """Holds the URL and the per-loop shared client; opens lazily."""

    def __init__(self, *, url: str = DEFAULT_URL, max_connections: int = 64,
                 socket_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.max_connections = max_connections
        self.socket_timeout = socket_timeout
        # On a Redis Cluster every script and multi-key command keeps to one hash slot (the
        # cluster-only key forms of docs/protocol); elsewhere the Lightbus forms, unchanged.
        self.cluster = is_cluster_url(url)
        self._shared: SharedClient | None = None

    scripts = Scripts()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact(self.url)}>"

    async def open(self) -> None:
        if self._shared is None:
            self._shared = await acquire(self.url, self.max_connections, self.socket_timeout)

    async def close(self) -> None:
        shared, self._shared = self._shared, None
        if shared is not None:
            await release(shared)

    async def check(self, api_names: Sequence[str] = ()) -> list[str]:
        """Reachability, credentials, version and topology (sentinels that know the master,
        a cluster whose masters say `ok`), then whether the URL's user may send every
        command, on the real key names of `api_names`, of each role of this transport
        (`ACL DRYRUN`, which runs nothing: no key is read, written or deleted). See
        "Checking a deployment" in docs/reference/redis-transport.md."""
        facts = await server_facts(self.shared)
        if facts.problems:
            return [*facts.problems, *(CheckNote(n) for n in facts.notes)]
        notes: list[str] = [CheckNote(n) for n in facts.notes]
        probes = self.connection_probes() + self.check_probes(list(api_names), facts.version)
        if self.per_api_check and not api_names:
            notes.append(CheckNote(
                "the keys of APIs were not checked: no API is named for this transport (only "
                "apis.default selects it; name them with --api NAME)", unverified=True))
        clients = await node_clients(self.shared)
        try:
            refusals, unverified = await _dry_run(clients, facts.user, probes)
        finally:
            if self.cluster:
                for _, client in clients:
                    await client.aclose()
        if unverified is not None:
            return [*notes, unverified]
        problems, role_notes = _role_notes(probes, refusals)
        return [*problems, *notes, *role_notes]

    per_api_check = True  # whether the roles' keys depend on API names

    def connection_probes(self) -> list[Probe]:
        """What every connection sends: PING (a pooled connection idle for 30 s is checked
        with one), and SELECT when the URL names a database other than 0."""
        need = "needed by every connection (idle ones are checked with PING)"
        probes = [Probe(ROLE_HINT, need, ("PING",))]
        db = self.shared.pool.connection_kwargs.get("db", 0) if (
            self.shared.mode == "server" and self.shared.pool is not None) else (
            self.shared.target.db if self.shared.target is not None else 0)
        if db:
            probes.append(Probe(ROLE_HINT, f"needed by every connection to database {db}",
                                ("SELECT", db)))
        return probes

    def check_probes(self, api_names: list[str], version: tuple[int, ...] | None
                     ) -> list[Probe]:
        """The commands each role of this transport sends, for the APIs named."""
        return []

    @property
    def shared(self) -> SharedClient:
        if self._shared is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._shared

    @property
    def redis(self) -> Any:
        return self.shared.client


def by_slot(keys: Sequence[str]) -> dict[int, list[int]]:
    """Positions of `keys` grouped by cluster hash slot (first-seen order kept)."""
    groups: dict[int, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(slot_of(key), []).append(position)
    return groups


async def settle_each(runs: Sequence[Awaitable[Any]]) -> list[Any]:
    """Await `runs` together; each one's result, or the exception it raised (so one failed
    slot group fails only its own messages)."""
    return list(await asyncio.gather(*runs, return_exceptions=True))


def raise_if_error(value: Any) -> Any:
    """`value`, unless it is an exception (a failed slot group's outcome): then raise it."""
    if isinstance(value, BaseException):
        raise value
    return value


class Batcher(Generic[T, R]):
    """One round trip for many messages, without a task per batch.

    The first submitter while nothing is in flight leads: it sends its item at once (a lone
    message never waits for company that is not coming), and whatever is submitted while
    that send is in flight queues up and goes together, in one `flush(items)`, as soon as
    it returns. A failed flush fails everyone in that batch."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[R]]],
                 max_batch: int = 500) -> None:
        self.flush = flush
        self.max_batch = max_batch
        self._queued: list[tuple[T, asyncio.Future[R]]] = []
        self._busy = False

    async def submit(self, item: T) -> R:
        if self._busy:
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._queued.append((item, future))
            return await future
        self._busy = True
        try:
            others = self._queued[:self.max_batch - 1]
            del self._queued[:len(others)]
            try:
                replies = await self.flush([item, *(other for other, _ in others)])
            except BaseException as exc:
                for _, future in others:
                    if not future.done():
                        future.set_exception(exc)
                raise
            for (_, future), reply in zip(others, replies[1:], strict=True):
                if not future.done():
                    future.set_result(reply)
            return replies[0]
        finally:
            if self._queued:  # what queued meanwhile goes next, without holding us up
                asyncio.get_running_loop().create_task(detached(self._drain()))
            else:
                self._busy = False

    async def _drain(self) -> None:
        try:
            while self._queued:
                batch = self._queued[:self.max_batch]
                del self._queued[:self.max_batch]
                try:
                    replies = await self.flush([item for item, _ in batch])
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), reply in zip(batch, replies, strict=True):
                    if not future.done():
                        future.set_result(reply)
        finally:
            self._busy = False
