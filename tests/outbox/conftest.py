"""Fixtures of the outbox tests: a real PostgreSQL cluster (one per test process), a fresh
PostgreSQL schema per test, and the Redis fixtures of tests/redis."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.outbox.postgres import PostgresServer, find_bindir
from tests.redis.conftest import (  # noqa: F401  (fixtures, used by name)
    make_redis_bus,
    raw,
    redis_server,
    redis_url,
)

_schemas = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server this test process started; stopped at the end of the session."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): install the Debian "
                    "package postgresql (.ci/run does this)")
    server = PostgresServer(bindir)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    return postgres.dsn()


@pytest.fixture
def pg_schema(postgres: PostgresServer) -> Iterator[str]:
    """A PostgreSQL schema of this test alone (the outbox's tables go in it); dropped after."""
    import psycopg

    name = f"t{os.getpid()}_{next(_schemas)}"
    yield name
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def outbox_config(config: dict[str, Any], dsn: str, schema: str,
                  **options: Any) -> dict[str, Any]:
    """`config` with `plugins.outbox` enabled on `dsn` and `schema`."""
    section = {"enabled": True, "dsn": dsn, "schema": schema, "relay": False, **options}
    config.setdefault("plugins", {})["outbox"] = section
    return config
