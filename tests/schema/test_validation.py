"""Validation in every direction on the memory bus, switchable per API; error messages;
strict mode and the once-per-API warning."""

from __future__ import annotations

import asyncio
import json
import uuid
import warnings
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from bus_memory import MemoryEventTransport, get_broker
from bus_schema import CompiledSchema, SchemaValidationError, api_schema
from bus_schema import plugin as schema_plugin

from bus_core import (
    Api,
    Bus,
    Event,
    EventMessage,
    RemoteError,
    RpcTimeout,
    UnknownApi,
    UnknownRpc,
)
from tests.conftest import memory_config
from tests.helpers import event_transport, eventually, serving
from tests.schema.conftest import with_schema
from tests.schema.typed import CASES, UID, ShopApi

QUIET = 0.15  # how long we watch for something that must not happen
SHORT = {"timeout": 0.2}  # bus_options for calls nobody answers


class LooseShopApi(Api):
    """The `shop` API as an old or foreign service declares it: nothing typed."""

    order_placed = Event(parameters=("order_id", "total", "note"))

    class Meta:
        name = "shop"

    def total(self, amount: Any) -> Any: ...


def shop_config(broker: str, *, plugin: bool = True, shop: dict[str, Any] | None = None,
                **options: Any) -> dict[str, Any]:
    config = memory_config(broker)
    if plugin:
        with_schema(config, **options)
    if shop is not None:
        config["apis"]["shop"] = shop
    return config


async def publish_shop(make_bus: Callable[..., Bus], broker: str) -> None:
    """Start and stop a worker serving `shop`: its schema stays on the schema transport."""
    worker_bus = make_bus(config=shop_config(broker), service_name="publisher")
    worker_bus.client.register_api(ShopApi())
    async with serving(worker_bus):
        pass


def queued(broker: str, api_name: str = "shop") -> int:
    return get_broker(broker).queued_calls(api_name)


def stream_length(broker: str, event_name: str) -> int:
    stream = get_broker(broker).streams.get(MemoryEventTransport.stream_name("shop", event_name))
    return 0 if stream is None else len(stream.entries)


async def fired(bus: Bus, event_name: str = "order_placed") -> list[EventMessage]:
    transport = await event_transport(bus, "shop")
    return [m async for m in transport.history("shop", event_name)]


# -- RPC parameters, caller side ---------------------------------------------------------------


async def test_caller_refuses_bad_parameters_before_sending(make_bus, broker_name) -> None:
    await publish_shop(make_bus, broker_name)
    caller = make_bus(config=shop_config(broker_name), service_name="caller")
    with pytest.raises(SchemaValidationError) as caught:
        await caller.shop.total.call_async(amount=1.5)
    message = str(caught.value)
    assert "shop.total()" in message and "parameter 'amount'" in message
    assert "1.5" in message and "'string'" in message
    assert queued(broker_name) == 0  # nothing was sent
    # A valid call goes out (nobody serves it now: it times out, and stays queued).
    with pytest.raises(RpcTimeout):
        await caller.shop.total.call_async(amount="1.5", bus_options=SHORT)
    assert queued(broker_name) == 1


def test_the_sync_forms_validate_too(make_bus, broker_name) -> None:
    worker_bus = make_bus(config=shop_config(broker_name), service_name="publisher")
    worker_bus.client.register_api(ShopApi())
    worker_bus.client.start_worker()
    worker_bus.client.stop_worker()
    caller = make_bus(config=shop_config(broker_name), service_name="caller")
    with pytest.raises(SchemaValidationError, match=r"parameter 'amount'.*\[1\].*'string'"):
        caller.shop.total(amount=[1])
    assert queued(broker_name) == 0
    with pytest.raises(SchemaValidationError, match=r"parameter 'total': 1\.5"):
        worker_bus.shop.order_placed.fire(order_id=UID, total=1.5)
    assert stream_length(broker_name, "order_placed") == 0


@pytest.mark.parametrize("setting", [{"outgoing": False}, False])
async def test_caller_side_parameter_validation_can_be_switched_off(
        make_bus, broker_name, setting: Any) -> None:
    await publish_shop(make_bus, broker_name)
    caller = make_bus(config=shop_config(broker_name, shop={"validate": setting}))
    with pytest.raises(RpcTimeout):
        await caller.shop.total.call_async(amount=1.5, bus_options=SHORT)
    assert queued(broker_name) == 1  # sent as it was


async def test_switching_one_api_off_leaves_the_others_validated(
        make_bus, broker_name, tmp_path) -> None:
    await publish_shop(make_bus, broker_name)
    other = {"other": {"rpcs": {"f": {"parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}}, "response": {}}},
        "events": {}}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    config = shop_config(broker_name, shop={"validate": False}, files=[str(tmp_path)])
    config["apis"]["default"]["validate"] = {"outgoing": True, "incoming": True}
    caller = make_bus(config=config)
    with pytest.raises(SchemaValidationError, match=r"other\.f\(\) parameter 'x'"):
        await caller.other.f.call_async(x="1")
    with pytest.raises(RpcTimeout):
        await caller.shop.total.call_async(amount=1.5, bus_options=SHORT)
    assert queued(broker_name, "other") == 0 and queued(broker_name) == 1


# -- RPC parameters, worker side ---------------------------------------------------------------


async def test_worker_refuses_bad_parameters_from_a_caller_without_the_plugin(
        make_bus, broker_name) -> None:
    worker_bus = make_bus(config=shop_config(broker_name), service_name="shop_service")
    shop = ShopApi()
    worker_bus.client.register_api(shop)
    foreign = make_bus(config=shop_config(broker_name, plugin=False), service_name="foreign")
    async with serving(worker_bus):
        # Decimal casts from a number, so only the schema catches this one.
        with pytest.raises(RemoteError) as caught:
            await foreign.shop.total.call_async(amount=1.5)
        assert caught.value.remote_type == "SchemaValidationError"
        assert "shop.total() parameter 'amount': 1.5" in caught.value.remote_message
        with pytest.raises(RemoteError) as missing:
            await foreign.shop.total.call_async(money=None)
        assert missing.value.remote_type == "SchemaValidationError"
        assert "parameter 'amount'" in str(missing.value)
        assert "required parameter is missing" in str(missing.value)
        with pytest.raises(RemoteError) as unknown:
            await foreign.shop.total.call_async(amount="1", discount="5")
        assert unknown.value.remote_type == "SchemaValidationError"
        assert "parameter 'discount'" in str(unknown.value)
        assert "no such parameter" in str(unknown.value)
        assert shop.calls == []  # refused before executing
        assert await foreign.shop.total.call_async(amount="1.25") == "1.25"
    assert shop.calls == [("total", {"amount": Decimal("1.25"), "money": None})]


@pytest.mark.parametrize("setting", [{"incoming": False}, False])
async def test_worker_side_parameter_validation_can_be_switched_off(
        make_bus, broker_name, setting: Any) -> None:
    worker_bus = make_bus(config=shop_config(broker_name, shop={"validate": setting}))
    shop = ShopApi()
    worker_bus.client.register_api(shop)
    foreign = make_bus(config=shop_config(broker_name, plugin=False), service_name="foreign")
    async with serving(worker_bus):
        assert await foreign.shop.total.call_async(amount=1.5) == "1.5"
    assert shop.calls == [("total", {"amount": Decimal("1.5"), "money": None})]


# -- RPC results -------------------------------------------------------------------------------


async def test_worker_refuses_to_send_a_wrongly_typed_result(make_bus, broker_name) -> None:
    worker_bus = make_bus(config=shop_config(broker_name), service_name="shop_service")
    shop = ShopApi()
    worker_bus.client.register_api(shop)
    foreign = make_bus(config=shop_config(broker_name, plugin=False), service_name="foreign")
    async with serving(worker_bus):
        with pytest.raises(RemoteError) as caught:
            await foreign.shop.sloppy_total.call_async()
        assert shop.calls == [("sloppy_total", {})]  # it ran; its answer was refused
        shop.bad_total = Decimal("2.5")
        assert await foreign.shop.sloppy_total.call_async() == "2.5"
    assert caught.value.remote_type == "SchemaValidationError"
    assert "shop.sloppy_total() result: 2.5" in caught.value.remote_message
    assert "'string'" in caught.value.remote_message


async def test_worker_side_result_validation_can_be_switched_off(make_bus, broker_name) -> None:
    worker_bus = make_bus(config=shop_config(broker_name, shop={"validate": {"outgoing": False}}))
    worker_bus.client.register_api(ShopApi())
    foreign = make_bus(config=shop_config(broker_name, plugin=False), service_name="foreign")
    async with serving(worker_bus):
        assert await foreign.shop.sloppy_total.call_async() == 2.5


@pytest.mark.parametrize("caller_validates", [True, False])
async def test_caller_refuses_a_bad_result_from_a_worker_without_the_plugin(
        make_bus, broker_name, caller_validates: bool) -> None:
    worker_bus = make_bus(config=shop_config(broker_name, plugin=False), service_name="plain")
    worker_bus.client.register_api(ShopApi())
    setting = None if caller_validates else {"validate": {"incoming": False}}
    caller = make_bus(config=shop_config(broker_name, shop=setting), service_name="caller")
    caller.client.register_api(ShopApi())  # its schema is the caller's own
    async with serving(worker_bus):
        if caller_validates:
            with pytest.raises(SchemaValidationError,
                               match=r"shop\.sloppy_total\(\) result: 2\.5 .*'string'"):
                await caller.shop.sloppy_total.call_async()
        else:  # the kernel alone casts a number to Decimal
            assert await caller.shop.sloppy_total.call_async() == Decimal("2.5")
        assert await caller.shop.price.call_async(sku="a", quantity=2) == Decimal("5.00")


async def test_a_caller_validates_results_against_a_remote_schema(make_bus, broker_name) -> None:
    await publish_shop(make_bus, broker_name)
    worker_bus = make_bus(config=shop_config(broker_name, plugin=False), service_name="plain")
    worker_bus.client.register_api(ShopApi())
    caller = make_bus(config=shop_config(broker_name), service_name="caller")
    async with serving(worker_bus):
        with pytest.raises(SchemaValidationError, match="result"):
            await caller.shop.sloppy_total.call_async()
        assert await caller.shop.price.call_async(sku="a") == "2.50"


# -- events ------------------------------------------------------------------------------------


async def test_firing_a_bad_event_fails_and_sends_nothing(make_bus, broker_name) -> None:
    bus = make_bus(config=shop_config(broker_name))
    bus.client.register_api(ShopApi())
    with pytest.raises(SchemaValidationError) as caught:
        await bus.shop.order_placed.fire_async(order_id=UID, total=1.5)
    assert "event shop.order_placed parameter 'total': 1.5" in str(caught.value)
    assert await fired(bus) == []
    sent = await bus.shop.order_placed.fire_async(order_id=UID, total=Decimal("9.99"))
    assert [m.id for m in await fired(bus)] == [sent.id]


async def test_event_fire_validation_can_be_switched_off(make_bus, broker_name) -> None:
    bus = make_bus(config=shop_config(broker_name, shop={"validate": {"outgoing": False}}))
    bus.client.register_api(ShopApi())
    await bus.shop.order_placed.fire_async(order_id=UID, total=1.5)
    (message,) = await fired(bus)
    assert message.kwargs["total"] == 1.5


class Handler:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, event: EventMessage, **kwargs: Any) -> None:
        self.seen.append(kwargs)


@pytest.mark.parametrize("schema_source", ["local", "remote"])
async def test_an_invalid_incoming_event_is_dead_lettered_at_once(
        make_bus, broker_name, schema_source: str) -> None:
    if schema_source == "remote":
        await publish_shop(make_bus, broker_name)
    config = shop_config(broker_name)
    config["apis"]["default"].update(max_deliveries=5, redelivery_delay=0)
    listener = make_bus(config=config, service_name="listener")
    if schema_source == "local":
        listener.client.register_api(ShopApi())
    handler = Handler()
    listener.shop.order_placed.listen(handler, listener_name="books")
    foreign = make_bus(config=shop_config(broker_name, plugin=False), service_name="foreign")
    foreign.client.register_api(LooseShopApi())
    transport = await event_transport(listener, "shop")
    async with serving(listener):
        await foreign.shop.order_placed.fire_async(order_id="not a uuid", total=1.5, note="")
        await eventually(lambda: transport.dead_letters("shop", "order_placed"))
        await foreign.shop.order_placed.fire_async(order_id=str(UID), total="1.5", note="ok")
        await eventually(lambda: handler.seen)
        await asyncio.sleep(QUIET)  # a retry of the bad one would show up meanwhile
    (letter,) = transport.dead_letters("shop", "order_placed")
    assert "SchemaValidationError" in letter.reason and "after 1 deliveries" in letter.reason
    assert "event shop.order_placed parameter" in letter.reason
    assert handler.seen == [{"order_id": str(UID), "total": "1.5", "note": "ok"}]


async def test_incoming_event_validation_can_be_switched_off(make_bus, broker_name) -> None:
    listener = make_bus(config=shop_config(broker_name, shop={"validate": {"incoming": False}}))
    listener.client.register_api(ShopApi())
    handler = Handler()
    listener.shop.order_placed.listen(handler, listener_name="books")
    foreign = make_bus(config=shop_config(broker_name, plugin=False), service_name="foreign")
    foreign.client.register_api(LooseShopApi())
    transport = await event_transport(listener, "shop")
    async with serving(listener):
        await foreign.shop.order_placed.fire_async(order_id="not a uuid", total=1.5, note="")
        await eventually(lambda: handler.seen)
    assert handler.seen == [{"order_id": "not a uuid", "total": 1.5, "note": ""}]
    assert transport.dead_letters() == []


# -- error messages ----------------------------------------------------------------------------


def test_messages_name_where_what_and_what_was_expected() -> None:
    document = api_schema(ShopApi)
    total = CompiledSchema(document["rpcs"]["total"]["parameters"])
    cases = [
        ({"amount": 1.5}, "shop.total() parameter 'amount': 1.5 does not match the schema: "
                          "1.5 is not of type 'string'"),
        ({"amount": "1,5"}, "parameter 'amount': '1,5' does not match the schema: "
                            "'1,5' does not match"),
        ({"amount": "1", "money": {"amount": 1}}, "parameter 'money'['amount']: 1 "),
        ({"amount": "1", "money": {"amount": "1", "currency": None}},
         "parameter 'money'['currency']: None"),
        ({}, "shop.total() parameter 'amount': (missing) does not match the schema: "
             "a required parameter is missing"),
        ({"amount": "1", "colour": "red"}, "shop.total() parameter 'colour': 'red' does not "
                                           "match the schema: no such parameter in the schema"),
    ]
    for value, expected in cases:
        with pytest.raises(SchemaValidationError) as caught:
            total.check(value, "shop.total()", parameters=True)
        assert expected in str(caught.value), (value, str(caught.value))
    total.check({"amount": "1"}, "shop.total()", parameters=True)  # no error
    response = CompiledSchema(document["rpcs"]["price"]["response"])
    with pytest.raises(SchemaValidationError) as result:
        response.check(["2.50"], "shop.price()", parameters=False)
    assert str(result.value).startswith("shop.price() result: ['2.50'] does not match")
    event = CompiledSchema(document["events"]["order_placed"]["parameters"])
    with pytest.raises(SchemaValidationError) as caught_event:
        event.check({"order_id": str(UID), "total": 3}, "event shop.order_placed", True)
    assert "event shop.order_placed parameter 'total': 3 " in str(caught_event.value)


def test_a_long_bad_value_is_shortened_everywhere_in_the_message() -> None:
    total = CompiledSchema(api_schema(ShopApi)["rpcs"]["total"]["parameters"])
    huge = ["x" * 10_000]
    with pytest.raises(SchemaValidationError) as caught:
        total.check({"amount": huge}, "shop.total()", parameters=True)
    message = str(caught.value)
    assert "parameter 'amount': ['xxx" in message and "..." in message
    assert "is not of type 'string'" in message
    assert len(message) < 300, message
    assert caught.value.value == huge  # the whole value stays on the exception
    many = CompiledSchema({"enum": [f"choice-{i}" for i in range(500)]})
    with pytest.raises(SchemaValidationError) as enum_error:
        many.check("other", "shop.pick()", parameters=False)
    text = str(enum_error.value)
    assert text.startswith("shop.pick() result: 'other' does not match the schema: "
                           "'other' is not one of ['choice-0', 'choice-1', ")
    assert text.endswith("...") and len(text) < 350, text


# -- unknown schemas: strict mode and the warning --------------------------------------------


async def test_strict_mode_refuses_an_api_without_a_schema(make_bus, broker_name) -> None:
    config = shop_config(broker_name)
    config["apis"]["ghost"] = {"strict_validation": True}
    caller = make_bus(config=config)
    with pytest.raises(UnknownApi, match="ghost"):
        await caller.ghost.haunt.call_async(where="attic")
    assert queued(broker_name, "ghost") == 0
    await publish_shop(make_bus, broker_name)
    config = shop_config(broker_name, shop={"strict_validation": True})
    strict = make_bus(config=config, service_name="strict")
    with pytest.raises(RpcTimeout):  # known: it goes out
        await strict.shop.total.call_async(amount="1", bus_options=SHORT)
    with pytest.raises(UnknownRpc, match=r"no RPC 'refund'"):  # known API, unknown RPC
        await strict.shop.refund.call_async(amount="1", bus_options=SHORT)
    assert queued(broker_name) == 1


async def test_without_strict_mode_an_unknown_api_warns_once_per_api(
        make_bus, broker_name) -> None:
    worker_bus = make_bus(config=shop_config(broker_name, plugin=False), service_name="plain")
    worker_bus.client.register_api(ShopApi())
    caller = make_bus(config=shop_config(broker_name), service_name="caller")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with serving(worker_bus):
            for _ in range(3):
                assert await caller.shop.total.call_async(amount=1.5) == "1.5"  # unchecked
            await caller.shop.price.call_async(sku="a")
        for _ in range(2):
            with pytest.raises(RpcTimeout):
                await caller.ghost.haunt.call_async(bus_options=SHORT)
    runtime = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 2, runtime
    assert "'shop'" in runtime[0] and "not validated" in runtime[0]
    assert "'ghost'" in runtime[1]


async def test_a_valid_round_trip_of_every_direction(make_bus, broker_name) -> None:
    """With everything on, good traffic flows: RPCs (both sides validate parameters and
    results) and events (fire and handling)."""
    worker_bus = make_bus(config=shop_config(broker_name), service_name="shop_service")
    shop = ShopApi()
    worker_bus.client.register_api(shop)
    handler = Handler()
    worker_bus.shop.order_placed.listen(handler, listener_name="books")
    caller = make_bus(config=shop_config(broker_name), service_name="caller")
    async with serving(worker_bus):
        assert await caller.shop.price.call_async(sku="a", quantity=3) == "7.50"
        assert await caller.shop.total.call_async(
            amount="1E-7", money={"amount": "1", "currency": "EUR"}) == "1E-7"
        await worker_bus.shop.order_placed.fire_async(order_id=uuid.uuid4(),
                                                      total=Decimal("0.0000001"))
        await eventually(lambda: handler.seen)
    assert handler.seen[0]["total"] == "1E-7"


def every_type_api() -> type[Api]:
    """One echo RPC per case of the type table (echo_0, echo_1, ...)."""
    members: dict[str, Any] = {"Meta": type("Meta", (), {"name": "every_type"}),
                               "__module__": __name__}
    for index, case in enumerate(CASES):
        def echo(self: Any, value: Any) -> Any:
            return value

        echo.__annotations__ = {"value": case.hint, "return": case.hint}
        members[f"echo_{index}"] = echo
    return type("EveryTypeApi", (Api,), members)


async def test_every_type_travels_through_a_validating_bus(make_bus, broker_name) -> None:
    api = every_type_api()
    worker_bus = make_bus(config=shop_config(broker_name), service_name="worker")
    worker_bus.client.register_api(api())
    caller = make_bus(config=shop_config(broker_name), service_name="caller")
    caller.client.register_api(api())  # to cast results back to the hints
    async with serving(worker_bus):
        for index, case in enumerate(CASES):
            rpc = getattr(caller.every_type, f"echo_{index}")
            for value in case.good:
                assert await rpc.call_async(value=value) == value, case.label


async def test_an_rpc_missing_from_the_published_schema_is_refused_before_sending(
        make_bus, broker_name) -> None:
    await publish_shop(make_bus, broker_name)
    caller = make_bus(config=shop_config(broker_name), service_name="caller")
    with pytest.raises(UnknownRpc) as refused:
        await caller.shop.refnud.call_async(amount=1.5)
    assert str(refused.value) == ("API 'shop' has no RPC 'refnud' in the schema its workers "
                                  "publish; its RPCs: price, sloppy_total, total")
    assert queued(broker_name) == 0


async def test_with_outgoing_validation_off_an_unpublished_rpc_goes_out(
        make_bus, broker_name) -> None:
    await publish_shop(make_bus, broker_name)
    caller = make_bus(config=shop_config(broker_name, shop={"validate": False}),
                      service_name="caller")
    with pytest.raises(RpcTimeout):  # sent: nobody serves it, but it was not refused
        await caller.shop.refnud.call_async(amount=1.5, bus_options=SHORT)


class NewerShopApi(ShopApi):
    """The `shop` service after a release that added an RPC."""

    class Meta:
        name = "shop"

    def refund(self, amount: float) -> str:
        return str(amount)


async def test_an_rpc_published_since_the_last_load_is_found_by_one_reload(
        make_bus, broker_name, monkeypatch) -> None:
    await publish_shop(make_bus, broker_name)
    caller = make_bus(config=shop_config(broker_name), service_name="caller")
    with pytest.raises(UnknownRpc):
        await caller.shop.refund.call_async(amount=1.5)  # loads the schema: no refund yet
    newer = make_bus(config=shop_config(broker_name), service_name="publisher")
    newer.client.register_api(NewerShopApi())
    monkeypatch.setattr(schema_plugin, "RELOAD_FOR_UNKNOWN_RPC", 0.0)  # "a while later"
    async with serving(newer):
        assert await caller.shop.refund.call_async(amount=1.5) == "1.5"
