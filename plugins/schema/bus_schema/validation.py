"""Validating values against schemas: a compiled validator on the hot path, jsonschema as
the reference for verdicts it cannot give and for every error message."""

from __future__ import annotations

import logging
import re
from typing import Any

import fastjsonschema
import jsonschema
import referencing
import referencing.exceptions

from bus_core.errors import InvalidMessage

logger = logging.getLogger("bus.schema")
SHOWN_VALUE = 60


class SchemaValidationError(InvalidMessage):
    """A value does not match its schema. Says where (API, RPC or event, parameter), the
    bad value (shortened) and what was expected."""

    def __init__(self, where: str, path: str, value: Any, expected: str) -> None:
        self.where = where
        self.path = path
        self.value = value
        self.expected = expected
        location = f" {path}" if path else ""
        super().__init__(f"{where}{location}: {shorten(value)} does not match the schema: "
                         f"{expected}")


def shorten(value: Any, limit: int = SHOWN_VALUE) -> str:
    """repr(value), cut to `limit` characters."""
    return _cut(repr(value), limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _expected(error: jsonschema.ValidationError) -> str:
    """What the schema wanted, in jsonschema's words but without the whole bad value (its
    messages quote it in full: a huge value must not end up in errors and logs)."""
    message = error.message.replace(repr(error.instance), shorten(error.instance))
    return _cut(message, 4 * SHOWN_VALUE)


def _never_fetch(uri: str) -> Any:
    """A schema on the bus is written by any service: a `$ref` to anything outside it (a
    URL, a file) is never fetched, or a schema could make every validating service request
    any address, its own network included."""
    raise referencing.exceptions.NoSuchResource(ref=uri)


_LOCAL_ONLY = referencing.Registry(retrieve=_never_fetch)  # type: ignore[call-arg]
_NO_HANDLERS = {scheme: _never_fetch for scheme in ("http", "https", "ftp", "file", "")}


def _outside_refs(schema: Any) -> list[str]:
    """The `$ref`s of `schema` that point outside it (anything but `#...`)."""
    found: list[str] = []
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                found.append(ref)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


class CompiledSchema:
    """One schema, ready to check values quickly and explain failures well."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.reference = jsonschema.Draft7Validator(schema, registry=_LOCAL_ONLY)
        # A reference outside the schema is never fetched: values are refused, saying why.
        self.outside = _outside_refs(schema)
        if self.outside:
            self._fast = None
            return
        try:
            # Formats and defaults are off: jsonschema checks no format by default, and a
            # validator must not change the value it checks.
            self._fast: Any = fastjsonschema.compile(schema, use_default=False,
                                                     use_formats=False,
                                                     handlers=_NO_HANDLERS)
        except Exception as exc:  # a schema fastjsonschema cannot compile: reference only
            logger.debug("no compiled validator for %s: %s", schema.get("title"), exc)
            self._fast = None

    def is_valid(self, value: Any) -> bool:
        if self.outside:
            return False
        if self._fast is not None:
            try:
                self._fast(value)
                return True
            except fastjsonschema.JsonSchemaValueException:
                pass  # confirm (and explain) with the reference validator
        return self.reference.is_valid(value)

    def check(self, value: Any, where: str, parameters: bool) -> None:
        """Raise SchemaValidationError unless `value` is valid."""
        if self.is_valid(value):
            return
        if self.outside:
            raise SchemaValidationError(
                where, "", value, f"the schema refers to {_cut(self.outside[0], 80)!r} "
                "outside itself, which Bus never fetches (a shared schema is written by any "
                "service)")
        error = jsonschema.exceptions.best_match(self.reference.iter_errors(value))
        if error is None:  # the reference says valid after all: it decides
            return
        path = list(error.absolute_path)
        names = _quoted(error.message)
        if parameters and not path and error.validator == "required" and names:
            raise SchemaValidationError(where, f"parameter {names[0]!r}", _MISSING,
                                        "a required parameter is missing")
        if parameters and not path and error.validator == "additionalProperties" and names:
            raise SchemaValidationError(where, f"parameter {names[0]!r}",
                                        error.instance.get(names[0]),
                                        "no such parameter in the schema")
        if parameters:
            label = (f"parameter {path[0]!r}" + "".join(f"[{p!r}]" for p in path[1:])
                     if path else "")
        else:
            label = "result" + "".join(f"[{p!r}]" for p in path)
        raise SchemaValidationError(where, label, error.instance, _expected(error))


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


_MISSING = _Missing()
_QUOTED = re.compile(r"'([^']*)'")


def _quoted(message: str) -> list[str]:
    return _QUOTED.findall(message)
