"""Python values <-> wire values.

`to_wire` turns a Python value into JSON-safe data following the Lightbus 1.x conventions
(ISO 8601 datetimes, UUID/Decimal as strings, bytes as base64, Enum by value, dataclasses and
NamedTuples as objects, `__to_bus__()`). `from_wire` casts received data back to the type a
handler's hint asks for. `wire_problem` tells at registration time whether a hint can travel.
"""

from __future__ import annotations

import base64
import collections.abc as _abc
import dataclasses
import datetime as dt
import enum
import json
import math
import types
import typing
import uuid
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from bus_core.errors import WireError

_SCALARS = (str, int, float, bool, type(None))
_EXACT = frozenset((str, int, float, bool))


def to_wire(value: Any) -> Any:
    """Return a JSON-safe form of `value`; raise WireError for a value that cannot travel."""
    if isinstance(value, _SCALARS):
        if isinstance(value, float) and not math.isfinite(value):
            raise WireError(f"cannot send {value}: JSON has no NaN or infinity")
        return value
    if isinstance(value, dict):
        return {str(key): to_wire(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return {name: to_wire(getattr(value, name)) for name in value._fields}
        return [to_wire(item) for item in value]
    if isinstance(value, enum.Enum):
        return to_wire(value.value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, Decimal, complex)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    to_bus = getattr(value, "__to_bus__", None)
    if to_bus is not None:
        return to_wire(to_bus())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): to_wire(item) for key, item in value.items()}
    raise WireError(
        f"cannot send a value of type {type(value).__name__}: use a JSON type, a dataclass, "
        "a NamedTuple, an Enum, or give the class a __to_bus__() method"
    )


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _is_namedtuple(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields")


def _is_typeddict(hint: Any) -> bool:
    return isinstance(hint, type) and typing.is_typeddict(hint)


def _fail(value: Any, hint: Any, reason: str = "") -> WireError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    name = getattr(hint, "__name__", None) or str(hint)
    return WireError(f"expected {name}, got {shown}" + (f" ({reason})" if reason else ""))


def from_wire(value: Any, hint: Any) -> Any:
    """Cast JSON data `value` to `hint`; unannotated (`Any`) values pass through unchanged."""
    if type(value) is hint and hint in _EXACT:  # the common case: a str for a str
        return value
    if hint is Any or hint is None or hint is typing.Any or hint is object:
        return value
    if hint is type(None):
        if value is not None:
            raise _fail(value, hint)
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return from_wire(value, typing.get_args(hint)[0])
    if _is_union(hint):
        return _from_union(value, typing.get_args(hint))
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise _fail(value, hint, f"one of {typing.get_args(hint)!r}")
        return value
    if origin is not None:
        return _from_generic(value, origin, typing.get_args(hint), hint)
    if not isinstance(hint, type):
        return value
    return _from_class(value, hint)


def _key_from_wire(key: Any, hint: Any) -> Any:
    """JSON object keys are always strings: `{1: ...}` arrives as `{"1": ...}`, so a key
    that does not cast as it is gets a second try as the JSON it spells."""
    try:
        return from_wire(key, hint)
    except WireError:
        if not isinstance(key, str):
            raise
        try:
            decoded = json.loads(key)
        except ValueError:
            raise WireError(f"object key {key!r} does not fit {hint}") from None
        return from_wire(decoded, hint)


def _from_union(value: Any, members: tuple[Any, ...]) -> Any:
    if value is None and type(None) in members:
        return None
    errors = []
    for member in members:
        if member is type(None):
            continue
        try:
            return from_wire(value, member)
        except WireError as exc:
            errors.append(str(exc))
    raise WireError("; ".join(errors) or f"unexpected {value!r}")


def _from_generic(value: Any, origin: Any, args: tuple[Any, ...], hint: Any) -> Any:
    if origin in (list, set, frozenset, tuple) or origin in _ABC_SEQUENCES:
        if not isinstance(value, list):
            raise _fail(value, hint, "a list")
        if origin is tuple:
            if not args:  # a bare Tuple: any items
                return tuple(value)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(from_wire(item, args[0]) for item in value)
            if args and len(args) != len(value):
                raise _fail(value, hint, f"{len(args)} items")
            return tuple(from_wire(item, arg) for item, arg in zip(value, args, strict=False))
        item_hint = args[0] if args else Any
        items = [from_wire(item, item_hint) for item in value]
        return origin(items) if origin in (set, frozenset) else items
    if origin in (dict, Mapping) or origin in _ABC_MAPPINGS:
        if not isinstance(value, dict):
            raise _fail(value, hint, "an object")
        key_hint, value_hint = args if len(args) == 2 else (Any, Any)
        return {_key_from_wire(k, key_hint): from_wire(v, value_hint) for k, v in value.items()}
    if origin is type:
        return value
    return value


def _from_class(value: Any, hint: type) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise _fail(value, hint)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise _fail(value, hint)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(value, hint)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _fail(value, hint)
        return value
    if issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise _fail(value, hint, f"one of {[m.value for m in hint]!r}") from None
    from_bus = getattr(hint, "__from_bus__", None)
    if from_bus is not None:
        return from_bus(value)
    caster = _CASTERS.get(hint)
    if caster is not None:
        if isinstance(value, hint) and not (hint is dt.date and isinstance(value, dt.datetime)):
            return value
        try:
            return caster(value)
        except (TypeError, ValueError, InvalidOperation, base64.binascii.Error) as exc:
            raise _fail(value, hint, str(exc) or type(exc).__name__) from None
    if dataclasses.is_dataclass(hint) or _is_namedtuple(hint):
        return _from_record(value, hint)
    if _is_typeddict(hint):
        if not isinstance(value, dict):
            raise _fail(value, hint, "an object")
        hints = typing.get_type_hints(hint)
        return {k: from_wire(v, hints.get(k, Any)) for k, v in value.items()}
    if hint in (list, tuple, set, frozenset):
        if not isinstance(value, list):
            raise _fail(value, hint, "a list")
        return hint(value)
    if hint is dict:
        if not isinstance(value, dict):
            raise _fail(value, hint, "an object")
        return value
    return value


def _from_record(value: Any, hint: type) -> Any:
    if not isinstance(value, dict):
        raise _fail(value, hint, "an object")
    hints = typing.get_type_hints(hint)
    names = (
        [f.name for f in dataclasses.fields(hint)] if dataclasses.is_dataclass(hint)
        else list(hint._fields)  # type: ignore[attr-defined]
    )
    kwargs = {k: from_wire(v, hints.get(k, Any)) for k, v in value.items() if k in names}
    try:
        return hint(**kwargs)
    except TypeError as exc:
        raise _fail(value, hint, str(exc)) from None


def _decode_bytes(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("a base64 string")
    return base64.b64decode(value.encode("ascii"), validate=True)


def _checked(kind: type, parse: Any) -> Any:
    def cast(value: Any) -> Any:
        if not isinstance(value, str):
            raise TypeError(f"a {kind.__name__} string")
        return parse(value)

    return cast


_CASTERS: dict[type, Any] = {
    dt.datetime: _checked(dt.datetime, dt.datetime.fromisoformat),
    dt.date: _checked(dt.date, dt.date.fromisoformat),
    dt.time: _checked(dt.time, dt.time.fromisoformat),
    uuid.UUID: _checked(uuid.UUID, uuid.UUID),
    Decimal: lambda v: _decimal(v),
    complex: _checked(complex, complex),
    bytes: _decode_bytes,
}


def _decimal(value: Any) -> Decimal:
    """A Decimal from its wire string (or a number a peer sent as one)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError("a decimal number as a string")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError("not a decimal number") from None


_ABC_SEQUENCES = (_abc.Sequence, _abc.MutableSequence, _abc.Set, _abc.MutableSet,
                  _abc.Iterable, _abc.Collection)
_ABC_MAPPINGS = (_abc.MutableMapping,)


def wire_problem(hint: Any) -> str | None:
    """Why values of `hint` cannot go on the wire, or None when they can."""
    if hint in (Any, typing.Any, object, type(None), None, Ellipsis):
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return wire_problem(typing.get_args(hint)[0])
    if origin is typing.Literal:
        return None
    if origin is not None:
        for arg in typing.get_args(hint):
            problem = wire_problem(arg)
            if problem:
                return problem
        return None
    if isinstance(hint, typing.TypeVar):
        return None
    if not isinstance(hint, type):
        return None
    if hint in _SCALARS or hint in _CASTERS or hint in (list, tuple, set, frozenset, dict):
        return None
    if issubclass(hint, enum.Enum) or hasattr(hint, "__to_bus__"):
        return None
    if issubclass(hint, (bytearray, memoryview, Mapping)):
        return None
    if dataclasses.is_dataclass(hint) or _is_namedtuple(hint) or _is_typeddict(hint):
        hints = typing.get_type_hints(hint)
        for name, field_hint in hints.items():
            problem = wire_problem(field_hint)
            if problem:
                return f"{hint.__name__}.{name}: {problem}"
        return None
    return (
        f"{hint.__name__} is not a JSON type, dataclass, NamedTuple, TypedDict or Enum "
        "and has no __to_bus__() method"
    )
