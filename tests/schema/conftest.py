"""Fixtures of the schema tests: configs with the plugin on, and the Redis fixtures of
tests/redis (a redis-server this run starts and owns)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from bus_core import Bus
from tests.redis.conftest import (  # noqa: F401  (fixtures, used by name)
    make_redis_bus,
    raw,
    redis_server,
    redis_url,
)


def with_schema(config: dict[str, Any], **options: Any) -> dict[str, Any]:
    """`config` with `plugins.schema` enabled (and `options` set in its section)."""
    config.setdefault("plugins", {})["schema"] = {"enabled": True, **options}
    return config


@contextlib.asynccontextmanager
async def closing(*buses: Bus) -> AsyncIterator[None]:
    """Close the buses' transports on this loop at the end (Redis connections included)."""
    try:
        yield
    finally:
        for bus in buses:
            await bus.client.close_async()
