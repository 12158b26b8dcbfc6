"""Api, Event and Parameter: how a service declares what it offers on the bus.

    class AuthApi(Api):
        user_registered = Event(parameters=("username", "email"))

        class Meta:
            name = "auth"

        def check_password(self, username: str, password: str) -> bool: ...

Public methods are RPCs, `Event` attributes are events. Declaring a class does not register
it anywhere: `bus.client.register_api(AuthApi())` does, on that one bus client.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from bus_core.errors import InvalidApi
from bus_core.values import wire_problem

MISSING: Any = inspect.Parameter.empty
_API_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*")
_MEMBER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
RESERVED_API_NAMES = {"default"}


@dataclasses.dataclass(frozen=True, slots=True)
class Parameter:
    """One declared parameter of an event (or an RPC, read from its signature)."""

    name: str
    type: Any = Any
    default: Any = MISSING

    @property
    def required(self) -> bool:
        return self.default is MISSING


def _parameters_from_record(record: type) -> tuple[Parameter, ...]:
    hints = typing.get_type_hints(record, include_extras=True)
    if dataclasses.is_dataclass(record):
        params = []
        for f in dataclasses.fields(record):
            default = f.default
            if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            default = MISSING if default is dataclasses.MISSING else default
            params.append(Parameter(f.name, hints.get(f.name, Any), default))
        return tuple(params)
    defaults = getattr(record, "_field_defaults", {})
    return tuple(
        Parameter(name, hints.get(name, Any), defaults.get(name, MISSING))
        for name in record._fields  # type: ignore[attr-defined]
    )


class Event:
    """An event an API can fire. `parameters` is a sequence of names or `Parameter`s,
    or a dataclass / NamedTuple class whose fields are the parameters."""

    def __init__(self, parameters: Sequence[str | Parameter] | type = ()) -> None:
        self.record: type | None = None
        if isinstance(parameters, type):
            if not (dataclasses.is_dataclass(parameters) or hasattr(parameters, "_fields")):
                raise InvalidApi(
                    f"Event(parameters={parameters.__name__}) needs a dataclass or NamedTuple "
                    "class, a list of names, or a list of Parameter(...)"
                )
            self.record = parameters
            self.parameters = _parameters_from_record(parameters)
        elif isinstance(parameters, str):
            raise InvalidApi(
                f"Event(parameters={parameters!r}) got a single string; "
                f"write Event(parameters=({parameters!r},)) for one parameter"
            )
        else:
            self.parameters = tuple(
                p if isinstance(p, Parameter) else Parameter(str(p)) for p in parameters
            )
        names = [p.name for p in self.parameters]
        duplicated = {n for n in names if names.count(n) > 1}
        if duplicated:
            raise InvalidApi(f"Event declares parameter(s) twice: {sorted(duplicated)}")
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Event({self.name or '?'}: {', '.join(p.name for p in self.parameters)})"


@dataclasses.dataclass(frozen=True, slots=True)
class RpcDefinition:
    name: str
    parameters: tuple[Parameter, ...]
    accepts_extra: bool  # the method takes **kwargs
    return_type: Any
    doc: str | None
    idempotent: bool = False  # @rpc(idempotent=True): safe to run again if a worker dies

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)


@dataclasses.dataclass(frozen=True, slots=True)
class EventDefinition:
    name: str
    parameters: tuple[Parameter, ...]
    record: type | None

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)


@dataclasses.dataclass(frozen=True)
class ApiDefinition:
    """What an Api subclass offers, read once when the class is declared."""

    name: str
    version: int
    rpcs: dict[str, RpcDefinition]
    events: dict[str, EventDefinition]
    doc: str | None


_RPC_OPTIONS = "__bus_rpc__"  # the attribute @rpc sets on a method: its options, a dict

F = typing.TypeVar("F", bound=Callable[..., Any])


@typing.overload
def rpc(method: F, /) -> F: ...


@typing.overload
def rpc(*, idempotent: bool = False) -> Callable[[F], F]: ...


def rpc(method: Any = None, /, *, idempotent: bool = False) -> Any:
    """Decorator for an RPC method of an Api class, to declare how it may be run.

    `idempotent=True`: running the call twice does no more harm than running it once, so if
    the worker running it dies, the caller re-queues it for another worker instead of
    raising RpcWorkerLost. Without it (and without `apis.<api>.idempotent_rpcs` naming it),
    a call is never run twice. `@rpc` alone changes nothing: every public method is an RPC.

        class StockApi(Api):
            class Meta:
                name = "stock"

            @rpc(idempotent=True)
            def level(self, sku: str) -> int: ...
    """
    def decorate(function: F) -> F:
        if not callable(function):
            raise InvalidApi(f"@rpc decorates a method, not {function!r}")
        if not isinstance(idempotent, bool):
            raise InvalidApi(f"@rpc(idempotent=...) takes True or False, got {idempotent!r}")
        options = dict(getattr(function, _RPC_OPTIONS, None) or {})
        options["idempotent"] = idempotent
        setattr(function, _RPC_OPTIONS, options)
        return function

    if method is not None:
        if isinstance(method, bool):
            raise InvalidApi("write @rpc(idempotent=True), with the keyword")
        return decorate(method)
    return decorate


def rpc_definition(name: str, method: Callable[..., Any]) -> RpcDefinition:
    signature = inspect.signature(method)
    try:
        hints = typing.get_type_hints(method, include_extras=True)
    except Exception as exc:  # unresolvable forward references: treat as unannotated
        warnings.warn(
            f"Bus: cannot resolve the annotations of RPC {name}() ({exc}); its arguments "
            "will not be cast or checked by type", UserWarning, stacklevel=4,
        )
        hints = {}
    params = []
    accepts_extra = False
    for index, p in enumerate(signature.parameters.values()):
        if index == 0 and p.name == "self":
            continue
        if p.kind is p.VAR_KEYWORD:
            accepts_extra = True
        elif p.kind is p.VAR_POSITIONAL:
            raise InvalidApi(
                f"RPC {name}() takes *{p.name}; RPC arguments are keyword-only, "
                f"so use named parameters"
            )
        else:
            params.append(Parameter(p.name, hints.get(p.name, Any), p.default))
    return RpcDefinition(
        name=name,
        parameters=tuple(params),
        accepts_extra=accepts_extra,
        return_type=hints.get("return", Any),
        doc=inspect.getdoc(method),
        idempotent=bool((getattr(method, _RPC_OPTIONS, None) or {}).get("idempotent")),
    )


class Api:
    """Base class of every API. Subclasses need `class Meta: name = "..."`."""

    class Meta:
        name: str = ""
        version: int = 1

    definition: typing.ClassVar[ApiDefinition]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        meta = cls.__dict__.get("Meta")
        declared = _declaration(cls) if meta is None else None
        if declared is not None:  # implements an API declared by a base class
            meta = type("Meta", (), {"name": declared.name, "version": declared.version})
        name = getattr(meta, "name", "") if meta is not None else ""
        if not name:
            if getattr(meta, "abstract", False) or (meta is None and _is_abstract(cls)):
                return
            raise InvalidApi(
                f"{cls.__name__} needs a name: add `class Meta: name = \"...\"` to the class"
            )
        if not _API_NAME.fullmatch(name) or name in RESERVED_API_NAMES:
            raise InvalidApi(
                f"{cls.__name__}.Meta.name {name!r} is not a valid API name: use dotted "
                "identifiers such as 'auth' or 'my_company.auth' (and not 'default')"
            )
        rpcs: dict[str, RpcDefinition] = {}
        events: dict[str, EventDefinition] = {}
        for klass in reversed(cls.__mro__):
            if klass in (Api, object):
                continue
            for attr, value in vars(klass).items():
                if attr.startswith("_") or attr in {"Meta", "definition"}:
                    continue
                if isinstance(value, Event):
                    events[attr] = EventDefinition(attr, value.parameters, value.record)
                elif inspect.isfunction(value):
                    defined = rpc_definition(attr, value)
                    overridden = rpcs.get(attr)
                    if overridden is not None and overridden.idempotent \
                            and _RPC_OPTIONS not in vars(value):
                        # An override without @rpc keeps what its base declared.
                        defined = dataclasses.replace(defined, idempotent=True)
                    rpcs[attr] = defined
        for member in (*rpcs, *events):
            if not _MEMBER_NAME.fullmatch(member):
                raise InvalidApi(f"{cls.__name__}.{member} is not a valid RPC or event name")
        if declared is not None:
            _check_implements(cls, declared, rpcs)
        cls.definition = ApiDefinition(
            name=name,
            version=int(getattr(meta, "version", 1)),
            rpcs=rpcs,
            events=events,
            doc=inspect.getdoc(cls) if cls.__doc__ else None,
        )

    @property
    def meta_name(self) -> str:
        return self.definition.name


def _declaration(cls: type) -> ApiDefinition | None:
    """The definition of the nearest named API `cls` derives from, if any."""
    for base in cls.__mro__[1:]:
        definition = base.__dict__.get("definition")
        if isinstance(definition, ApiDefinition):
            return definition
    return None


def _check_implements(cls: type, declared: ApiDefinition, rpcs: dict[str, RpcDefinition]
                      ) -> None:
    """An implementation must take what its declaration promises callers."""
    for name, promised in declared.rpcs.items():
        given = rpcs[name]
        shape = [(p.name, p.required) for p in given.parameters]
        if shape != [(p.name, p.required) for p in promised.parameters] \
                or given.accepts_extra != promised.accepts_extra:
            raise InvalidApi(
                f"{cls.__name__}.{name}() does not match its declaration in API "
                f"{declared.name!r}: {_shown(promised)} declared, {_shown(given)} given")


def _shown(rpc: RpcDefinition) -> str:
    params = [p.name if p.required else f"{p.name}=..." for p in rpc.parameters]
    return f"{rpc.name}({', '.join([*params, *(['**kwargs'] if rpc.accepts_extra else [])])})"


def _is_abstract(cls: type) -> bool:
    return not any(
        isinstance(v, Event) or (inspect.isfunction(v) and not k.startswith("_"))
        for k, v in vars(cls).items()
    )


def wire_warnings(definition: ApiDefinition) -> list[str]:
    """One readable line per annotation of `definition` that cannot go on the wire."""
    problems = []
    for rpc in definition.rpcs.values():
        for p in rpc.parameters:
            problem = wire_problem(p.type)
            if problem:
                problems.append(f"{definition.name}.{rpc.name}() parameter {p.name!r}: {problem}")
        problem = wire_problem(rpc.return_type)
        if problem:
            problems.append(f"{definition.name}.{rpc.name}() return value: {problem}")
    for event in definition.events.values():
        for p in event.parameters:
            problem = wire_problem(p.type)
            if problem:
                problems.append(
                    f"{definition.name}.{event.name} event parameter {p.name!r}: {problem}"
                )
    return problems


def warn_about_wire_types(definition: ApiDefinition) -> None:
    for line in wire_warnings(definition):
        warnings.warn(f"Bus: {line}", UserWarning, stacklevel=3)
