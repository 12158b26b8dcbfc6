"""`bus shell` against a live service on Redis: the schema plugin tells the shell which APIs
exist, so a client without the service's code completes, describes, calls and validates."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import ROOT
from tests.core.test_cli import Running
from tests.core.test_cli import bus as run_bus
from tests.core.test_shell import shell, shell_in_terminal

pytestmark = pytest.mark.slow
SCHEMA_EXAMPLE = ROOT / "examples" / "schema"


@pytest.fixture
def orders_service(redis_url):
    env = {"BUS_CONFIG": "redis.yaml", "REDIS_URL": redis_url}
    worker = Running(["run"], cwd=SCHEMA_EXAMPLE, env=env)
    worker.wait_for("serving APIs [orders]")
    yield {"BUS_CONFIG": str(SCHEMA_EXAMPLE / "redis.yaml"), "REDIS_URL": redis_url}
    assert worker.stop(signal.SIGTERM) == 0


def test_shell_without_the_services_code_knows_its_apis_from_the_schema(orders_service,
                                                                         tmp_path):
    result = shell(
        "bus.orders\n"
        'bus.orders.place_order(customer="ada", lines=[{"sku": "tea", "quantity": 2}])\n'
        'bus.orders.place_order(customer=7, lines=[])\n'
        'bus.orders.place_ordr(customer="ada", lines=[])\n',
        cwd=tmp_path, env=orders_service,
    )
    assert result.returncode == 0, result.stderr
    assert "no bus module" in result.stderr
    assert "APIs from the schema: orders" in result.stderr
    assert ("<BusPath API orders: RPCs place_order(customer, lines, note=None, "
            "shipping='standard'); events order_placed(order_id, customer, total_cents, "
            "express=False)>") in result.stdout
    assert "{'order_id': 1001, 'total_cents': 900}" in result.stdout
    # Validated against the live schema before sending: one readable line.
    assert ("SchemaValidationError: orders.place_order() parameter 'customer': 7 does not "
            "match the schema: 7 is not of type 'string'") in result.stderr.splitlines()
    # A misspelled RPC is refused before sending: the published schema lacks it.
    assert ("UnknownRpc: API 'orders' has no RPC 'place_ordr' in the schema its workers "
            "publish; its RPCs: place_order") in result.stderr.splitlines()
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr


def test_tab_completes_remote_apis_from_the_schema(orders_service, tmp_path):
    with shell_in_terminal(tmp_path, env=orders_service) as terminal:
        terminal.say("bus.ord\t", "bus.orders")
        terminal.say(".pl\t", ".place_order(")
        terminal.say('customer="bo", lines=[])\n', "'total_cents': 0}\r\n>>> ")


def test_inspect_lists_a_remote_apis_events_from_the_schema(orders_service, tmp_path):
    fired = run_bus("fire", "--as-foreign", "orders.order_placed", "order_id=7",
                    "customer=ada", "total_cents=900", cwd=tmp_path, env=orders_service)
    assert fired.returncode == 0, fired.stderr
    listed = run_bus("inspect", "--api", "orders", cwd=tmp_path, env=orders_service)
    assert listed.returncode == 0, listed.stderr
    assert "orders.order_placed" in listed.stdout and "customer=\"ada\"" in listed.stdout


def test_inspect_of_an_api_nobody_describes_says_how_to_name_events(orders_service, tmp_path):
    listed = run_bus("inspect", "--api", "billing", cwd=tmp_path, env=orders_service)
    assert listed.returncode == 2
    assert "name them with --event EVENT" in listed.stderr
