"""Declaring APIs: RPCs from methods, events from Event attributes."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import pytest

from bus_core import Api, Event, InvalidApi, InvalidArguments, Parameter
from tests.apis import AuthApi, OrderPlaced, TypesApi
from tests.helpers import serving


def test_methods_become_rpcs_and_events_are_collected():
    definition = AuthApi.definition
    assert definition.name == "auth" and definition.version == 1
    assert set(definition.rpcs) == {"check_password", "slow_echo", "fail", "accepts_anything"}
    assert set(definition.events) == {"user_registered", "user_deleted"}
    check = definition.rpcs["check_password"]
    assert [(p.name, p.type, p.required) for p in check.parameters] == [
        ("username", str, True), ("password", str, True)]
    assert check.return_type is bool
    assert definition.rpcs["accepts_anything"].accepts_extra
    assert definition.rpcs["slow_echo"].parameter("delay").default == 0.0


def test_three_ways_to_declare_event_parameters():
    assert [p.name for p in AuthApi.definition.events["user_registered"].parameters] == [
        "username", "email"]
    deleted = AuthApi.definition.events["user_deleted"].parameters
    assert deleted[1] == Parameter("hard", bool, default=False)
    typed = TypesApi.definition.events["order_placed"]
    assert typed.record is OrderPlaced
    assert [(p.name, p.required) for p in typed.parameters] == [
        ("order_id", True), ("total", True), ("note", False)]


def test_named_tuple_events():
    class Moved(NamedTuple):
        x: int
        y: int = 0

    event = Event(Moved)
    assert [(p.name, p.type, p.required) for p in event.parameters] == [
        ("x", int, True), ("y", int, False)]


def test_dotted_names_and_versions():
    class BillingApi(Api):
        class Meta:
            name = "my_company.billing"
            version = 3

    assert BillingApi.definition.name == "my_company.billing"
    assert BillingApi.definition.version == 3


@pytest.mark.parametrize("name", ["", "default", "1abc", "has space", "a..b", ".a", "auth\n",
                                  "auth\r\n"])
def test_bad_api_names_are_refused(name: str):
    with pytest.raises(InvalidApi):
        class Bad(Api):
            class Meta:
                pass

            Meta.name = name  # type: ignore[attr-defined]

            def rpc(self) -> None: ...


def test_missing_meta_name_says_how_to_fix_it():
    with pytest.raises(InvalidApi, match='class Meta: name = "..."'):
        class NoName(Api):
            def rpc(self) -> None: ...


def test_an_abstract_base_without_members_needs_no_name():
    class Base(Api):
        pass

    class Concrete(Base):
        class Meta:
            name = "concrete"

        def ping(self) -> str:
            return "pong"

    assert set(Concrete.definition.rpcs) == {"ping"}


def test_rpcs_cannot_take_star_args():
    with pytest.raises(InvalidApi, match="keyword-only"):
        class Star(Api):
            class Meta:
                name = "star"

            def many(self, *values: Any) -> None: ...


def test_event_declaration_mistakes_are_explained():
    with pytest.raises(InvalidApi, match=r"Event\(parameters=\('username',\)\)"):
        Event(parameters="username")  # type: ignore[arg-type]
    with pytest.raises(InvalidApi, match="twice"):
        Event(parameters=("a", "a"))
    with pytest.raises(InvalidApi, match="dataclass or NamedTuple"):
        Event(parameters=int)


def test_private_methods_are_not_rpcs():
    @dataclasses.dataclass
    class Helper:
        value: int

    class WithHelpers(Api):
        class Meta:
            name = "helpers"

        def _internal(self) -> None: ...

        def public(self) -> int:
            return Helper(1).value

    assert set(WithHelpers.definition.rpcs) == {"public"}


class DeclaredAccountsApi(Api):
    """What callers import: names, parameters, events; no implementation."""

    signed_up = Event(parameters=("username",))

    class Meta:
        name = "accounts"
        version = 2

    def create_user(self, username: str, email: str = "") -> int: ...


class AccountsService(DeclaredAccountsApi):
    """What the service registers: no Meta of its own, the declaration's name."""

    def create_user(self, username: str, email: str = "") -> int:
        return len(username)


def test_an_implementation_takes_its_declarations_name_and_events():
    definition = AccountsService.definition
    assert (definition.name, definition.version) == ("accounts", 2)
    assert set(definition.rpcs) == {"create_user"} and set(definition.events) == {"signed_up"}


def test_an_implementation_must_take_what_the_declaration_promises():
    with pytest.raises(InvalidApi) as refused:
        class Sloppy(DeclaredAccountsApi):
            def create_user(self, username: str) -> int:
                return 0
    assert str(refused.value) == (
        "Sloppy.create_user() does not match its declaration in API 'accounts': "
        "create_user(username, email=...) declared, create_user(username) given")


async def test_callers_register_the_declaration_and_the_service_its_implementation(make_bus):
    service, caller = make_bus(), make_bus()
    service.client.register_api(AccountsService())
    caller.client.register_api(DeclaredAccountsApi())  # to fire, and to check arguments
    async with serving(service):
        assert await caller.accounts.create_user.call_async(username="ada") == 3
        with pytest.raises(InvalidArguments):
            await caller.accounts.create_user.call_async(name="ada")
    assert (await caller.accounts.signed_up.fire_async(username="ada")).api_name == "accounts"
