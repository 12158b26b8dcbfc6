"""What the console shows, read through the Bus client (never written here): API schemas,
workers, event history, listener groups, and `bus config check`'s verdict."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import weakref
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bus_core.client import Bus
from bus_core.redaction import redact_text

CHECK_TIMEOUT = 30.0
MAX_CONFIG_BYTES = 256 * 1024
CHECKS_AT_ONCE = 2  # each check is a Python process: a burst waits its turn
_checks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())  # one per loop: a semaphore belongs to the loop it waits on
# `bus config check FILE` with no environment variable left (Python may set some of its
# own at start-up, such as LC_CTYPE when it coerces a C locale).
_CHECK = ("import os, sys\nos.environ.clear()\nfrom bus_core.cli import main\n"
          "sys.exit(main(['config', 'check', sys.argv[1]]))")


@dataclass
class ApiInfo:
    """One API as the console shows it: its schema document and where it comes from."""

    name: str
    own: bool  # registered by this process's bus module
    schema: dict[str, Any]
    doc: str = ""

    @property
    def rpcs(self) -> dict[str, Any]:
        return self.schema.get("rpcs") or {}

    @property
    def events(self) -> dict[str, Any]:
        return self.schema.get("events") or {}


async def apis(bus: Bus) -> tuple[dict[str, ApiInfo], str]:
    """Every API on the bus: those registered here, and those in the shared schema; and
    why the shared schema could not be read ("" when it was), for the pages to say."""
    from bus_schema.generate import api_schema

    client = bus.client
    found: dict[str, ApiInfo] = {}
    problem = ""
    try:
        state = await client.state()
        transport = await state.transport("schema", "")
        remote = await transport.load()
    except Exception as exc:  # no shared schema reachable: the local APIs still show
        remote = {}
        problem = redact_text(f"cannot read the shared schema: {exc}")
    for name, document in sorted(remote.items()):
        if isinstance(document, dict):
            found[name] = ApiInfo(name, False, document)
    for name, api in sorted(client.apis.items()):
        found[name] = ApiInfo(name, True, api_schema(api), api.definition.doc or "")
    return dict(sorted(found.items())), problem


async def workers(bus: Bus) -> list[dict[str, Any]]:
    """The workers bus-state knows of (alive, gone and stopped), as JSON-safe rows."""
    from bus_state import read_workers
    from bus_state.commands import WINDOW_INTERVALS
    from bus_state.plugin import grace, options, ping_interval

    section = options(bus.client)
    interval = ping_interval(section)
    window = WINDOW_INTERVALS * interval + grace(section, interval)
    rows = await read_workers(bus.client, window=window, default_interval=interval)
    return [row.as_json() for row in rows]


async def groups(bus: Bus, announced: list[str]) -> list[dict[str, Any]]:
    """Listener groups per stream: pending, unread, consumers and how idle they are."""
    from bus_state.commands import IDLE_AFTER, group_json, read_groups

    found = await read_groups(bus.client, announced)
    return [group_json(group, IDLE_AFTER) for group in found]


async def history(bus: Bus, pairs: list[tuple[str, str]], start: datetime | None,
                  stop: datetime | None, text: str, limit: int) -> list[dict[str, Any]]:
    """Events of `pairs` in [start, stop], newest first, whose arguments (as JSON) contain
    `text`, at most `limit`."""
    from bus_core.cli_messages import event_row, merged_history

    found = []
    async for message in merged_history(bus, pairs, start, stop):
        row = event_row(message)
        if text and text not in json.dumps(row["kwargs"], default=str, ensure_ascii=False):
            continue
        row["headers"] = message.headers
        found.append(row)
        if len(found) >= limit:
            break
    return found


async def check_config(text: str) -> tuple[bool, str]:
    """`bus config check` on `text` (YAML or JSON), as the command says it: (valid, its
    output). Run as the real command in a subprocess whose environment is empty by the time
    the config is read (so `${VAR}` in a pasted config cannot reveal any variable, not even
    PATH or HOME), with passwords in URLs hidden from the output. At most CHECKS_AT_ONCE
    run at a time (any user, read-only too, may send a burst)."""
    loop = asyncio.get_running_loop()
    checks = _checks.get(loop)
    if checks is None:
        checks = _checks[loop] = asyncio.Semaphore(CHECKS_AT_ONCE)
    async with checks:
        return await _check_in_subprocess(text)


async def _check_in_subprocess(text: str) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory(prefix="bus-web-check-") as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        env = {"HOME": folder}  # Python's start-up only; cleared before the check
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-X", "utf8", "-c", _CHECK, str(path), cwd=folder,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(process.communicate(), CHECK_TIMEOUT)
        except (TimeoutError, asyncio.TimeoutError):
            process.kill()
            await process.wait()
            return False, f"the check took longer than {CHECK_TIMEOUT:g}s"
    output = out.decode("utf-8", "replace").replace(str(path), "the config")
    return process.returncode == 0, redact_text(output.strip())
