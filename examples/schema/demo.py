"""Schema validation on the memory transport, in one process: the `orders` service (bus.py)
publishes its API's schema when its worker starts; a `shop` client that does not have the
API's class loads that schema on its first call and checks every call against it.

    python examples/schema/demo.py                   # prints the schema at the end
    python examples/schema/demo.py --out schemas/    # writes it as `bus schema dump` does
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bus import CONFIG, bus
from bus_schema import SchemaValidationError
from bus_schema.plugin import store_for

import bus_core


def render(schemas: dict[str, Any]) -> str:
    return json.dumps(schemas, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", metavar="DIR",
                        help="write the schema to DIR/<api>.json instead of printing it")
    args = parser.parse_args(argv)

    orders = bus.client.apis["orders"]
    bus.client.start_worker()  # serves `orders` and publishes its schema
    shop = bus_core.create(CONFIG, service_name="shop")  # same broker, no OrdersApi class
    try:
        receipt = shop.orders.place_order(customer="ada", lines=[{"sku": "tea", "quantity": 2}])
        print(f"[shop] orders.place_order(customer='ada', lines=[2 x tea]) -> {receipt}")

        try:
            shop.orders.place_order(customer="bob", lines=[{"sku": "mug", "quantity": "two"}])
        except SchemaValidationError as exc:
            print(f"[shop] refused before sending: {type(exc).__name__}: {exc}")
        print(f"[orders] calls that reached place_order: {orders.placed}")

        # What the shop knows, as `bus schema dump` writes it: one file per API, or stdout.
        known = store_for(shop.client).known()
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for name, schema in sorted(known.items()):
                (out / f"{name}.json").write_text(render({name: schema}))
            print(f"[shop] wrote the schema of {', '.join(sorted(known))} to {out}")
        else:
            print("[shop] the schema it checks against:")
            sys.stdout.write(render(known))
    finally:
        shop.client.close()
        bus.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
