"""The `orders` service's bus module: what `bus run` and `bus schema dump` import.

The config is `$BUS_CONFIG`, else `bus.yaml` next to this file (memory transport, schema
plugin enabled).
"""

from __future__ import annotations

import os
from pathlib import Path

from orders_api import OrdersApi

import bus_core

CONFIG = os.environ.get("BUS_CONFIG") or Path(__file__).with_name("bus.yaml")

bus = bus_core.create(CONFIG, service_name="orders")
bus.client.register_api(OrdersApi())
