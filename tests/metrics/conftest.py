"""Fixtures of the metrics tests: the Redis fixtures of tests/redis (a redis-server this run
starts and owns)."""

from tests.redis.conftest import (  # noqa: F401  (fixtures, used by name)
    redis_server,
    redis_url,
)
