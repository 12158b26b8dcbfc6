"""Declaring RPCs idempotent: the `@rpc` decorator, `apis.<api>.idempotent` and
`idempotent_rpcs` in the config, and what a caller and a worker make of them."""

from __future__ import annotations

import pytest

import bus_core
from bus_core import Api, ConfigError, InvalidApi, RpcTimeout, RpcWorkerLost, rpc
from bus_core.api import RpcDefinition
from bus_core.errors import BusError
from bus_core.transports import RpcConsumer


class StockApi(Api):
    class Meta:
        name = "stock"

    @rpc(idempotent=True)
    def level(self, sku: str) -> int:
        return 1

    @rpc
    def reserve(self, sku: str) -> str:
        return sku

    def release(self, sku: str) -> None:
        return None


def test_the_decorator_marks_only_the_rpcs_it_is_asked_to() -> None:
    rpcs = StockApi.definition.rpcs
    assert rpcs["level"].idempotent is True
    assert rpcs["reserve"].idempotent is False  # bare @rpc changes nothing
    assert rpcs["release"].idempotent is False
    assert set(rpcs) == {"level", "reserve", "release"}  # still public methods, still RPCs
    assert StockApi().level(sku="x") == 1  # the method itself is untouched


def test_an_override_keeps_its_bases_declaration_unless_it_says_otherwise() -> None:
    class Base(Api):
        class Meta:
            abstract = True

        @rpc(idempotent=True)
        def level(self, sku: str) -> int: ...

        @rpc(idempotent=True)
        def count(self) -> int: ...

    class Stock(Base):
        class Meta:
            name = "stock2"

        def level(self, sku: str) -> int:
            return 2

        @rpc(idempotent=False)
        def count(self) -> int:
            return 0

    assert Stock.definition.rpcs["level"].idempotent is True
    assert Stock.definition.rpcs["count"].idempotent is False


def test_an_implementation_inherits_its_declarations_idempotency() -> None:
    class Declared(Api):
        class Meta:
            name = "declared"

        @rpc(idempotent=True)
        def get(self, key: str) -> str: ...

    class Implemented(Declared):
        def get(self, key: str) -> str:
            return key

    assert Implemented.definition.name == "declared"
    assert Implemented.definition.rpcs["get"].idempotent is True


@pytest.mark.parametrize("misuse", [lambda: rpc(True), lambda: rpc(idempotent="yes")(len),
                                    lambda: rpc(idempotent=True)(42)])
def test_the_decorator_refuses_misuse_with_a_hint(misuse) -> None:
    with pytest.raises(InvalidApi):
        misuse()


def test_definitions_made_elsewhere_default_to_not_idempotent() -> None:
    definition = RpcDefinition(name="x", parameters=(), accepts_extra=False, return_type=int,
                               doc=None)
    assert definition.idempotent is False


def test_config_declares_idempotent_rpcs_per_api(make_bus) -> None:
    bus = make_bus(config={"apis": {
        "default": {"idempotent_rpcs": ["ping"]},
        "stock": {"idempotent_rpcs": ["count"]},
        "cache": {"idempotent": True},
    }})
    client = bus.client
    assert client.is_idempotent("stock", "count")
    assert not client.is_idempotent("stock", "ping")  # an API's own list replaces default's
    assert client.is_idempotent("billing", "ping")
    assert not client.is_idempotent("billing", "charge")
    assert client.is_idempotent("cache", "anything")


def test_a_registered_apis_decorator_counts_for_its_client(make_bus) -> None:
    bus = make_bus()
    assert not bus.client.is_idempotent("stock", "level")  # not known here yet
    bus.client.register_api(StockApi())
    assert bus.client.is_idempotent("stock", "level")
    assert not bus.client.is_idempotent("stock", "reserve")


@pytest.mark.parametrize(("section", "fragment"), [
    ({"idempotent_rpcs": "level"}, "idempotent_rpcs"),
    ({"idempotent_rpcs": ["not a name"]}, "idempotent_rpcs[0]"),
    ({"idempotent_rpcs": ["a", "a"]}, "idempotent_rpcs"),
    ({"idempotent": "yes"}, "idempotent"),
])
def test_config_refuses_bad_idempotency_settings(section, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        bus_core.create({"apis": {"stock": section}})


def test_rpc_worker_lost_is_a_timeout_in_the_bus_family() -> None:
    error = RpcWorkerLost("gone", worker="bus:worker:w:1", idempotent=True)
    assert isinstance(error, RpcTimeout) and isinstance(error, TimeoutError)
    assert isinstance(error, BusError)
    assert (error.worker, error.idempotent) == ("bus:worker:w:1", True)
    assert bus_core.RpcWorkerLost is RpcWorkerLost and bus_core.rpc is rpc


async def test_a_worker_tells_its_consumers_which_rpcs_are_idempotent(make_bus) -> None:
    bus = make_bus(config={"apis": {"stock": {"idempotent_rpcs": ["release"]}}})
    bus.client.register_api(StockApi())
    worker = bus.client.worker(events=False, tasks=False)
    await worker.start()
    try:
        (consumer,) = [c for c in worker._consumers if isinstance(c, RpcConsumer)]
        assert consumer.idempotent_rpcs == {("stock", "level"), ("stock", "release")}
    finally:
        await worker.stop()
