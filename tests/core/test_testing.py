"""bus_core.testing: the `bus`, `bus_factory` and `bus_mock` fixtures, and BusMock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import pytest

from bus_core import Api, Bus, Event, Parameter, RemoteError
from bus_core.testing import BusMock, FiredEvent, RpcCall


class ClockApi(Api):
    ticked = Event(parameters=[Parameter("count", int), Parameter("note", str, default="")])

    class Meta:
        name = "clock"

    def now(self) -> dt.datetime:
        return dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)

    def add(self, a: int, b: int) -> int:
        return a + b


@pytest.fixture
def after_teardown() -> Iterator[list[Callable[[], None]]]:
    """Checks to run after the fixtures listed after this one are torn down."""
    checks: list[Callable[[], None]] = []
    yield checks
    for check in checks:
        check()


def _broker(bus: Bus) -> str:
    return bus.client.config.api("any").transport("rpc")[1]["broker"]


# -- fixtures --------------------------------------------------------------------------------


def test_bus_is_closed_after_the_test(after_teardown: list[Callable[[], None]],
                                      bus: Bus) -> None:
    def closed() -> None:
        assert bus.client.closed

    after_teardown.append(closed)
    assert not bus.client.closed


def test_bus_has_a_broker_of_its_own(bus: Bus, bus_broker_name: str) -> None:
    assert _broker(bus) == bus_broker_name
    assert bus_broker_name.startswith("bus-test-")


def test_bus_factory_makes_buses_on_the_same_broker(bus: Bus,
                                                    bus_factory: Callable[..., Bus]) -> None:
    service = bus_factory(service_name="clock")
    service.client.register_api(ClockApi())
    service.client.start_worker()
    assert _broker(service) == _broker(bus)
    assert bus.clock.add(a=1, b=2) == 3


def test_bus_factory_passes_api_options(bus_factory: Callable[..., Bus]) -> None:
    assert bus_factory(rpc_timeout=0.5).client.config.api("x").rpc_timeout == 0.5


# -- recording -------------------------------------------------------------------------------


def test_records_rpc_calls_and_events(bus: Bus, bus_mock: BusMock) -> None:
    bus.client.register_api(ClockApi())
    bus_mock.stub_rpc("clock.add", returns=5)
    assert bus.clock.add(a=2, b=3) == 5
    bus.clock.ticked.fire(count=1)
    assert bus_mock.rpc_calls == [RpcCall("clock.add", {"a": 2, "b": 3})]
    assert bus_mock.events == [FiredEvent("clock.ticked", {"count": 1, "note": ""})]
    bus_mock.assert_rpc_called("clock.add", times=1, with_kwargs={"a": 2})
    bus_mock.assert_rpc_not_called("clock.now")
    bus_mock.assert_rpc_not_called("clock.add", with_kwargs={"a": 3})
    bus_mock.assert_event_fired("clock.ticked", times=1, with_kwargs={"count": 1})
    bus_mock.assert_event_not_fired("clock.ticked", with_kwargs={"count": 2})
    bus_mock.reset()
    assert bus_mock.rpc_calls == [] and bus_mock.events == []


def test_the_context_manager_stops_recording_and_serving_on_exit(bus: Bus) -> None:
    with BusMock(bus) as mock:
        mock.stub_rpc("clock.add", returns=1)
        assert bus.clock.add(a=1, b=1) == 1
    with pytest.raises(Exception, match="no result|timeout|within"):
        bus.clock.add(a=1, b=1, bus_options={"timeout": 0.2})
    assert len(mock.rpc_calls) == 1


# -- stubs -----------------------------------------------------------------------------------


def test_a_stub_result_is_cast_to_the_declared_return_type(bus: Bus, bus_mock: BusMock) -> None:
    bus_mock.stub_rpc("clock.now", returns=dt.datetime(2021, 5, 1, tzinfo=dt.timezone.utc),
                      api=ClockApi)
    bus.client.register_api(ClockApi())  # the caller knows the API: the result is cast
    assert bus.clock.now() == dt.datetime(2021, 5, 1, tzinfo=dt.timezone.utc)


def test_without_the_api_class_the_result_is_the_wire_value(bus: Bus,
                                                           bus_mock: BusMock) -> None:
    bus_mock.stub_rpc("remote.answer", returns={"x": [1, 2]})
    assert bus.remote.answer(anything="goes") == {"x": [1, 2]}


def test_a_stub_can_raise(bus: Bus, bus_mock: BusMock) -> None:
    bus_mock.stub_rpc("clock.add", raises=OverflowError("too big"))
    with pytest.raises(RemoteError, match="OverflowError: too big"):
        bus.clock.add(a=1, b=2)
    bus_mock.assert_rpc_called("clock.add", times=1)


def test_stubbing_again_replaces_the_answer(bus: Bus, bus_mock: BusMock) -> None:
    bus_mock.stub_rpc("clock.add", returns=1)
    bus_mock.stub_rpc("clock.now", returns="later")
    bus_mock.stub_rpc("clock.add", returns=2)
    assert bus.clock.add(a=0, b=0) == 2
    assert bus.clock.now() == "later"


def test_a_stub_with_the_api_class_checks_arguments(bus: Bus, bus_mock: BusMock) -> None:
    bus_mock.stub_rpc("clock.add", returns=3, api=ClockApi)
    with pytest.raises(RemoteError, match="'c'"):
        bus.clock.add(a=1, b=2, c=3)


def test_the_caller_checks_arguments_of_a_local_api(bus: Bus, bus_mock: BusMock) -> None:
    bus.client.register_api(ClockApi())
    bus_mock.stub_rpc("clock.add", returns=3)
    with pytest.raises(Exception, match="unknown parameter"):
        bus.clock.add(a=1, b=2, c=3)
    bus_mock.assert_rpc_not_called("clock.add")


def test_stubbing_an_rpc_the_api_class_lacks_is_refused(bus_mock: BusMock) -> None:
    with pytest.raises(ValueError, match="ClockApi has no RPC 'nope'"):
        bus_mock.stub_rpc("clock.nope", returns=1, api=ClockApi)


def test_a_stub_must_return_what_the_rpc_could(bus_mock: BusMock) -> None:
    with pytest.raises(ValueError) as refused:
        bus_mock.stub_rpc("clock.add", returns="three", api=ClockApi)
    assert str(refused.value).startswith(
        "stub for clock.add returns 'three', which does not fit its return type: ")
    bus_mock.stub_rpc("clock.add", raises=ValueError("no"), api=ClockApi)  # raising: fine


def test_a_typo_in_an_assertion_fails_it(bus: Bus, bus_mock: BusMock) -> None:
    """Against a known API, a misspelled name or argument must not make an assertion pass."""
    bus.client.register_api(ClockApi())
    with pytest.raises(AssertionError, match="API 'clock' has no RPC 'ad'; its RPCs: add, now"):
        bus_mock.assert_rpc_not_called("clock.ad")
    with pytest.raises(AssertionError, match=r"clock.add has no parameter 'aa'; its "
                                             r"parameters: a, b"):
        bus_mock.assert_rpc_not_called("clock.add", with_kwargs={"aa": 1})
    with pytest.raises(AssertionError, match="API 'clock' has no event 'tick'"):
        bus_mock.assert_event_not_fired("clock.tick")
    bus_mock.assert_rpc_not_called("elsewhere.anything")  # an unknown API: nothing to check


# -- failure messages ------------------------------------------------------------------------


def test_assert_rpc_called_fails_listing_the_calls_seen(bus: Bus, bus_mock: BusMock) -> None:
    bus_mock.stub_rpc("clock.add", returns=3)
    bus.clock.add(a=1, b=2)
    with pytest.raises(AssertionError, match=r"(?s)expected RPC clock.add\(a=5\) to be called "
                       r"at least once, but it was called 0 time\(s\).*clock.add\(a=1, b=2\)"):
        bus_mock.assert_rpc_called("clock.add", with_kwargs={"a": 5})
    with pytest.raises(AssertionError, match=r"to be called exactly 2 time\(s\), but it was "
                       r"called 1 time\(s\)"):
        bus_mock.assert_rpc_called("clock.add", times=2)
    with pytest.raises(AssertionError, match=r"expected RPC clock.add to be called never"):
        bus_mock.assert_rpc_not_called("clock.add")


def test_assert_rpc_called_with_no_calls_says_none(bus_mock: BusMock) -> None:
    with pytest.raises(AssertionError, match=r"RPC calls on this bus:\n  \(none\)"):
        bus_mock.assert_rpc_called("clock.add")


def test_assert_event_fired_fails_listing_the_events_seen(bus: Bus, bus_mock: BusMock) -> None:
    bus.client.register_api(ClockApi())
    bus.clock.ticked.fire(count=1)
    with pytest.raises(AssertionError, match=r"(?s)expected event clock.ticked\(count=2\) to be "
                       r"fired at least once, but it was fired 0 time\(s\); events fired on "
                       r"this bus:\n  clock.ticked\(note='', count=1\)"):
        bus_mock.assert_event_fired("clock.ticked", with_kwargs={"count": 2})
    with pytest.raises(AssertionError, match=r"to be fired never, but it was fired 1 time"):
        bus_mock.assert_event_not_fired("clock.ticked")


def test_a_name_without_an_api_is_refused(bus_mock: BusMock) -> None:
    with pytest.raises(ValueError, match="api.name"):
        bus_mock.assert_rpc_called("add")


def test_a_refused_stub_changes_nothing_and_the_corrected_one_serves(
        bus: Bus, bus_mock: BusMock) -> None:
    with pytest.raises(ValueError, match="does not fit its return type"):
        bus_mock.stub_rpc("clock.add", returns="three", api=ClockApi)
    bus_mock.stub_rpc("clock.add", returns=3, api=ClockApi)
    assert bus.clock.add(a=1, b=2) == 3
    with pytest.raises(ValueError, match="does not fit"):  # a re-stub is checked too
        bus_mock.stub_rpc("clock.add", returns="four")
    assert bus.clock.add(a=1, b=2) == 3  # the refused re-stub left the answer alone


def test_stubbing_an_event_as_an_rpc_is_refused(bus_mock: BusMock) -> None:
    class Ticking(Api):
        ticked = Event(parameters=("n",))

        class Meta:
            name = "ticking"

    with pytest.raises(ValueError, match="Ticking has no RPC 'ticked'"):
        bus_mock.stub_rpc("ticking.ticked", returns=1, api=Ticking)
