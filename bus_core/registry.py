"""The APIs a client knows: those registered here (served, and whose events it may fire),
those plugins describe (remote, for help and completion), and the compiled plans of the
message path for each RPC and event (see `bus_core.message_path`)."""

from __future__ import annotations

from typing import Any

from bus_core.api import Api, ApiDefinition, EventDefinition, RpcDefinition, warn_about_wire_types
from bus_core.errors import InvalidArguments, UnknownApi, UnknownEvent, UnknownRpc
from bus_core.message_path import OutgoingCall, OutgoingEvent, ServedRpc, check_arguments
from bus_core.runtime import is_async_callable

MAX_COMPILED_CALLS = 10_000  # plans kept for RPCs of APIs not registered here


class ApiRegistry:
    """A client's APIs and their compiled message plans."""

    def __init__(self) -> None:
        self.apis: dict[str, Api] = {}
        self.described: dict[str, ApiDefinition] = {}  # remote APIs plugins told us of
        self.procedures: dict[tuple[str, str], ServedRpc] = {}
        self.calls: dict[tuple[str, str], OutgoingCall] = {}
        self.events: dict[tuple[str, str], OutgoingEvent] = {}
        self.generation = 0  # changes whenever what is known of APIs changes

    def register(self, api: Api) -> Api:
        """Serve (and be allowed to fire the events of) `api`."""
        if isinstance(api, type) and issubclass(api, Api):
            raise InvalidArguments(
                f"register_api() takes an instance: register_api({api.__name__}())"
            )
        if not isinstance(api, Api) or not hasattr(type(api), "definition"):
            raise InvalidArguments(
                f"register_api() takes an instance of an Api subclass with a Meta.name, "
                f"got {api!r}"
            )
        definition = api.definition
        existing = self.apis.get(definition.name)
        if existing is not None and existing is not api:
            raise InvalidArguments(
                f"API {definition.name!r} is already registered on this client "
                f"({type(existing).__name__})"
            )
        warn_about_wire_types(definition)
        self.apis[definition.name] = api
        self.generation += 1
        for rpc in definition.rpcs.values():
            method = getattr(api, rpc.name)
            self.procedures[(definition.name, rpc.name)] = ServedRpc(
                method, is_async_callable(method), rpc,
                {p.name: p.type for p in rpc.parameters})
        for key in [key for key in self.calls if key[0] == definition.name]:
            del self.calls[key]  # compiled while the API was remote
        return api

    def definition(self, api_name: str) -> ApiDefinition | None:
        api = self.apis.get(api_name)
        return api.definition if api is not None else None

    def known(self, api_name: str) -> ApiDefinition | None:
        """The API as registered here, else as last described by a plugin."""
        return self.definition(api_name) or self.described.get(api_name)

    def remember_described(self, described: dict[str, ApiDefinition]) -> dict[str, Any]:
        self.described = {name: d for name, d in described.items() if name not in self.apis}
        self.generation += 1
        return {**self.described, **{name: a.definition for name, a in self.apis.items()}}

    def outgoing_call(self, api_name: str, procedure_name: str) -> OutgoingCall:
        """How calls of `api_name.procedure_name` are checked and converted (compiled once);
        UnknownRpc when the API is registered here without that RPC."""
        found = self.calls.get((api_name, procedure_name))
        if found is None:
            definition = self.definition(api_name)
            rpc = None
            if definition is not None:
                rpc = definition.rpcs.get(procedure_name)
                if rpc is None:
                    raise UnknownRpc(
                        f"API {api_name!r} has no RPC {procedure_name!r}; its RPCs: "
                        f"{', '.join(sorted(definition.rpcs)) or 'none'}"
                    )
            found = OutgoingCall(api_name, procedure_name, rpc)
            if definition is not None or len(self.calls) < MAX_COMPILED_CALLS:
                self.calls[(api_name, procedure_name)] = found
        return found

    def check_call(self, api_name: str, procedure_name: str,
                   kwargs: dict[str, Any]) -> RpcDefinition | None:
        """Refuse unknown RPCs and bad arguments of an API registered here (its definition
        is returned; None for an API served elsewhere, whose worker checks)."""
        rpc = self.outgoing_call(api_name, procedure_name).rpc
        if rpc is not None:
            check_arguments(f"{api_name}.{procedure_name}()", rpc.parameters,
                            rpc.accepts_extra, kwargs)
        return rpc

    def outgoing_event(self, api_name: str, event_name: str) -> OutgoingEvent:
        """How fires of `api_name.event_name` are checked and converted (compiled once);
        UnknownApi/UnknownEvent unless the API is registered here with that event."""
        found = self.events.get((api_name, event_name))
        if found is None:
            event = self.event_definition(api_name, event_name, required=True)
            found = OutgoingEvent(api_name, event, self.apis[api_name].definition.version)
            self.events[(api_name, event_name)] = found
        return found

    def event_definition(self, api_name: str, event_name: str, *,
                         required: bool) -> EventDefinition | None:
        """The local definition of an event; raise when the API is local but the event is
        not, or (required=True) when the API is not registered here."""
        definition = self.definition(api_name)
        if definition is None:
            if required:
                raise UnknownApi(
                    f"cannot fire {api_name}.{event_name}: API {api_name!r} is not registered "
                    f"on this client (registered: {', '.join(sorted(self.apis)) or 'none'}). "
                    f"A service fires only its own events: bus.client.register_api(...) first"
                )
            return None
        event = definition.events.get(event_name)
        if event is None:
            raise UnknownEvent(
                f"API {api_name!r} has no event {event_name!r}; its events: "
                f"{', '.join(sorted(definition.events)) or 'none'}"
            )
        return event
