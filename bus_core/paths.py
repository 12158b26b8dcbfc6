"""`bus.auth.check_password`: the attribute paths users call, fire and listen through.

A path names an API, RPC or event and is resolved when used, so `bus.<api>.<name>` works for
APIs served elsewhere (remote) as well as for those registered on this client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bus_core.api import Parameter
from bus_core.errors import InvalidArguments
from bus_core.messages import EventMessage

if TYPE_CHECKING:
    from bus_core.client import BusClient
    from bus_core.listeners import Listener


def _api_names(client: BusClient) -> set[str]:
    return {*client.apis, *client.described}


def _signature(name: str, parameters: Sequence[Parameter]) -> str:
    shown = [p.name if p.required else f"{p.name}={p.default!r}" for p in parameters]
    return f"{name}({', '.join(shown)})"


class BusPath:
    """`bus.auth.check_password`: an API, RPC or event by name, resolved when used."""

    __slots__ = ("_client", "_parts")

    def __init__(self, client: BusClient, parts: tuple[str, ...]) -> None:
        self._client = client
        self._parts = parts

    def __getattr__(self, name: str) -> BusPath:
        if name.startswith("_"):
            raise AttributeError(name)
        return BusPath(self._client, (*self._parts, name))

    def __repr__(self) -> str:
        return f"<BusPath {self.describe()}>"

    def __dir__(self) -> list[str]:
        """What can follow this path: an API's RPCs and events, a namespace's APIs, an RPC's
        or event's methods (all methods when the path is unknown). Completion uses it."""
        definition = self._client.known_definition(".".join(self._parts))
        members = {*definition.rpcs, *definition.events} if definition else set()
        prefix = ".".join(self._parts) + "."
        children = {n[len(prefix):].split(".")[0] for n in _api_names(self._client)
                    if n.startswith(prefix)}
        if members or children:
            return sorted(members | children)
        parent = self._client.known_definition(".".join(self._parts[:-1]))
        if parent is not None and self._parts[-1] in parent.rpcs:
            return ["call_async", "describe"]
        if parent is not None and self._parts[-1] in parent.events:
            return ["describe", "fire", "fire_async", "fire_many", "fire_many_async", "listen",
                    "listen_async"]
        return ["call_async", "describe", "fire", "fire_async", "fire_many", "fire_many_async",
                "listen", "listen_async"]

    def describe(self) -> str:
        """What this path names, with parameters where the API is known (`bus shell` shows
        it as the path's repr)."""
        name = ".".join(self._parts)
        api = self._client.known_definition(name)
        if api is not None:
            rpcs = ", ".join(_signature(r.name, r.parameters) for r in api.rpcs.values())
            events = ", ".join(_signature(e.name, e.parameters) for e in api.events.values())
            return f"API {name}: RPCs {rpcs or '(none)'}; events {events or '(none)'}"
        parent = self._client.known_definition(".".join(self._parts[:-1]))
        member = self._parts[-1]
        if parent is not None and member in parent.rpcs:
            return f"RPC {parent.name}.{_signature(member, parent.rpcs[member].parameters)}"
        if parent is not None and member in parent.events:
            return f"event {parent.name}.{_signature(member, parent.events[member].parameters)}"
        return name

    @property
    def api_name(self) -> str:
        if len(self._parts) < 2:
            raise InvalidArguments(
                f"bus.{self._parts[0]} is an API; name an RPC or event on it, e.g. "
                f"bus.{self._parts[0]}.<name>"
            )
        return ".".join(self._parts[:-1])

    @property
    def member_name(self) -> str:
        return self._parts[-1]

    def _split(self, args: tuple[Any, ...], kwargs: dict[str, Any], verb: str
               ) -> tuple[str, str, dict[str, Any], dict[str, Any] | None]:
        api_name, name = self.api_name, self.member_name
        bus_options = kwargs.pop("bus_options", None)
        if args:
            raise InvalidArguments(self._keyword_hint(api_name, name, verb, len(args)))
        return api_name, name, kwargs, bus_options

    def _keyword_hint(self, api_name: str, name: str, verb: str, count: int) -> str:
        definition = self._client.known_definition(api_name)
        params: Sequence[Any] = ()
        if definition is not None:
            member = definition.rpcs.get(name) or definition.events.get(name)
            params = member.parameters if member else ()
        shown = ", ".join(f"{p.name}=..." for p in params) or "name=value, ..."
        call = f"bus.{api_name}.{name}" + ("" if verb == "call" else f".{verb}")
        return (f"{call}() takes keyword arguments only ({count} positional given); "
                f"call it as {call}({shown})")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        api_name, name, kwargs, options = self._split(args, kwargs, "call")
        return self._client.call_rpc(api_name, name, kwargs, options)

    async def call_async(self, *args: Any, **kwargs: Any) -> Any:
        api_name, name, kwargs, options = self._split(args, kwargs, "call_async")
        return await self._client.call_rpc_async(api_name, name, kwargs, options)

    def fire(self, *args: Any, **kwargs: Any) -> EventMessage:
        api_name, name, kwargs, options = self._split(args, kwargs, "fire")
        return self._client.fire(api_name, name, kwargs, options)

    async def fire_async(self, *args: Any, **kwargs: Any) -> EventMessage:
        api_name, name, kwargs, options = self._split(args, kwargs, "fire_async")
        return await self._client.fire_async(api_name, name, kwargs, options)

    def fire_many(self, many: Iterable[dict[str, Any]], *,
                  bus_options: dict[str, Any] | None = None) -> list[EventMessage]:
        """Fire this event once per kwargs dict of `many`, sent together (one round trip
        on Redis): `bus.shop.order_placed.fire_many([{...}, {...}])`."""
        return self._client.fire_many(self.api_name, self.member_name, many, bus_options)

    async def fire_many_async(self, many: Iterable[dict[str, Any]], *,
                              bus_options: dict[str, Any] | None = None) -> list[EventMessage]:
        return await self._client.fire_many_async(self.api_name, self.member_name, many,
                                                  bus_options)

    def listen(self, handler: Callable[..., Any], *, listener_name: str,
               since: str | datetime | None = None, on_error: str | None = None,
               max_concurrency: int | None = None, ordered: bool | None = None,
               transactional: bool = False) -> Listener:
        return self._client.listen(self, handler, listener_name=listener_name, since=since,
                                   on_error=on_error, max_concurrency=max_concurrency,
                                   ordered=ordered, transactional=transactional)

    async def listen_async(self, handler: Callable[..., Any], *, listener_name: str,
                           since: str | datetime | None = None, on_error: str | None = None,
                           max_concurrency: int | None = None, ordered: bool | None = None,
                           transactional: bool = False) -> Listener:
        return await self._client.listen_async(
            self, handler, listener_name=listener_name, since=since, on_error=on_error,
            max_concurrency=max_concurrency, ordered=ordered, transactional=transactional)


class Bus:
    """What `bus_core.create()` returns: `bus.client`, and `bus.<api>.<name>` paths."""

    def __init__(self, client: BusClient) -> None:
        self.client = client

    def __getattr__(self, name: str) -> BusPath:
        if name.startswith("_"):
            raise AttributeError(name)
        return BusPath(self.client, (name,))

    def __dir__(self) -> list[str]:
        return sorted({"client", *(name.split(".")[0] for name in _api_names(self.client))})

    def __repr__(self) -> str:
        return f"<Bus {self.client!r}>"

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.client.close()
