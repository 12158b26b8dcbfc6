"""The fast paths of Bus, on the embedded in-memory transport (no server needed):

- `fire_many`: a batch of events, checked whole, sent together (one pipeline on Redis);
- local calls (`apis.<api>.local: true`): an RPC of an API this process registers runs
  here, without the transport, with the same checks, hooks and errors;
- `json-fast` (orjson) and `bus.event_loop: uvloop`, when bus-core[fast] is installed.

    python examples/performance/fast_paths.py
"""

from __future__ import annotations

import asyncio
import importlib.util
import time

import bus_core
from bus_core import Api, Event, RemoteError

FAST = importlib.util.find_spec("orjson") is not None and \
    importlib.util.find_spec("uvloop") is not None


class ShopApi(Api):
    order_placed = Event(parameters=("order_id", "total"))

    class Meta:
        name = "shop"

    async def price(self, sku: str, quantity: int = 1) -> float:
        if quantity < 1:
            raise ValueError(f"quantity must be at least 1, not {quantity}")
        return 9.5 * quantity


CONFIG = {
    "bus": {"serializer": "json-fast" if FAST else "json",
            "event_loop": "uvloop" if FAST else "asyncio"},
    "apis": {"shop": {"local": True}},  # calls of shop.* from this process run here
}


async def main() -> None:
    bus = bus_core.create(CONFIG, service_name="shop")
    bus.client.register_api(ShopApi())
    received: list[str] = []
    done = asyncio.Event()

    async def ship(event: object, order_id: str, total: float) -> None:
        received.append(order_id)
        if len(received) == 1000:
            done.set()

    await bus.shop.order_placed.listen_async(ship, listener_name="shipping", ordered=True)
    worker = bus.client.worker()
    await worker.start()
    try:
        started = time.perf_counter()
        fired = await bus.shop.order_placed.fire_many_async(
            [{"order_id": f"o{n}", "total": n * 1.5} for n in range(1000)])
        await asyncio.wait_for(done.wait(), 30)
        took = time.perf_counter() - started
        print(f"fire_many: {len(fired)} events fired and handled in order: "
              f"{received[:3]} ... {received[-1]} ({took * 1000:.0f} ms)")

        print(f"local call: shop.price(sku='tea', quantity=3) -> "
              f"{await bus.shop.price.call_async(sku='tea', quantity=3)}")
        try:
            await bus.shop.price.call_async(sku="tea", quantity=0)
        except RemoteError as exc:  # the same error as over a transport
            print(f"local call error: {exc.remote_type}: {exc.remote_message}")
        print(f"serializer {CONFIG['bus']['serializer']}, event loop "
              f"{type(asyncio.get_running_loop()).__module__.split('.')[0]}")
    finally:
        await worker.stop()
        await bus.client.close_async()
    print("[performance] done")


if __name__ == "__main__":
    if FAST:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
