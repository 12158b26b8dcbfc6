"""Fixtures of the state tests: configs with the plugin on, and the Redis fixtures of
tests/redis (a redis-server this run starts and owns)."""

from __future__ import annotations

from typing import Any

from tests.redis.conftest import (  # noqa: F401  (fixtures, used by name)
    make_redis_bus,
    raw,
    redis_server,
    redis_url,
)


def with_state(config: dict[str, Any], **options: Any) -> dict[str, Any]:
    """`config` with `plugins.state` enabled (and `options` set in its section)."""
    config.setdefault("plugins", {})["state"] = {"enabled": True, **options}
    return config
