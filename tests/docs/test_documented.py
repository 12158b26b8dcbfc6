"""Everything a user can name is documented: each public name of `bus_core`, the client's
members plugins use, every config key (with a link target for the kernel's), every option of
every installed plugin and transport, every `bus` command and flag (the installed plugins'
commands included), and every member of the transport contracts.

A failure lists what is missing and where it should go; add it to the docs, not here."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import bus_core
from bus_core import transports
from bus_core.cli import build_parser
from bus_core.client import BusClient
from bus_core.config import config_schema
from bus_core.plugins import PluginManager

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@cache
def page(relative: str) -> str:
    return (DOCS / relative).read_text(encoding="utf-8")


@cache
def pages() -> dict[str, str]:
    return {p.relative_to(DOCS).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(DOCS.rglob("*.md"))}


def everything() -> str:
    return "\n".join(pages().values())


def as_code(name: str, text: str) -> bool:
    """`name` appears as code: in backticks (alone or leading a longer span, like
    `name(...)`, `async name(...)` or `name: 1`), as a YAML key or dotted path inside a code
    block, or as a decorator."""
    escaped = re.escape(name)
    return bool(re.search(rf"`(?:@|async |await )?(?:[\w.<>]+\.)?{escaped}(?![\w])[^`\n]*`",
                          text)
                or re.search(rf"^\s*(?:[\w.]+\.)?{escaped}:", text, re.M)
                or re.search(rf"^@[\w.]+\.{escaped}\b", text, re.M))  # a decorator


@cache
def manager() -> PluginManager:
    return PluginManager()


# -- bus_core ----------------------------------------------------------------------------


def test_every_public_name_of_bus_core_is_documented() -> None:
    missing = [name for name in bus_core.__all__ if not as_code(name, everything())]
    assert not missing, f"names in bus_core.__all__ no docs page shows as code: {missing}"


def test_every_client_member_plugins_use_is_in_the_api_reference() -> None:
    members = [name for name in vars(BusClient) if not name.startswith("_")]
    missing = [name for name in members if not as_code(name, page("reference/api.md"))]
    assert not missing, ("BusClient members missing from docs/reference/api.md (section "
                         f"'The client, workers and listeners'): {missing}")


def test_the_testing_helpers_are_documented() -> None:
    from bus_core import testing

    text = page("howto/testing.md")
    names = [*testing.__all__, *(n for n in vars(testing.BusMock) if not n.startswith("_"))]
    missing = [name for name in names if not as_code(name, text)]
    assert not missing, f"bus_core.testing names missing from docs/howto/testing.md: {missing}"


# -- config ------------------------------------------------------------------------------


def _properties(schema: dict[str, Any], prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, sub in (schema.get("properties") or {}).items():
        yield f"{prefix}{key}", sub


def kernel_keys() -> list[str]:
    schema = config_schema(manager())["properties"]
    keys = []
    for path, sub in _properties(schema["bus"], "bus."):
        nested = [p for p, _ in _properties(sub, f"{path}.")]
        keys += nested or [path]  # a section's keys have targets; the section its heading
    api = schema["apis"]["additionalProperties"]
    keys += [p for p, _ in _properties(api, "apis.")]
    return keys


def test_every_kernel_config_key_has_its_own_link_target() -> None:
    text = page("reference/config.md")
    missing = [key for key in kernel_keys() if f'id="{key}"' not in text]
    assert not missing, (
        "config keys without an anchor in docs/reference/config.md (write the table's first "
        f"cell as <a id=\"bus.key\" href=\"#bus.key\">`key`</a>): {missing}")


def plugin_options() -> list[tuple[str, str]]:
    """(plugins.<name>, key) for every option of every installed plugin's section."""
    schema = config_schema(manager())["properties"]["plugins"]["properties"]
    return [(f"plugins.{name}", key) for name, section in sorted(schema.items())
            for key in (section.get("properties") or {}) if key != "enabled"]


def transport_options() -> list[tuple[str, str]]:
    """(kind transport name, option) for every installed transport."""
    found = []
    for (kind, name), entry in sorted(manager().transports.items()):
        for key in ((entry.options_schema or {}).get("properties") or {}):
            found.append((f"{kind} transport {name!r}", key))
    return found


@pytest.mark.parametrize(("where", "key"), [*plugin_options(), *transport_options()],
                         ids=lambda value: str(value))
def test_every_plugin_and_transport_option_is_documented(where: str, key: str) -> None:
    assert as_code(key, everything()), f"option {key!r} of {where} is in no docs page"


def test_every_serializer_is_documented() -> None:
    text = page("reference/config.md")
    missing = [name for name in manager().serializers if f"`{name}`" not in text]
    assert not missing, f"serializers missing from bus.serializer in config.md: {missing}"


ANCHORED_PLUGINS = {"metrics": "reference/metrics.md", "otel": "reference/otel.md",
                    "schema": "reference/schema.md", "state": "reference/state.md"}
ANCHORED_TRANSPORTS = {"memory": "reference/memory-transport.md",
                       "redis": "reference/redis-transport.md"}


@pytest.mark.parametrize("plugin", sorted(ANCHORED_PLUGINS))
def test_each_option_of_the_built_in_plugins_has_a_link_target(plugin: str) -> None:
    section = config_schema(manager())["properties"]["plugins"]["properties"][plugin]
    text = page(ANCHORED_PLUGINS[plugin])
    missing = [key for key in section.get("properties", {})
               if f'id="plugins.{plugin}.{key}"' not in text]
    assert not missing, f"options without an anchor in {ANCHORED_PLUGINS[plugin]}: {missing}"


@pytest.mark.parametrize("transport", sorted(ANCHORED_TRANSPORTS))
def test_each_option_of_the_built_in_transports_has_a_link_target(transport: str) -> None:
    text = page(ANCHORED_TRANSPORTS[transport])
    missing = []
    for (kind, name), entry in sorted(manager().transports.items()):
        if name != transport:
            continue
        for key in ((entry.options_schema or {}).get("properties") or {}):
            if f'id="{name}.{kind}.{key}"' not in text and f'id="{name}.{key}"' not in text:
                missing.append(f"{kind}: {key}")
    assert not missing, (f"options without an anchor (id=\"{transport}.<kind>.<key>\" or "
                         f"\"{transport}.<key>\") in {ANCHORED_TRANSPORTS[transport]}: {missing}")


# -- the bus command -----------------------------------------------------------------------


def commands() -> list[tuple[str, list[str]]]:
    """(`bus sub command`, its long flags) for the whole argparse tree."""
    found: list[tuple[str, list[str]]] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        flags = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif action.option_strings and action.dest != "help":
                flags.append(max(action.option_strings, key=len))
        found.append((path, flags))

    walk(build_parser(manager()), "bus")
    return found


COMMON_FLAGS = {"--config", "--bus", "--log-level"}


def test_the_common_flags_are_documented() -> None:
    text = page("reference/cli.md")
    missing = [flag for flag in [*COMMON_FLAGS, "--help", "--version"] if flag not in text]
    assert not missing, f"common flags missing from docs/reference/cli.md: {missing}"


@pytest.mark.parametrize(("command", "flags"), commands(), ids=lambda value: str(value))
def test_every_command_and_its_flags_are_documented(command: str, flags: list[str]) -> None:
    if command == "bus":
        return
    mentioning = [text for text in pages().values()  # as code, a console line or a synopsis
                  if re.search(rf"(`|\$ |^){re.escape(command)}(?=[\s`])", text, re.M)]
    assert mentioning, f"`{command}` is named in no docs page (as code or a console line)"
    missing = [flag for flag in flags if flag not in COMMON_FLAGS
               and not any(re.search(rf"{re.escape(flag)}(?![\w-])", t) for t in mentioning)]
    assert not missing, f"flags of `{command}` missing from the pages that document it: {missing}"


# -- transport contracts -------------------------------------------------------------------

CONTRACTS = [transports.Transport, transports.CheckNote, transports.Serializer,
             transports.RpcTransport, transports.RpcConsumer, transports.MalformedRpc,
             transports.ResultTransport, transports.EventTransport, transports.EventConsumer,
             transports.EventDelivery, transports.GroupInfo, transports.ConsumerInfo,
             transports.SchemaTransport]
if hasattr(transports, "DeadLetter"):
    CONTRACTS.append(transports.DeadLetter)


def members(cls: type) -> list[str]:
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls)]
    else:
        names = [name for name, value in vars(cls).items()
                 if not name.startswith("_") and (inspect.isfunction(value)
                                                  or isinstance(value, classmethod | property)
                                                  or name.islower())]
        names += list(getattr(cls, "__annotations__", {}))
    return sorted({n for n in names if not n.startswith("_")})


def section(text: str, name: str) -> str:
    """The part of a page under the heading `name` (any level), up to the next heading of
    the same or a higher level."""
    match = re.search(rf"^(#+) `{re.escape(name)}`.*$", text, re.M)
    if match is None:
        match = re.search(rf"^(#+) .*`{re.escape(name)}`.*$", text, re.M)
    assert match is not None, f"no heading for `{name}` in docs/reference/transports.md"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


@pytest.mark.parametrize("cls", CONTRACTS, ids=lambda cls: cls.__name__)
def test_every_transport_contract_member_is_documented(cls: type) -> None:
    text = section(page("reference/transports.md"), cls.__name__)
    missing = [name for name in members(cls) if not as_code(name, text)]
    assert not missing, (f"members of {cls.__name__} missing from its section of "
                         f"docs/reference/transports.md: {missing}")


def test_the_transport_helpers_are_documented() -> None:
    text = page("reference/transports.md")
    missing = [name for name in ("decode_call", "return_path_problem")
               if not as_code(name, text)]
    assert not missing, f"missing from docs/reference/transports.md: {missing}"
