"""Schema documents read back as API definitions: names and parameters of the RPCs and
events of APIs this process does not register, for `bus shell` completion and help."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bus_core.api import ApiDefinition, EventDefinition, Parameter, RpcDefinition


def _parameters(schema: Mapping[str, Any]) -> tuple[tuple[Parameter, ...], bool]:
    """(parameters, accepts extra ones) of a `parameters` schema: the required ones in the
    order the schema's `required` lists them (a signature's order; stored schemas may have
    their properties sorted), then the optional ones."""
    properties = schema.get("properties") or {}
    required = [name for name in schema.get("required") or () if name in properties]
    optional = [name for name in properties if name not in required]
    params = [Parameter(name, Any) for name in required]
    for name in optional:
        prop = properties[name]
        params.append(Parameter(name, Any, prop.get("default") if isinstance(prop, Mapping)
                                else None))
    return tuple(params), bool(schema.get("additionalProperties", False))


def definition_from_schema(api_name: str, document: Mapping[str, Any]) -> ApiDefinition:
    """The ApiDefinition a schema document describes (types are not read back: Any)."""
    rpcs: dict[str, RpcDefinition] = {}
    for name, rpc in (document.get("rpcs") or {}).items():
        parameters = rpc.get("parameters") or {}
        params, extra = _parameters(parameters)
        rpcs[name] = RpcDefinition(name=name, parameters=params, accepts_extra=extra,
                                   return_type=Any, doc=parameters.get("description"))
    events: dict[str, EventDefinition] = {}
    for name, event in (document.get("events") or {}).items():
        params, _ = _parameters(event.get("parameters") or {})
        events[name] = EventDefinition(name=name, parameters=params, record=None)
    return ApiDefinition(name=api_name, version=1, rpcs=rpcs, events=events, doc=None)
