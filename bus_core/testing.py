"""Test utilities for code that uses Bus, shipped as a pytest plugin (``pytest11`` entry point).

Fixtures (available in any project that has bus-core installed):

- ``bus``: an in-memory bus on a broker of its own (unique per test), closed after the test.
- ``bus_factory``: ``bus_factory(**options)`` makes more buses on that same broker (e.g. a
  service and its client); every one is closed after the test.
- ``bus_broker_name``: the test's memory broker name.
- ``bus_mock``: a `BusMock` on the ``bus`` fixture, active for the whole test.

Without pytest, use the mocker as a context manager::

    with BusMock(bus) as mock:
        mock.stub_rpc("auth.check_password", returns=True)
        ...
        mock.assert_rpc_called("auth.check_password", times=1, with_kwargs={"username": "a"})
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

import bus_core
from bus_core.api import Api, rpc_definition
from bus_core.client import Bus
from bus_core.errors import InvalidArguments, WireError
from bus_core.messages import EventMessage, RpcMessage
from bus_core.plugins import hookimpl
from bus_core.values import from_wire, to_wire

__all__ = ["BusMock", "FiredEvent", "RpcCall", "memory_config"]

_broker_ids = itertools.count(1)


def memory_config(broker: str, **api_default: Any) -> dict[str, Any]:
    """A config document putting every transport on the memory broker named `broker`;
    `api_default` adds or overrides keys of ``apis.default`` (e.g. ``rpc_timeout=1``)."""
    transport = {"memory": {"broker": broker}}
    return {
        "bus": {"schema": {"transport": transport}, "drain_timeout": 5},
        "apis": {"default": {
            "rpc_transport": transport,
            "result_transport": transport,
            "event_transport": transport,
            "rpc_timeout": 5,
            "redelivery_delay": 0,
            **api_default,
        }},
    }


# -- records ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RpcCall:
    """One RPC call made through the mocked bus; `kwargs` are in their wire form."""

    name: str
    kwargs: dict[str, Any]

    def __str__(self) -> str:
        return _format_call(self.name, self.kwargs)


@dataclasses.dataclass(frozen=True)
class FiredEvent:
    """One event fired (and accepted by the transport) through the mocked bus."""

    name: str
    kwargs: dict[str, Any]

    def __str__(self) -> str:
        return _format_call(self.name, self.kwargs)


def _format_call(name: str, kwargs: Mapping[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def _split_name(name: str) -> tuple[str, str]:
    api_name, _, member = name.rpartition(".")
    if not api_name or not member:
        raise ValueError(f"{name!r} does not name an RPC or event: use 'api.name'")
    return api_name, member


def _check_stubbed_return(name: str, return_type: Any, returns: Any) -> None:
    """A stub answers what the real RPC could: its value must fit the return type."""
    if return_type is Any:
        return
    try:
        from_wire(to_wire(returns), return_type)
    except (WireError, InvalidArguments) as exc:
        raise ValueError(f"stub for {name} returns {returns!r}, which does not fit its return "
                         f"type: {exc}") from None


@dataclasses.dataclass
class _Stub:
    returns: Any
    raises: BaseException | type[BaseException] | None


# -- the mocker ------------------------------------------------------------------------------


class BusMock:
    """Records the RPC calls and event fires made through one bus, and stubs RPC results.

    Recording is a plugin registered on ``bus.client`` (hooks ``bus_before_rpc_call`` and
    ``bus_after_event_fire``), removed on exit.

    Stubs are served by a *stub worker*: a second bus client on the same transports that
    serves a generated `Api` subclass whose methods return (or raise) the stubbed values.
    This was chosen over patching ``call_rpc_async`` because the call under test then takes
    the real path: its arguments are checked and serialised by the caller, checked again
    against the real signature by the worker when the API class is known (``api=`` or
    registered on the mocked bus), the result crosses the wire and is cast to the declared
    return type, and a raised error reaches the caller as `bus_core.RemoteError`, exactly as
    in production.
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.rpc_calls: list[RpcCall] = []
        self.events: list[FiredEvent] = []
        self._stubs: dict[tuple[str, str], _Stub] = {}
        self._specs: dict[tuple[str, str], Callable[..., Any] | None] = {}
        self._servers: dict[str, Bus] = {}
        self._plugin_name = f"bus-mock-{uuid.uuid4().hex[:8]}"
        self._active = False

    # -- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> BusMock:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self) -> None:
        """Start recording (what entering the ``with`` block does)."""
        if not self._active:
            self.bus.client.plugins.register(self, self._plugin_name)
            self._active = True

    def stop(self) -> None:
        """Stop recording and close the stub workers."""
        if self._active:
            self.bus.client.plugins.unregister(self._plugin_name)
            self._active = False
        servers, self._servers = self._servers, {}
        for server in servers.values():
            server.close()

    # -- hooks ------------------------------------------------------------------------

    @hookimpl
    def bus_before_rpc_call(self, message: RpcMessage) -> None:
        self.rpc_calls.append(RpcCall(message.canonical_name, dict(message.kwargs)))

    @hookimpl
    def bus_after_event_fire(self, message: EventMessage, error: BaseException | None) -> None:
        if error is None:
            self.events.append(FiredEvent(message.canonical_name, dict(message.kwargs)))

    # -- stubs ------------------------------------------------------------------------

    def stub_rpc(self, name: str, *, returns: Any = None,
                 raises: BaseException | type[BaseException] | None = None,
                 api: type[Api] | None = None) -> None:
        """Answer calls of `name` ("api.rpc") with `returns`, or by raising `raises` (the
        caller then gets a `RemoteError` naming its type). `api` is the real API class, to
        check arguments against its signature; by default the class registered on the mocked
        bus is used, if any. Stubbing the same RPC again replaces the answer."""
        api_name, rpc_name = _split_name(name)
        key = (api_name, rpc_name)
        restub = key in self._specs and api is None  # keeps the spec it was stubbed with
        if restub:
            spec = self._specs[key]
        else:
            spec_api = api or (type(self.bus.client.apis[api_name])
                               if api_name in self.bus.client.apis else None)
            spec = None
            if spec_api is not None:
                if rpc_name not in spec_api.definition.rpcs:
                    raise ValueError(f"{spec_api.__name__} has no RPC {rpc_name!r}")
                spec = getattr(spec_api, rpc_name)
        if spec is not None and raises is None:  # checked before anything changes
            _check_stubbed_return(name, rpc_definition(rpc_name, spec).return_type, returns)
        self._stubs[key] = _Stub(returns, raises)
        if restub:
            return
        self._specs[key] = spec
        self._serve(api_name)

    def _serve(self, api_name: str) -> None:
        """(Re)start the stub worker of `api_name` with every RPC stubbed on it."""
        old = self._servers.pop(api_name, None)
        if old is not None:
            old.close()
        namespace: dict[str, Any] = {"Meta": type("Meta", (), {"name": api_name})}
        for (stub_api, rpc_name), spec in self._specs.items():
            if stub_api == api_name:
                namespace[rpc_name] = self._stub_method(api_name, rpc_name, spec)
        stub_class = type(f"Stub_{api_name.replace('.', '_')}", (Api,), namespace)
        document = {k: v for k, v in self.bus.client.config.document.items() if k != "plugins"}
        server = bus_core.create(document, service_name="bus-mock-stub")
        server.client.register_api(stub_class())
        server.client.start_worker(rpcs=True, events=False, tasks=False)
        self._servers[api_name] = server

    def _stub_method(self, api_name: str, rpc_name: str,
                     spec: Callable[..., Any] | None) -> Callable[..., Any]:
        stubs = self._stubs

        def stub(self: Any, **kwargs: Any) -> Any:
            answer = stubs[(api_name, rpc_name)]
            if answer.raises is not None:
                raise answer.raises
            return answer.returns

        if spec is not None:
            return functools.wraps(spec)(stub)  # the real signature, hints and return type
        stub.__name__ = stub.__qualname__ = rpc_name
        return stub

    # -- assertions -------------------------------------------------------------------

    def assert_rpc_called(self, name: str, *, times: int | None = None,
                          with_kwargs: Mapping[str, Any] | None = None) -> None:
        """`name` was called (exactly `times` times, if given) with arguments including
        `with_kwargs` (compared in wire form; other arguments may be anything)."""
        __tracebackhide__ = True  # a failure points at the test, not here
        self._assert_seen("RPC", self.rpc_calls, name, times, with_kwargs)

    def assert_rpc_not_called(self, name: str, *,
                              with_kwargs: Mapping[str, Any] | None = None) -> None:
        """No call of `name` (including `with_kwargs`, if given) was made."""
        __tracebackhide__ = True  # a failure points at the test, not here
        self._assert_seen("RPC", self.rpc_calls, name, 0, with_kwargs)

    def assert_event_fired(self, name: str, *, times: int | None = None,
                           with_kwargs: Mapping[str, Any] | None = None) -> None:
        """`name` was fired (exactly `times` times, if given) with parameters including
        `with_kwargs` (compared in wire form)."""
        __tracebackhide__ = True  # a failure points at the test, not here
        self._assert_seen("event", self.events, name, times, with_kwargs)

    def assert_event_not_fired(self, name: str, *,
                               with_kwargs: Mapping[str, Any] | None = None) -> None:
        """`name` (with parameters including `with_kwargs`, if given) was not fired."""
        __tracebackhide__ = True  # a failure points at the test, not here
        self._assert_seen("event", self.events, name, 0, with_kwargs)

    def _check_known(self, kind: str, name: str, with_kwargs: Mapping[str, Any]) -> None:
        """A typo in an assertion must fail it, not make it pass: names and argument names
        are checked against the API when its definition is known here."""
        __tracebackhide__ = True  # a failure points at the test, not here
        api_name, member = _split_name(name)
        definition = self.bus.client.known_definition(api_name)
        if definition is None:
            return
        members = definition.rpcs if kind == "RPC" else definition.events
        found = members.get(member)
        if found is None:
            raise AssertionError(
                f"API {api_name!r} has no {kind} {member!r}; its {kind}s: "
                f"{', '.join(sorted(members)) or 'none'}")
        names = [p.name for p in found.parameters]
        unknown = [k for k in with_kwargs if k not in names]
        if unknown and not getattr(found, "accepts_extra", False):
            raise AssertionError(
                f"{name} has no parameter {', '.join(map(repr, unknown))}; its parameters: "
                f"{', '.join(names) or 'none'}")

    def reset(self) -> None:
        """Forget the recorded calls and events (stubs stay)."""
        self.rpc_calls.clear()
        self.events.clear()

    def _assert_seen(self, kind: str, seen: list[RpcCall] | list[FiredEvent], name: str,
                     times: int | None, with_kwargs: Mapping[str, Any] | None) -> None:
        __tracebackhide__ = True  # a failure points at the test, not here
        self._check_known(kind, name, with_kwargs or {})
        wanted = {k: to_wire(v) for k, v in (with_kwargs or {}).items()}
        count = sum(
            1 for record in seen
            if record.name == name
            and all(k in record.kwargs and record.kwargs[k] == v for k, v in wanted.items())
        )
        if (count >= 1) if times is None else (count == times):
            return
        what = _format_call(name, wanted) if with_kwargs else name
        expected = ("at least once" if times is None
                    else "never" if times == 0 else f"exactly {times} time(s)")
        verb = "called" if kind == "RPC" else "fired"
        listed = "\n".join(f"  {record}" for record in seen) or "  (none)"
        plural = "RPC calls" if kind == "RPC" else "events fired"
        raise AssertionError(
            f"expected {kind} {what} to be {verb} {expected}, but it was {verb} {count} "
            f"time(s); {plural} on this bus:\n{listed}"
        )


# -- pytest fixtures -------------------------------------------------------------------------


@pytest.fixture
def bus_broker_name() -> str:
    """A memory broker name no other test uses."""
    return f"bus-test-{os.getpid()}-{next(_broker_ids)}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def bus_factory(bus_broker_name: str) -> Iterator[Callable[..., Bus]]:
    """``bus_factory(service_name="test", plugins=(), **apis_default)`` -> a new Bus on the
    test's memory broker; every bus made is closed after the test."""
    made: list[Bus] = []

    def make(*, service_name: str = "test", plugins: Any = (), **api_default: Any) -> Bus:
        made.append(bus_core.create(memory_config(bus_broker_name, **api_default),
                                    plugins=plugins, service_name=service_name))
        return made[-1]

    yield make
    for bus in made:
        bus.close()


@pytest.fixture
def bus(bus_factory: Callable[..., Bus]) -> Bus:
    """An in-memory bus on a broker of this test's own, closed after the test."""
    return bus_factory()


@pytest.fixture
def bus_mock(bus: Bus) -> Iterator[BusMock]:
    """A `BusMock` recording (and stubbing for) the ``bus`` fixture during the test."""
    with BusMock(bus) as mock:
        yield mock

