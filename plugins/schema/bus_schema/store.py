"""Where a client's schemas come from: its own APIs, schema files named in the config, and
what other services publish through the schema transport (loaded lazily, refreshed)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bus_core.errors import ConfigError, UnknownApi
from bus_schema.generate import api_schema

if TYPE_CHECKING:
    from bus_core.client import BusClient
    from bus_schema.validation import CompiledSchema

logger = logging.getLogger("bus.schema")


def read_schema_file(path: Path) -> dict[str, dict[str, Any]]:
    """A schema file as `bus schema dump` writes it: {api name: {"rpcs", "events"}}."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"schema file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read schema file {path}: {exc}") from None
    if not isinstance(document, dict) or not all(
            isinstance(v, dict) and ("rpcs" in v or "events" in v) for v in document.values()):
        raise ConfigError(f"{path} is not a schema file: expected {{api name: "
                          f"{{\"rpcs\": ..., \"events\": ...}}}}")
    return document


def read_schema_files(location: str | Path) -> dict[str, dict[str, Any]]:
    path = Path(location)
    if path.is_dir():
        merged: dict[str, dict[str, Any]] = {}
        for file in sorted(path.glob("*.json")):
            merged.update(read_schema_file(file))
        return merged
    return read_schema_file(path)


class SchemaStore:
    """The schemas one bus client knows, and compiled validators for them."""

    def __init__(self, client: BusClient, options: dict[str, Any]) -> None:
        self.client = client
        self.ttl: float | None = client.config.bus["schema"]["ttl"]
        self.refresh_interval = float(options.get("refresh_interval") or
                                      (0.8 * self.ttl if self.ttl else 60.0))
        self.files: dict[str, dict[str, Any]] = {}
        for location in options.get("files") or ():
            self.files.update(read_schema_files(location))
        self.remote: dict[str, dict[str, Any]] = {}
        self._loaded_at: float | None = None
        self._loading: asyncio.Future[None] | None = None
        self._local: dict[str, dict[str, Any]] = {}
        self._compiled: dict[tuple[Any, ...], CompiledSchema] = {}
        self._warned: set[str] = set()

    # -- documents ------------------------------------------------------------------------

    def local(self) -> dict[str, dict[str, Any]]:
        """Schemas of the APIs registered on this client (generated once per API)."""
        for name, api in self.client.apis.items():
            if name not in self._local:
                self._local[name] = api_schema(api)
        return {name: self._local[name] for name in self.client.apis}

    def get(self, api_name: str) -> dict[str, Any] | None:
        if api_name in self.client.apis:
            return self.local()[api_name]
        return self.files.get(api_name) or self.remote.get(api_name)

    def known(self) -> dict[str, dict[str, Any]]:
        return {**self.remote, **self.files, **self.local()}

    def fresh(self) -> bool:
        """Whether the remote schemas were loaded less than a refresh interval ago."""
        return self._loaded_at is not None and \
            time.monotonic() - self._loaded_at < self.refresh_interval

    def loaded_within(self, seconds: float) -> bool:
        return self._loaded_at is not None and time.monotonic() - self._loaded_at < seconds

    def published_rpcs(self, api_name: str) -> Mapping[str, Any] | None:
        """The RPCs of an API as its workers publish it, by name (None when the live schema
        does not have the API; schema files and local APIs are not "published")."""
        if api_name in self.client.apis or api_name in self.files:
            return None
        document = self.remote.get(api_name)
        return None if document is None else (document.get("rpcs") or {})

    async def ensure_loaded(self, max_age: float | None = None) -> None:
        """Load remote schemas on first use, and again once they are older than the
        refresh interval or `max_age` (concurrent callers share one load)."""
        if self.loaded_within(self.refresh_interval if max_age is None else max_age):
            return
        if self._loading is not None and not self._loading.done():
            await asyncio.shield(self._loading)
            return
        self._loading = asyncio.get_running_loop().create_future()
        try:
            await self.load_remote()
        except Exception as exc:  # schemas are an aid: a failed load must not stop traffic
            logger.warning("loading remote schemas failed (%s); using what is known", exc)
            self._loaded_at = time.monotonic()
        finally:
            self._loading.set_result(None)

    async def load_remote(self) -> dict[str, dict[str, Any]]:
        transport = await self._transport()
        self.remote = await transport.load()
        self._loaded_at = time.monotonic()
        self._compiled.clear()
        return self.remote

    async def publish(self, api_names: list[str] | None = None) -> None:
        """Store the schemas of this client's APIs (all, or `api_names`) with the TTL."""
        transport = await self._transport()
        local = self.local()
        for name in api_names if api_names is not None else sorted(local):
            await transport.store(name, local[name], self.ttl)

    async def store(self, schemas: dict[str, dict[str, Any]], ttl: float | None) -> None:
        transport = await self._transport()
        for name, schema in sorted(schemas.items()):
            await transport.store(name, schema, ttl)

    async def _transport(self) -> Any:
        state = await self.client.state()
        return await state.transport("schema", "")

    # -- validators -----------------------------------------------------------------------

    def validator(self, api_name: str, kind: str, name: str, part: str,
                  strict: bool) -> CompiledSchema | None:
        """The compiled schema of `api.{kind}[name][part]`, or None when not known (a warning
        once per API; UnknownApi in strict mode)."""
        key = (api_name, kind, name, part)
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled
        document = self.get(api_name)
        if document is None:
            self._unknown(f"API {api_name!r}", api_name, strict)
            return None
        member = (document.get(kind) or {}).get(name)
        if member is None or part not in member:
            label = "RPC" if kind == "rpcs" else "event"
            self._unknown(f"{label} {api_name}.{name}", api_name, strict)
            return None
        from bus_schema.validation import CompiledSchema  # jsonschema, on first use

        compiled = self._compiled[key] = CompiledSchema(member[part])
        return compiled

    def _unknown(self, what: str, api_name: str, strict: bool) -> None:
        if strict:
            raise UnknownApi(f"no schema is known for {what} (apis.{api_name}."
                             "strict_validation is on): is a worker serving it running?")
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(f"Bus: no schema is known for {what}; its messages are not "
                          "validated", RuntimeWarning, stacklevel=2)
