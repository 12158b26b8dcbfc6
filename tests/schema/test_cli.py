"""`bus schema dump|load|show` as a user runs them (subprocesses), and the issue's "done
when": a typed service run with `bus run` on Redis publishes its schema; another process
without its code shows it, and its calls with a wrong type fail before sending."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bus_schema import SchemaValidationError, api_schema
from bus_schema.generate import DRAFT

from bus_core import Bus
from tests.core.test_cli import Running
from tests.schema.typed import ShopApi

pytestmark = pytest.mark.slow
BUS = [sys.executable, "-m", "bus_core.cli"]

SERVICE = '''
from decimal import Decimal

import bus_core
from bus_core import Api, Event, Parameter


class BillingApi(Api):
    """Invoices and charges."""

    invoiced = Event(parameters=[Parameter("invoice_id", int), Parameter("amount", Decimal)])

    class Meta:
        name = "billing"

    def charge(self, customer: str, amount: Decimal, attempts: int = 1) -> bool:
        """Charge a customer.

        :param customer: who pays
        """
        return amount > 0


class ReportsApi(Api):
    class Meta:
        name = "billing.reports"

    def monthly(self, month: int) -> list[str]:
        return [f"report {month}"]


bus = bus_core.create(service_name="billing_service")
bus.client.register_api(BillingApi())
bus.client.register_api(ReportsApi())
'''


def write_config(folder: Path, redis_url: str, ttl: int = 60) -> Path:
    transport = f"{{redis: {{url: '{redis_url}'}}}}"
    path = folder / "bus.yaml"
    path.write_text(textwrap.dedent(f"""\
        bus:
          schema:
            ttl: {ttl}
            transport: {transport}
        apis:
          default:
            rpc_transport: {transport}
            result_transport: {transport}
            event_transport: {transport}
            rpc_timeout: 5
        plugins:
          schema:
            enabled: true
        """))
    return path


@pytest.fixture
def project(tmp_path: Path, redis_url: str) -> tuple[Path, dict[str, str]]:
    """A service folder (bus.py with two typed APIs) and the env that points at its config."""
    folder = tmp_path / "billing"
    folder.mkdir()
    (folder / "bus.py").write_text(SERVICE)
    return folder, {"BUS_CONFIG": str(write_config(tmp_path, redis_url))}


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A folder with no bus module: a process here has no copy of any API's code."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def schema_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    environment.pop("BUS_MODULE", None)
    return subprocess.run([*BUS, "schema", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=60)


def check_billing_document(document: dict[str, Any]) -> None:
    assert set(document) == {"rpcs", "events"}
    charge = document["rpcs"]["charge"]
    assert charge["parameters"]["title"] == "RPC billing.charge() parameters"
    assert charge["parameters"]["$schema"] == DRAFT
    assert charge["parameters"]["required"] == ["customer", "amount"]
    assert charge["parameters"]["description"] == "Charge a customer."
    assert charge["parameters"]["properties"]["customer"] == {"type": "string",
                                                              "description": "who pays"}
    assert charge["response"] == {"$schema": DRAFT, "title": "RPC billing.charge() response",
                                  "type": "boolean"}
    assert document["events"]["invoiced"]["parameters"]["title"] == \
        "Event billing.invoiced parameters"


def test_dump_and_show(project: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    folder, env = project
    dumped = schema_cli("dump", cwd=folder, env=env)
    assert dumped.returncode == 0, dumped.stderr
    schemas = json.loads(dumped.stdout)
    assert set(schemas) == {"billing", "billing.reports"}
    check_billing_document(schemas["billing"])
    assert schemas["billing.reports"]["rpcs"]["monthly"]["response"]["items"] == {
        "type": "string"}

    out_file = tmp_path / "all.json"
    to_file = schema_cli("dump", "--out", str(out_file), cwd=folder, env=env)
    assert to_file.returncode == 0, to_file.stderr
    assert "wrote 2 schema(s)" in to_file.stdout
    assert json.loads(out_file.read_text()) == schemas

    out_dir = tmp_path / "per_api"
    to_dir = schema_cli("dump", "-o", f"{out_dir}/", cwd=folder, env=env)
    assert to_dir.returncode == 0, to_dir.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["billing.json", "billing.reports.json"]
    for name in schemas:
        assert json.loads((out_dir / f"{name}.json").read_text()) == {name: schemas[name]}

    shown = schema_cli("show", "billing", cwd=folder, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"billing": schemas["billing"]}

    unknown = schema_cli("show", "shipping", cwd=folder, env=env)
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    assert "no schema is known for API 'shipping'" in unknown.stderr
    assert "known: billing, billing.reports" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_load_then_show_from_another_process(redis_url: str, raw: Any, tmp_path: Path,
                                             elsewhere: Path) -> None:
    env = {"BUS_CONFIG": str(write_config(tmp_path, redis_url, ttl=120))}
    recorded = tmp_path / "shop.json"
    recorded.write_text(json.dumps({"shop": api_schema(ShopApi)}, indent=2))
    loaded = schema_cli("load", str(recorded), cwd=elsewhere, env=env)
    assert loaded.returncode == 0, loaded.stderr
    assert "stored 1 schema(s)" in loaded.stdout and "shop" in loaded.stdout
    assert raw.smembers("schemas") == {b"shop"}
    assert 100 < raw.ttl("schema:shop") <= 120  # bus.schema.ttl
    assert json.loads(raw.get("schema:shop")) == api_schema(ShopApi)

    other = tmp_path / "other"
    other.mkdir()
    shown = schema_cli("show", "shop", cwd=other, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"shop": api_schema(ShopApi)}

    folder = tmp_path / "recorded"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps({"lb.a": {"rpcs": {}, "events": {}}}))
    (folder / "b.json").write_text(json.dumps({"lb.b": {"rpcs": {}, "events": {}}}))
    from_folder = schema_cli("load", str(folder), "--ttl", "5", cwd=elsewhere, env=env)
    assert from_folder.returncode == 0, from_folder.stderr
    assert "stored 2 schema(s)" in from_folder.stdout
    assert 0 < raw.ttl("schema:lb.a") <= 5 and 0 < raw.ttl("schema:lb.b") <= 5

    missing = schema_cli("load", str(tmp_path / "nope.json"), cwd=elsewhere, env=env)
    assert missing.returncode == 1
    assert "schema file not found" in missing.stderr and "nope.json" in missing.stderr


def test_done_when_a_running_service_shares_its_schema_and_bad_calls_fail_before_sending(
        project: tuple[Path, dict[str, str]], elsewhere: Path, raw: Any,
        make_redis_bus: Callable[..., Bus]) -> None:
    folder, env = project
    worker = Running(["run"], cwd=folder, env=env)
    try:
        worker.wait_for("serving APIs")
        assert raw.smembers("schemas") == {b"billing", b"billing.reports"}
        assert 0 < raw.ttl("schema:billing") <= 60

        shown = schema_cli("show", "billing", cwd=elsewhere, env=env)
        assert shown.returncode == 0, shown.stderr
        check_billing_document(json.loads(shown.stdout)["billing"])

        # This test process has no copy of the API's code either.
        caller = make_redis_bus(config=env["BUS_CONFIG"], service_name="caller")
        assert "billing" not in caller.client.apis
        with pytest.raises(SchemaValidationError) as caught:
            caller.billing.charge(customer="ann", amount=12.5)
        message = str(caught.value)
        assert message.startswith("billing.charge() parameter 'amount': 12.5 does not match")
        assert "'string'" in message
        with pytest.raises(SchemaValidationError, match="parameter 'attempts': 'twice'"):
            caller.billing.charge(customer="ann", amount="12.5", attempts="twice")
        with pytest.raises(SchemaValidationError, match="parameter 'month'"):
            caller.billing.reports.monthly()
        assert raw.llen("billing:rpc_queue") == 0
        assert caller.billing.charge(customer="ann", amount="12.5") is True
        assert caller.billing.reports.monthly(month=3) == ["report 3"]
    finally:
        code = worker.stop(signal.SIGTERM)
    assert code == 0, "\n".join(worker.seen)
