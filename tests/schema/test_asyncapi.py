"""`bus schema asyncapi`: AsyncAPI 3.0 documents from the shared schema, validated against the
official AsyncAPI 3.0 JSON Schema (npm `@asyncapi/specs`, fetched by `dev.py setup`), for the
examples' APIs and an API using every type of the schema plugin's type table."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from bus_schema import api_schema
from bus_schema.asyncapi import asyncapi_document, public_server, render
from bus_schema.store import read_schema_files
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7

from bus_core import Api, Event, Parameter
from bus_core.config import Config
from tests.schema.typed import CASES, ShopApi

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# Where dev.py installs the package (`npm install --prefix .venv/asyncapi-specs`);
# ASYNCAPI_SPECS_DIR may name another folder holding node_modules/@asyncapi/specs.
SPECS_PREFIX = Path(os.environ.get("ASYNCAPI_SPECS_DIR") or ROOT / ".venv" / "asyncapi-specs")
SPEC_FILE = SPECS_PREFIX / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"
BUS = [sys.executable, "-m", "bus_core.cli"]


# -- the official schema --------------------------------------------------------------------


@cache
def _official_validator() -> Draft7Validator | str:
    """A validator of the official AsyncAPI 3.0.0 schema, or why there is none."""
    if not SPEC_FILE.is_file():
        if shutil.which("npm") is None:
            return ("npm is not installed, so dev.py could not fetch the official AsyncAPI "
                    f"3.0 JSON Schema (npm package @asyncapi/specs) into {SPECS_PREFIX}: "
                    "install Node.js/npm and run `python3 dev.py setup`")
        return (f"the npm package @asyncapi/specs is not in {SPECS_PREFIX}: run "
                "`python3 dev.py setup` (it runs npm install @asyncapi/specs@6 there)")
    spec = json.loads(SPEC_FILE.read_text(encoding="utf-8"))

    def offline(uri: str) -> Any:  # every $ref is inside the bundle: never the network
        raise NoSuchResource(ref=uri)

    registry = Registry(retrieve=offline).with_resource(  # type: ignore[call-arg]
        spec["$id"], DRAFT7.create_resource(spec)).crawl()
    return Draft7Validator(spec, registry=registry)


@pytest.fixture
def official() -> Draft7Validator:
    validator = _official_validator()
    if isinstance(validator, str):
        pytest.skip(validator)
    return validator


def check_valid(validator: Draft7Validator, document: dict[str, Any]) -> None:
    """Valid against the official schema, and every `$ref` points at something."""
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}"
                                 for e in errors[:10])
    check_references(document)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def check_references(document: dict[str, Any]) -> None:
    """Every $ref resolves; an operation's (and its reply's) messages are its channel's."""
    for ref in references(document):
        resolve(document, ref)
    for name, operation in document["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), name
        reply = operation.get("reply")
        if reply:
            for message in reply["messages"]:
                assert message["$ref"].startswith(reply["channel"]["$ref"] + "/messages/")
            assert resolve(document, reply["channel"]["$ref"])["address"] is None


# -- the APIs: the examples' and every type of the type table --------------------------------


def _module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"_asyncapi_example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


EXAMPLE_MODULES = ("quickstart/auth_api.py", "schema/orders_api.py",
                   "django/services/accounts_api.py", "testing/shop.py", "plugin-hello/demo.py")


@cache
def example_apis() -> tuple[tuple[str, str, dict[str, Any]], ...]:
    """(module, API name, schema) of every API class the examples declare."""
    found = []
    for path in EXAMPLE_MODULES:
        module = _module(EXAMPLES / path)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, Api) and value is not Api and value.__module__ == module.__name__:
                found.append((path, value.definition.name, api_schema(value)))
    return tuple(found)


def example_schemas() -> dict[str, dict[str, Any]]:
    """The examples' schemas by API name (the first of two `auth` APIs: the quickstart's)."""
    schemas: dict[str, dict[str, Any]] = {}
    for _, name, schema in example_apis():
        schemas.setdefault(name, schema)
    return schemas


def _slug(label: str) -> str:
    return re.sub(r"\W+", "_", label).strip("_").lower()


def every_type_api() -> type[Api]:
    """An API with, for each hint of the type table (tests/schema/typed.py), an RPC taking and
    returning it and an event carrying it."""
    namespace: dict[str, Any] = {"__doc__": "Every type of the type table.",
                                 "Meta": type("Meta", (), {"name": "types.every"})}
    for case in CASES:
        slug = _slug(case.label)

        def rpc(self: Any, value: Any) -> Any:
            return value

        rpc.__name__ = f"echo_{slug}"
        rpc.__doc__ = f"Return the {case.label} it is given.\n\n:param value: a {case.label}"
        rpc.__annotations__ = {"value": case.hint, "return": case.hint}
        namespace[rpc.__name__] = rpc
        namespace[f"got_{slug}"] = Event(parameters=[Parameter("value", case.hint)])
    return type("EveryTypeApi", (Api,), namespace)


REDIS = {"redis": {"url": "redis://app:s3cr3t-pw@cache.internal:6380/2?password=q-s3cr3t"}}


def redis_config(**event_options: Any) -> Config:
    return Config({"apis": {"default": {
        "rpc_transport": REDIS, "result_transport": REDIS,
        "event_transport": {"redis": {**REDIS["redis"], **event_options}}}}})


# -- validation against the official schema --------------------------------------------------


def test_examples_are_valid_asyncapi(official: Draft7Validator) -> None:
    schemas = example_schemas()
    assert {"auth", "orders", "accounts", "shop", "maths"} <= set(schemas)
    for config in (None, Config({}), redis_config(), redis_config(stream_use="per_event")):
        check_valid(official, asyncapi_document(schemas, config))
    for _, name, schema in example_apis():  # and each API alone
        check_valid(official, asyncapi_document({name: schema}, redis_config()))


def test_recorded_schema_file_is_valid_asyncapi(official: Draft7Validator) -> None:
    """A schema as `bus schema dump` recorded it (what another service published)."""
    schemas = read_schema_files(EXAMPLES / "schema" / "schemas")
    check_valid(official, asyncapi_document(schemas, redis_config()))


def test_every_type_of_the_type_table_is_valid_asyncapi(official: Draft7Validator) -> None:
    api = every_type_api()
    schema = api_schema(api)
    assert len(schema["rpcs"]) == len(schema["events"]) == len(CASES)
    for config in (None, redis_config(stream_use="per_event")):
        document = asyncapi_document({"types.every": schema, "shop": api_schema(ShopApi)},
                                     config)
        check_valid(official, document)
        # YAML and JSON renderings read back as the same valid document
        assert yaml.safe_load(render(document, "yaml")) == document
        assert json.loads(render(document, "json")) == document


def test_invalid_documents_are_refused(official: Draft7Validator) -> None:
    """The validator is not a rubber stamp."""
    document = asyncapi_document(example_schemas(), redis_config())
    wrong_action = json.loads(json.dumps(document))
    wrong_action["operations"]["auth.check_password"]["action"] = "serve"
    assert list(official.iter_errors(wrong_action))
    no_host = json.loads(json.dumps(document))
    del no_host["servers"]["redis"]["host"]
    assert list(official.iter_errors(no_host))
    bad_reply = json.loads(json.dumps(document))
    bad_reply["operations"]["auth.check_password"]["reply"]["address"]["location"] = "metadata"
    assert list(official.iter_errors(bad_reply))


# -- what the document says ------------------------------------------------------------------


def test_channels_and_operations_use_the_redis_keys() -> None:
    schemas = example_schemas()
    document = asyncapi_document({"auth": schemas["auth"], "orders": schemas["orders"]},
                                 redis_config())
    channels, operations = document["channels"], document["operations"]
    assert channels["auth-rpc_queue"]["address"] == "auth:rpc_queue"
    assert channels["auth-stream"]["address"] == "auth.*:stream"
    assert channels["orders-stream"]["address"] == "orders.*:stream"
    assert set(channels["auth-stream"]["messages"]) == {"auth.user_registered-event"}

    call = operations["auth.check_password"]
    assert call["action"] == "receive"
    assert call["channel"] == {"$ref": "#/channels/auth-rpc_queue"}
    assert call["summary"] == "True when `password` is right for `username`."
    assert call["reply"]["address"]["location"] == "$message.header#/return_path"
    reply_channel = resolve(document, call["reply"]["channel"]["$ref"])
    assert "bus:reply:<process>:<32 hex>" in reply_channel["description"]
    assert "auth.check_password:result:<call id>" in reply_channel["description"]
    assert operations["auth.user_registered"]["action"] == "send"

    messages = document["components"]["messages"]
    check = messages["auth.check_password-call"]
    assert check["payload"]["required"] == ["username", "password"]
    assert "$schema" not in check["payload"]
    assert check["headers"]["properties"]["procedure_name"]["const"] == "check_password"
    assert messages["auth.check_password-result"]["payload"]["properties"]["result"] == {
        "type": "boolean", "title": "RPC auth.check_password() response"}
    placed = messages["orders.order_placed-event"]["payload"]
    assert placed["properties"]["total_cents"]["description"] == "Order total in cents"
    place = messages["orders.place_order-call"]["payload"]
    assert place["properties"]["customer"]["description"] == "the customer's account name"


def test_per_event_streams() -> None:
    document = asyncapi_document({"shop": api_schema(ShopApi)},
                                 redis_config(stream_use="per_event"))
    channels = document["channels"]
    assert channels["shop.order_placed-stream"]["address"] == "shop.order_placed:stream"
    assert channels["shop.stock_changed-stream"]["address"] == "shop.stock_changed:stream"
    assert "shop-stream" not in channels
    assert document["operations"]["shop.order_placed"]["channel"] == {
        "$ref": "#/channels/shop.order_placed-stream"}


def test_per_api_setting_of_one_api() -> None:
    """`stream_use` is read per API (apis.<name> overlays apis.default)."""
    config = Config({"apis": {"default": {"event_transport": REDIS},
                              "shop": {"event_transport": {"redis": {
                                  "url": "redis://other:6379/0", "stream_use": "per_event"}}}}})
    schemas = {"shop": api_schema(ShopApi), **{k: v for k, v in example_schemas().items()
                                               if k == "auth"}}
    document = asyncapi_document(schemas, config)
    assert document["channels"]["auth-stream"]["address"] == "auth.*:stream"
    assert document["channels"]["shop.order_placed-stream"]["servers"] == [
        {"$ref": "#/servers/redis-2"}]
    assert document["servers"]["redis-2"]["host"] == "other:6379"


def test_servers_never_show_credentials() -> None:
    schemas = example_schemas()
    document = asyncapi_document(schemas, redis_config())
    assert document["servers"] == {"redis": {
        "host": "cache.internal:6380", "protocol": "redis", "pathname": "/2",
        "description": "Redis: RPC calls of accounts; RPC results of accounts; events of "
                       "accounts; RPC calls of auth; RPC results of auth; events of auth; "
                       "RPC calls of maths; RPC results of maths; RPC calls of orders; "
                       "RPC results of orders; events of orders; events of shop"}}
    for fmt in ("yaml", "json"):
        text = render(document, fmt)
        assert "s3cr3t" not in text and "app@" not in text and "password=" not in text


@pytest.mark.parametrize(("url", "server"), [
    ("redis://:pw@localhost:6379/0", {"host": "localhost:6379", "pathname": "/0"}),
    ("rediss://user:pw@[::1]:6380", {"host": "[::1]:6380", "protocol": "rediss"}),
    ("redis+sentinel://u:pw@s1:26379,s2:26379/mymaster/0",
     {"host": "s1:26379,s2:26379", "pathname": "/mymaster/0"}),
    ("redis+cluster://TOKEN@n1:7000,n2:7000/", {"host": "n1:7000,n2:7000"}),
    ("unix:///run/redis.sock?password=pw&db=1", {"host": "localhost",
                                                 "pathname": "/run/redis.sock"}),
])
def test_public_server(url: str, server: dict[str, Any]) -> None:
    found = public_server(url)
    assert server.items() <= found.items()
    assert "pw" not in json.dumps(found) and "TOKEN" not in json.dumps(found)


def test_memory_transport_has_no_servers() -> None:
    document = asyncapi_document(example_schemas(), Config({}))
    assert "servers" not in document
    assert document["channels"]["auth-rpc_queue"]["x-bus-transport"] == "memory"
    assert "servers" not in document["channels"]["auth-rpc_queue"]


# -- the command -----------------------------------------------------------------------------


def asyncapi_cli(*args: str, cwd: Path, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **(env or {})}
    for name in ("BUS_MODULE", "BUS_CONFIG"):
        if name not in (env or {}):
            environment.pop(name, None)
    return subprocess.run([*BUS, "schema", "asyncapi", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_command_in_the_schema_example(tmp_path: Path) -> None:
    folder = EXAMPLES / "schema"
    shown = asyncapi_cli(cwd=folder)
    assert shown.returncode == 0, shown.stderr
    document = yaml.safe_load(shown.stdout)
    assert document["asyncapi"] == "3.0.0"
    assert set(document["operations"]) == {"orders.place_order", "orders.order_placed"}

    out = tmp_path / "orders.json"
    written = asyncapi_cli("--api", "orders", "--format", "json", "-o", str(out),
                           "--title", "Orders", "--doc-version", "2.1.0", cwd=folder)
    assert written.returncode == 0, written.stderr
    assert "wrote the AsyncAPI 3.0 document of 1 API(s)" in written.stdout
    assert json.loads(out.read_text()) == {**document, "info": {
        **document["info"], "title": "Orders", "version": "2.1.0"}}
    validator = _official_validator()
    if not isinstance(validator, str):
        check_valid(validator, json.loads(out.read_text()))

    missing = asyncapi_cli("--api", "orders", "--api", "nosuch", cwd=folder)
    assert missing.returncode == 1
    assert "no schema is known for API 'nosuch'; known: orders" in missing.stderr


@pytest.mark.slow
def test_command_includes_remote_apis(tmp_path: Path, redis_url: str) -> None:
    """An API known only from the schema transport (stored by `bus schema load`, as a worker
    publishes it) is in the document of a process without its code; no password is shown."""
    host = redis_url.split("://", 1)[1]
    secret_url = f"redis://default:not-a-real-pw@{host}"  # the test server takes any password
    transport = json.dumps({"redis": {"url": secret_url}})
    config = tmp_path / "bus.yaml"
    config.write_text(f"bus:\n  schema:\n    transport: {transport}\n"
                      f"apis:\n  default:\n    rpc_transport: {transport}\n"
                      f"    result_transport: {transport}\n"
                      f"    event_transport: {transport}\n")
    env = {"BUS_CONFIG": str(config)}
    loaded = subprocess.run([*BUS, "schema", "load", str(EXAMPLES / "schema" / "schemas")],
                            cwd=tmp_path, env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    shown = asyncapi_cli("--format", "json", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "not-a-real-pw" not in shown.stdout + shown.stderr
    document = json.loads(shown.stdout)
    assert set(document["operations"]) == {"orders.place_order", "orders.order_placed"}
    assert document["servers"]["redis"]["host"] == host.split("/", 1)[0]
    validator = _official_validator()
    if not isinstance(validator, str):
        check_valid(validator, document)
