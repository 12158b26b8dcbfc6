"""Type hints -> JSON Schema (draft-07, as Lightbus 1.x peers publish it).

The per-API document: {"rpcs": {name: {"parameters": {...}, "response": {...}}},
"events": {name: {"parameters": {...}}}}. Docstrings fill `description`: the function's
first paragraph, and each parameter's from `:param name:` or a Google-style `Args:` block.
"""

from __future__ import annotations

import collections.abc as abc
import dataclasses
import datetime as dt
import enum
import inspect
import re
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from bus_core.api import MISSING, Api, ApiDefinition, Parameter
from bus_core.errors import WireError
from bus_core.values import to_wire

DRAFT = "http://json-schema.org/draft-07/schema#"
# Lightbus's pattern, plus the exponent `str(Decimal)` writes for very small or large values
# ("1E-7", "1E+3"): a Decimal we send must pass the schema we publish for it.
DECIMAL_PATTERN = r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$"

_SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    bytes: {"type": "string", "contentEncoding": "base64"},
    bytearray: {"type": "string", "contentEncoding": "base64"},
    complex: {"type": "string"},
    uuid.UUID: {"type": "string", "format": "uuid"},
    Decimal: {"type": "string", "pattern": DECIMAL_PATTERN},
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    type(None): {"type": "null"},
    dt.datetime: {"type": "string", "format": "date-time"},
    dt.date: {"type": "string", "format": "date"},
    dt.time: {"type": "string", "format": "time"},
    dict: {"type": "object"},
    list: {"type": "array"},
    tuple: {"type": "array"},
    set: {"type": "array"},
    frozenset: {"type": "array"},
}
_SEQUENCES = (list, set, frozenset, abc.Sequence, abc.MutableSequence, abc.Set, abc.MutableSet,
              abc.Iterable, abc.Collection)
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number",
               type(None): "null"}


def type_schema(hint: Any, _seen: frozenset[Any] = frozenset()) -> dict[str, Any]:
    """The JSON Schema of values of `hint` as they travel (see bus_core.values)."""
    if hint in (Any, object, inspect.Parameter.empty):
        return {}
    if hint is None:
        return {"type": "null"}
    simple = _SIMPLE.get(hint)
    if simple is not None:
        return dict(simple)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        schema = type_schema(args[0], _seen)
        notes = [a for a in args[1:] if isinstance(a, str)]
        if notes:
            schema["description"] = notes[0]
        return schema
    if origin in (typing.Union, types.UnionType):
        members = [type_schema(arg, _seen) for arg in args]
        return {"anyOf": _dedupe(members)}
    if origin is typing.Literal:
        return _enum_schema([to_wire(v) for v in args])
    if origin is tuple:
        if not hasattr(hint, "__args__"):  # bare typing.Tuple: any length, like `tuple`
            return {"type": "array"}
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": type_schema(args[0], _seen)}
        if args == ((),):
            return {"type": "array", "maxItems": 0}
        return {"type": "array", "items": [type_schema(a, _seen) for a in args],
                "minItems": len(args), "maxItems": len(args), "additionalItems": False}
    if origin in _SEQUENCES:
        schema = {"type": "array"}
        if args:
            schema["items"] = type_schema(args[0], _seen)
        return schema
    if origin in _MAPPINGS:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = type_schema(args[1], _seen)
        return schema
    if origin is type:
        return {}
    if not isinstance(hint, type):
        return {}
    if hint in _seen:
        return {}  # a recursive type: stop here rather than loop
    if issubclass(hint, enum.Enum):
        return _enum_schema([to_wire(member.value) for member in hint])
    to_bus = getattr(hint, "__to_bus__", None)
    if to_bus is not None:
        try:
            returned = typing.get_type_hints(to_bus).get("return", Any)
        except Exception:
            returned = Any
        return type_schema(returned, _seen | {hint})
    if dataclasses.is_dataclass(hint) or _is_namedtuple(hint) or typing.is_typeddict(hint):
        return _record_schema(hint, _seen | {hint})
    for base, schema in _SIMPLE.items():  # subclasses of the simple types (str enums etc.)
        if isinstance(base, type) and base is not type(None) and issubclass(hint, base):
            return dict(schema)
    if issubclass(hint, abc.Mapping):
        return {"type": "object"}
    return {}


def _enum_schema(values: list[Any]) -> dict[str, Any]:
    """`enum`, with the JSON type when every value has the same one."""
    kinds = {_JSON_TYPES.get(type(v)) for v in values}
    if len(kinds) == 1 and None not in kinds:
        return {"type": kinds.pop(), "enum": values}
    return {"enum": values}


def _is_namedtuple(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields")


def _record_schema(record: type, seen: frozenset[Any]) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(record, include_extras=True)
    except Exception:
        hints = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    if dataclasses.is_dataclass(record):
        for f in dataclasses.fields(record):
            properties[f.name] = type_schema(hints.get(f.name, Any), seen)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
            elif f.default is not dataclasses.MISSING:
                _add_default(properties[f.name], f.default)
    elif typing.is_typeddict(record):
        for name, hint in hints.items():
            properties[name] = type_schema(hint, seen)
        required = sorted(getattr(record, "__required_keys__", hints))
    else:
        defaults = getattr(record, "_field_defaults", {})
        for name in record._fields:  # type: ignore[attr-defined]
            properties[name] = type_schema(hints.get(name, Any), seen)
            if name in defaults:
                _add_default(properties[name], defaults[name])
            else:
                required.append(name)
    schema: dict[str, Any] = {"type": "object", "title": record.__name__,
                              "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _add_default(schema: dict[str, Any], default: Any) -> None:
    try:
        schema["default"] = to_wire(default)
    except WireError:
        return
    if default is None and schema and schema.get("type") != "null" and "anyOf" not in schema:
        inner = dict(schema)
        inner.pop("default", None)
        schema.clear()
        schema.update({"anyOf": [inner, {"type": "null"}], "default": None})


def _dedupe(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    unique: list[dict[str, Any]] = []
    for member in members:
        if member not in unique:
            unique.append(member)
    return unique


# -- docstrings ------------------------------------------------------------------------------

_SPHINX_PARAM = re.compile(r"^\s*:param\s+(?:[^:]+\s+)?(\w+):\s*(.*)$")
_SECTIONS = {"Args:", "Arguments:", "Parameters:", "Returns:", "Return:", "Raises:",
             "Yields:", "Example:", "Examples:", "Note:", "Notes:"}
_GOOGLE_ARG = re.compile(r"^\s+(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def describe(function: Callable[..., Any] | None) -> tuple[str | None, dict[str, str]]:
    """(summary, {parameter: description}) read from a function's docstring."""
    doc = inspect.getdoc(function) if function is not None else None
    if not doc:
        return None, {}
    summary_lines: list[str] = []
    for line in doc.splitlines():  # the first paragraph, up to a field list or section
        if not line.strip() or line.strip().startswith(":") or line.strip() in _SECTIONS:
            break
        summary_lines.append(line.strip())
    summary = " ".join(summary_lines) or None
    params: dict[str, str] = {}
    lines = doc.splitlines()
    in_args = False
    last: str | None = None
    for line in lines:
        sphinx = _SPHINX_PARAM.match(line)
        if sphinx:
            params[sphinx.group(1)] = sphinx.group(2).strip()
            last, in_args = sphinx.group(1), False
            continue
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            in_args, last = True, None
            continue
        if in_args:
            google = _GOOGLE_ARG.match(line)
            if google and (len(line) - len(line.lstrip())) <= 4:
                last = google.group(1).lstrip("*")
                params[last] = google.group(2).strip()
                continue
            if not line.strip() or not line.startswith(" "):
                in_args = line.startswith(" ") and bool(line.strip())
                last = None
                continue
        if last and line.startswith("    ") and line.strip():
            params[last] = f"{params[last]} {line.strip()}".strip()
    return summary, params


# -- per-API documents ------------------------------------------------------------------------


def parameters_schema(title: str, parameters: Sequence[Parameter], accepts_extra: bool,
                      descriptions: dict[str, str] | None = None,
                      summary: str | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for p in parameters:
        schema = type_schema(p.type)
        if p.default is MISSING:
            required.append(p.name)
        else:
            _add_default(schema, p.default)
        note = (descriptions or {}).get(p.name)
        if note:
            schema["description"] = note
        properties[p.name] = schema
    document: dict[str, Any] = {"$schema": DRAFT, "title": title, "type": "object",
                                "additionalProperties": accepts_extra,
                                "properties": properties}
    if required:
        document["required"] = required
    if summary:
        document["description"] = summary
    return document


def api_schema(api: Api | type[Api]) -> dict[str, Any]:
    """The Lightbus-compatible schema document of one API."""
    cls = api if isinstance(api, type) else type(api)
    definition: ApiDefinition = cls.definition
    rpcs: dict[str, Any] = {}
    for rpc in definition.rpcs.values():
        summary, notes = describe(getattr(cls, rpc.name, None))
        name = f"{definition.name}.{rpc.name}()"
        # The RPC's title wins over a returned record's own (e.g. "Address").
        response = {**type_schema(rpc.return_type), "$schema": DRAFT,
                    "title": f"RPC {name} response"}
        rpcs[rpc.name] = {
            "parameters": parameters_schema(f"RPC {name} parameters", rpc.parameters,
                                            rpc.accepts_extra, notes, summary),
            "response": response,
        }
    events: dict[str, Any] = {}
    for event in definition.events.values():
        events[event.name] = {"parameters": parameters_schema(
            f"Event {definition.name}.{event.name} parameters", event.parameters, False)}
    return {"rpcs": rpcs, "events": events}
