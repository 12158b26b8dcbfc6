"""Fixtures of the otel tests: one SDK tracer provider per test process exporting to memory
(OpenTelemetry allows setting the global provider once), cleared for each test; and the Redis
fixtures of tests/redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.redis.conftest import (  # noqa: F401  (fixtures, used by name)
    make_redis_bus,
    raw,
    redis_server,
    redis_url,
)

EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_PROVIDER)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The exporter of the finished spans of this test."""
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()
