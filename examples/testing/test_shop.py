"""Tests of shop.py with the `bus` and `bus_mock` fixtures of bus_core.testing (no auth
service running: its RPC is stubbed)."""

from __future__ import annotations

import pytest
from shop import AuthApi, ShopApi, place_order

from bus_core import Bus, RemoteError
from bus_core.testing import BusMock


@pytest.fixture
def shop_bus(bus: Bus) -> Bus:
    """The test's bus, serving the shop's API (a service fires only its own events)."""
    bus.client.register_api(ShopApi())
    return bus


def test_an_order_is_placed_when_the_password_is_right(shop_bus: Bus, bus_mock: BusMock) -> None:
    bus_mock.stub_rpc("auth.check_password", returns=True, api=AuthApi)

    order_id = place_order(shop_bus, username="ada", password="s3cret", total=9.5)

    assert order_id is not None
    bus_mock.assert_rpc_called("auth.check_password", times=1,
                               with_kwargs={"username": "ada", "password": "s3cret"})
    bus_mock.assert_event_fired("shop.order_placed", times=1,
                                with_kwargs={"order_id": order_id, "username": "ada"})
    assert bus_mock.events[0].kwargs["total"] == 9.5


def test_no_order_when_the_password_is_wrong(shop_bus: Bus, bus_mock: BusMock) -> None:
    bus_mock.stub_rpc("auth.check_password", returns=False, api=AuthApi)

    assert place_order(shop_bus, username="ada", password="guess", total=9.5) is None

    bus_mock.assert_rpc_called("auth.check_password", times=1)
    bus_mock.assert_event_not_fired("shop.order_placed")


def test_an_auth_failure_reaches_the_caller(shop_bus: Bus, bus_mock: BusMock) -> None:
    bus_mock.stub_rpc("auth.check_password", raises=PermissionError("account locked"),
                      api=AuthApi)

    with pytest.raises(RemoteError, match="account locked") as caught:
        place_order(shop_bus, username="ada", password="s3cret", total=9.5)

    assert caught.value.remote_type == "PermissionError"
    bus_mock.assert_event_not_fired("shop.order_placed")
