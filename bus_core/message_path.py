"""The message path the client and the worker share: checking arguments against what an API
declares, converting values to and from the wire, timeouts, and error results.

Each event, RPC and listener gets its plan compiled once (`OutgoingEvent`, `OutgoingCall`,
`ServedRpc`, `HandlerArguments`): the names it takes, its defaults, and per parameter the
types that need no conversion or check at all, so the common message (strings and numbers
matching their hints) costs a few dict lookups. Anything off the fast path falls back to the
general functions below, which also write every error message, so both paths say the same.
"""

from __future__ import annotations

import math
import traceback
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bus_core.errors import InvalidArguments, RemoteError, WireError
from bus_core.messages import EventMessage, ResultMessage, RpcMessage
from bus_core.values import from_wire, to_wire

_BUS_OPTIONS = ("timeout",)
_NONE = type(None)
# Values of these types are their own wire form (a float only when finite: checked apart).
_SELF_WIRED = frozenset((str, int, bool, _NONE))
_EXACT_HINTS = frozenset((str, int, float, bool))


def passing_types(hint: Any) -> frozenset[type] | None:
    """The value types that `from_wire(value, hint)` returns unchanged for every value (so
    neither sender nor receiver needs to call it); None when every type passes (`Any`)."""
    if hint is Any or hint is object or hint is None:
        return None
    if hint in _EXACT_HINTS:
        return frozenset((hint,))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if all(m is _NONE or m in _EXACT_HINTS for m in members):
            return frozenset(members)
    return frozenset()


# -- the general path (and every error message) ------------------------------------------------


def check_arguments(where: str, parameters: Sequence[Any], accepts_extra: bool,
                    kwargs: Mapping[str, Any]) -> None:
    names = [p.name for p in parameters]
    if not accepts_extra:
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            raise InvalidArguments(
                f"{where} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
                f"it takes: {', '.join(names) or 'no parameters'}"
            )
    missing = [p.name for p in parameters if p.required and p.name not in kwargs]
    if missing:
        raise InvalidArguments(
            f"{where} is missing required parameter(s) {', '.join(map(repr, missing))}"
        )


def wire_kwargs(where: str, kwargs: Mapping[str, Any],
                parameters: Sequence[Any] = ()) -> dict[str, Any]:
    """Wire forms of `kwargs`; with the declared `parameters`, each value is also checked
    against its declared type here, before sending, rather than refused by the receiver."""
    out = {}
    declared = {p.name: p.type for p in parameters if p.type is not typing.Any}
    for key, value in kwargs.items():
        try:
            out[key] = wire = to_wire(value)
            hint = declared.get(key)
            if hint is not None:
                from_wire(wire, hint)
        except WireError as exc:
            raise InvalidArguments(f"{where} parameter {key!r}: {exc}") from None
        except RecursionError:
            raise InvalidArguments(f"{where} parameter {key!r} nests too deeply to send (or "
                                   "contains itself)") from None
    return out


def cast_kwargs(where: str, kwargs: dict[str, Any], hints: Mapping[str, Any]) -> dict[str, Any]:
    """Cast received wire values to the receiving function's hints; name the parameter on
    failure."""
    if not hints:
        return kwargs
    out = {}
    for key, value in kwargs.items():
        hint = hints.get(key)
        if hint is None:
            out[key] = value
            continue
        try:
            out[key] = from_wire(value, hint)
        except WireError as exc:
            raise WireError(f"{where} parameter {key!r}: {exc}") from None
    return out


# -- compiled plans ------------------------------------------------------------------------------


class _Outgoing:
    """What a sender checks and converts for one event or RPC, compiled from its parameters."""

    __slots__ = (
        "accepts_extra",
        "checked",
        "defaults",
        "names",
        "parameters",
        "required",
        "where",
    )

    def __init__(self, where: str, parameters: Sequence[Any], accepts_extra: bool,
                 fill_defaults: bool) -> None:
        self.where = where
        self.parameters = tuple(parameters)
        self.accepts_extra = accepts_extra
        self.names = frozenset(p.name for p in parameters)
        self.required = frozenset(p.name for p in parameters if p.required)
        self.defaults = ({p.name: p.default for p in parameters if not p.required}
                         if fill_defaults else {})
        # name -> (hint, the types that pass it unchanged) for the parameters with a hint
        self.checked = {p.name: (p.type, passing_types(p.type)) for p in parameters
                        if passing_types(p.type) is not None}

    def wire(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The checked wire form of `kwargs`, defaults filled in; InvalidArguments when they
        do not fit the declaration."""
        keys = kwargs.keys()
        if not (self.required <= keys and (self.accepts_extra or keys <= self.names)):
            check_arguments(self.where, self.parameters, self.accepts_extra, kwargs)
        values = {**self.defaults, **kwargs} if self.defaults else kwargs
        checked = self.checked
        out = {}
        for key, value in values.items():
            kind = type(value)
            if kind in _SELF_WIRED or (kind is float and math.isfinite(value)):
                spec = checked.get(key)
                if spec is None or kind in spec[1]:  # type: ignore[operator]
                    out[key] = value
                    continue
            # anything else: the general conversion and check (and its error message)
            return wire_kwargs(self.where, values, self.parameters)
        return out


class OutgoingEvent(_Outgoing):
    """An event of an API registered here, as `fire()` sends it."""

    __slots__ = ("api_name", "event_name", "version")

    def __init__(self, api_name: str, event: Any, version: int) -> None:
        super().__init__(f"{api_name}.{event.name}", event.parameters, False, True)
        self.api_name = api_name
        self.event_name = event.name
        self.version = version


class OutgoingCall(_Outgoing):
    """An RPC as a caller sends it: checked against the definition when its API is
    registered here, else only converted for the wire (the worker checks)."""

    __slots__ = ("rpc",)

    def __init__(self, api_name: str, procedure_name: str, rpc: Any | None) -> None:
        where = f"{api_name}.{procedure_name}()"
        if rpc is None:
            super().__init__(where, (), True, False)
        else:
            super().__init__(where, rpc.parameters, rpc.accepts_extra, False)
        self.rpc = rpc


class _Incoming:
    """Casting received wire values to a receiving function's hints, compiled once."""

    __slots__ = ("casts",)

    def __init__(self, hints: Mapping[str, Any]) -> None:
        # name -> (hint, the types that reach it unchanged)
        self.casts = {name: (hint, passing_types(hint) or frozenset())
                      for name, hint in hints.items() if passing_types(hint) is not None}

    def cast(self, where: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        casts = self.casts
        if not casts:
            return kwargs
        for key, value in kwargs.items():
            spec = casts.get(key)
            if spec is not None and type(value) not in spec[1]:
                return cast_kwargs(where, kwargs, {k: h for k, (h, _) in casts.items()})
        return kwargs


class ServedRpc(_Incoming):
    """An RPC this process serves: its procedure, and how a received call's arguments are
    checked and cast for it."""

    __slots__ = ("function", "is_async", "names", "required", "rpc")

    def __init__(self, function: Callable[..., Any], is_async: bool, rpc: Any,
                 hints: Mapping[str, Any]) -> None:
        super().__init__(hints)
        self.function = function
        self.is_async = is_async
        self.rpc = rpc
        self.names = frozenset(p.name for p in rpc.parameters)
        self.required = frozenset(p.name for p in rpc.parameters if p.required)

    def arguments(self, message: RpcMessage) -> dict[str, Any]:
        """The procedure's keyword arguments from a received call's wire kwargs."""
        kwargs = message.kwargs
        keys = kwargs.keys()
        if not (self.required <= keys and (self.rpc.accepts_extra or keys <= self.names)):
            check_arguments(f"{message.canonical_name}()", self.rpc.parameters,
                            self.rpc.accepts_extra, kwargs)
        if not self.casts:
            return kwargs
        return self.cast(f"{message.canonical_name}()", kwargs)


class HandlerArguments(_Incoming):
    """What an event handler takes: the parameters it names (or all, with **kwargs), those it
    requires, and their casts."""

    __slots__ = ("accepts_extra", "names", "required")

    def __init__(self, hints: Mapping[str, Any], names: frozenset[str],
                 required: frozenset[str], accepts_extra: bool) -> None:
        super().__init__(hints)
        self.names = names
        self.required = required
        self.accepts_extra = accepts_extra

    def select(self, message: EventMessage, listener_name: str) -> dict[str, Any]:
        """The handler's keyword arguments from an event's wire kwargs; WireError when the
        event lacks one it requires, or a value does not cast."""
        kwargs = message.kwargs
        if not self.accepts_extra and not kwargs.keys() <= self.names:
            kwargs = {k: v for k, v in kwargs.items() if k in self.names}
        if not self.required <= kwargs.keys():
            missing = self.required.difference(kwargs)
            raise WireError(
                f"event {message.canonical_name} lacks parameter(s) "
                f"{', '.join(sorted(missing))} that listener {listener_name!r} requires"
            )
        if not self.casts:
            return kwargs
        return self.cast(message.canonical_name, kwargs)


# -- timeouts and errors -----------------------------------------------------------------------


def timeout_for(bus_options: dict[str, Any] | None, default: float, setting: str
                ) -> tuple[float, str]:
    """The timeout to use, and where it came from (for error messages)."""
    if bus_options is None:
        return float(default), setting
    if not isinstance(bus_options, dict):
        raise InvalidArguments(f"bus_options must be a dict such as {{'timeout': 2}}, got "
                               f"{bus_options!r}")
    unknown = sorted(set(bus_options) - set(_BUS_OPTIONS))
    if unknown:
        raise InvalidArguments(f"unknown bus_options {', '.join(map(repr, unknown))}; "
                               f"known: {', '.join(_BUS_OPTIONS)}")
    if bus_options.get("timeout") is not None:
        value = bus_options["timeout"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise InvalidArguments(f"bus_options timeout must be a positive number of "
                                   f"seconds, got {value!r}")
        return float(value), "bus_options timeout"
    return float(default), setting


def rpc_timeout_message(api_name: str, procedure_name: str, seconds: float,
                        source: str) -> str:
    return (f"{api_name}.{procedure_name}() got no result within {seconds:g}s ({source}): no "
            f"worker serving API {api_name!r} answered in time (none running, all busy, or "
            "the RPC is slower than that)")


def fire_timeout_message(where: str, seconds: float, source: str) -> str:
    """A fire that timed out may have reached the transport all the same (a slow Redis
    writes it late): say so, so nobody re-fires blindly."""
    return (f"firing {where} was not confirmed by the event transport within {seconds:g}s "
            f"({source}); it may still have been written and delivered, so firing it again "
            "may deliver it twice")


def error_result(message: RpcMessage, error: BaseException, *,
                 with_traceback: bool = True) -> ResultMessage:
    """A Lightbus-compatible error result: `repr(error)` plus the formatted traceback, or
    (`bus.send_tracebacks: false`) only its last line, the type and message, so no path or
    source line of the worker reaches the caller."""
    if with_traceback:
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    else:
        trace = "".join(traceback.format_exception_only(type(error), error))
    return ResultMessage(rpc_message_id=message.id, result=repr(error), error=True, trace=trace)


def remote_error(message: RpcMessage, result: ResultMessage) -> RemoteError:
    trace = result.trace or ""
    last = trace.rstrip().rsplit("\n", 1)[-1] if trace else ""
    remote_type, sep, remote_message = last.partition(": ")
    if not sep or " " in remote_type.strip():
        remote_type, remote_message = _parse_repr(str(result.result))
    remote_type = remote_type.strip().rsplit(".", 1)[-1]  # "pkg.errors.Denied" -> "Denied"
    return RemoteError(message.api_name, message.procedure_name, remote_type, remote_message,
                       trace)


def _parse_repr(text: str) -> tuple[str, str]:
    name, sep, rest = text.partition("(")
    if sep and rest.endswith(")") and name.replace(".", "").replace("_", "").isalnum():
        inner = rest[:-1]
        if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
            inner = inner[1:-1]
        return name, inner
    return "Exception", text
