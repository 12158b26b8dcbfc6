"""The kit itself: each seeded fault in an otherwise good transport fails the kit tests that
guard against it (and only a missing factory fixture is reported as such)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FAULTY = textwrap.dedent('''
    import itertools
    from typing import Any

    import pytest
    from bus_memory import (MemoryEventTransport, MemoryResultTransport, MemoryRpcTransport,
                            MemorySchemaTransport)
    from bus_memory.transports import MemoryEventConsumer, MemoryRpcConsumer

    from bus_core import hookimpl
    from bus_core.conformance import (BusSuite, EventTransportSuite, ResultTransportSuite,
                                      RpcTransportSuite, SchemaTransportSuite)

    _brokers = itertools.count()


    class ForgetfulConsumer(MemoryEventConsumer):
        async def acknowledge(self, deliveries):  # fault: acknowledges nothing
            return None

        async def redeliver(self, delivery, delay):  # fault: ignores the delay
            await super().redeliver(delivery, 0)

        async def dead_letter(self, delivery, reason):  # fault: gives it back instead
            await super().redeliver(delivery, 0)


    class FaultyEvents(MemoryEventTransport):
        async def open_consumer(self, listen_for, listener_name, since=None):
            good = await super().open_consumer(listen_for, listener_name, since)
            return ForgetfulConsumer(self, good.subscriptions, good.consumer_id)


    class SilentRpcConsumer(MemoryRpcConsumer):
        async def close(self):  # fault: its callers are not told it stopped
            return None


    class FaultyRpcs(MemoryRpcTransport):
        async def open_consumer(self, api_names):
            return SilentRpcConsumer(self, list(api_names))

        async def call_rpc(self, message, *, timeout):  # fault: calls never expire
            await super().call_rpc(message, timeout=3600)

        async def try_lock(self, name, owner, ttl):  # fault: a lock is for everyone
            return True


    class FaultyResults(MemoryResultTransport):
        async def receive_result(self, rpc_message, return_path, timeout):
            return await super().receive_result(rpc_message, return_path, 10 * timeout)


    class FaultySchemas(MemorySchemaTransport):
        async def store(self, api_name, schema, ttl):  # fault: nothing expires
            await super().store(api_name, schema, None)


    CLASSES = {"event": FaultyEvents, "rpc": FaultyRpcs, "result": FaultyResults,
               "schema": FaultySchemas}


    @pytest.fixture
    def bus_transport_factory():
        broker = f"faulty-{next(_brokers)}"
        return lambda kind, **context: CLASSES[kind](broker=broker, **context)


    class FaultyPlugin:
        @hookimpl
        def bus_register_transports(self, register):
            for kind, cls in CLASSES.items():
                register(kind, "faulty", cls)


    @pytest.fixture
    def bus_transport_selection():
        choice = {"faulty": {"broker": f"faulty-bus-{next(_brokers)}"}}
        return {"rpc": choice, "result": choice, "event": choice, "schema": choice}


    class TestEvents(EventTransportSuite):
        quiet = 0.1
        reclaim_after = 0.5


    class TestRpcs(RpcTransportSuite):
        quiet = 0.1
        wait = 2.0
        reports_lost_workers = True


    class TestResults(ResultTransportSuite):
        quiet = 0.1


    class TestSchemas(SchemaTransportSuite):
        schema_ttl = 0.3
        wait = 1.0


    class TestBus(BusSuite):
        plugins = (FaultyPlugin(),)
''')

EXPECTED_FAILURES = {
    "TestEvents::test_an_acknowledged_event_is_never_delivered_again",
    "TestEvents::test_lag_counts_what_a_listener_has_not_settled",
    "TestEvents::test_redeliver_gives_it_back_after_the_delay",
    "TestEvents::test_since_does_not_move_an_existing_listener",
    "TestEvents::test_a_dead_letter_is_not_delivered_again",
    "TestEvents::test_a_malformed_entry_is_a_delivery_with_a_problem",
    "TestEvents::test_dead_letters_are_listed_replayed_once_and_purged",
    "TestBus::test_a_failing_handler_is_retried_then_dead_lettered",
    "TestRpcs::test_an_expired_call_is_dropped_unseen",
    "TestRpcs::test_a_caller_learns_that_its_worker_stopped_without_answering",
    "TestRpcs::test_a_lock_has_one_owner_at_a_time",
    "TestRpcs::test_a_lock_expires_after_its_ttl",
    "TestResults::test_no_result_is_a_timeout",
    "TestSchemas::test_a_schema_expires_after_its_ttl",
}


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
         "-p", "no:xdist", "-p", "no:randomly", *args],
        cwd=folder, capture_output=True, text=True, timeout=240)


def test_each_seeded_fault_fails_the_tests_that_guard_it(tmp_path: Path) -> None:
    (tmp_path / "test_faulty.py").write_text(FAULTY, encoding="utf-8")
    result = _pytest(tmp_path, "test_faulty.py")
    failed = {line.split(" ", 1)[1].split(" - ")[0].split("test_faulty.py::")[1]
              for line in result.stdout.splitlines() if line.startswith("FAILED ")}
    assert failed == EXPECTED_FAILURES, result.stdout[-4000:]


def test_a_suite_without_a_factory_says_what_to_define(tmp_path: Path) -> None:
    (tmp_path / "test_nofactory.py").write_text(
        "from bus_core.conformance import SchemaTransportSuite\n\n\n"
        "class TestMine(SchemaTransportSuite):\n    pass\n", encoding="utf-8")
    result = _pytest(tmp_path, "test_nofactory.py")
    assert result.returncode != 0
    assert "needs a fixture named 'bus_transport_factory'" in result.stdout, result.stdout
