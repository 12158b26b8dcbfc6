"""Forms from JSON Schemas: one field per parameter, and the schema's verdict on a submit.

A parameter's schema becomes an input the browser can check (required, number bounds,
lengths, patterns, dates, enums as a select, booleans as a select, nested objects as
fieldsets); anything else (arrays, unions, maps) is a JSON text field. The page's script
collects the fields into one JSON object; the server validates it against the same schema
with jsonschema and answers with the schema's messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import referencing
import referencing.exceptions

MAX_DEPTH = 4  # nested objects drawn as fieldsets; deeper ones are JSON fields


@dataclass
class Field:
    """One input of a generated form."""

    path: str  # dotted, from the form's root
    label: str
    kind: str  # text | integer | number | boolean | enum | date | datetime | json | object
    required: bool
    description: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)  # enum values, as JSON text
    children: list[Field] = field(default_factory=list)
    default: str = ""
    hint: str = ""


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` (`#/$defs/...`) once; other refs stay unresolved."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        if isinstance(target, dict):
            return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`T | None` (anyOf with null) is drawn as T, left empty for null."""
    options = schema.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        other = next((o for o in options if o != {"type": "null"}), None)
        if isinstance(other, dict):
            return {**other, **{k: v for k, v in schema.items() if k != "anyOf"}}
    return schema


def fields_for(schema: dict[str, Any], root: dict[str, Any] | None = None, prefix: str = "",
               depth: int = 0) -> list[Field]:
    """The fields of an object schema (a parameters schema), in declaration order."""
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    listed = schema.get("required")
    required = {r for r in listed if isinstance(r, str)} if isinstance(listed, list) else set()
    properties = schema.get("properties")
    found = []
    for name, sub in (properties if isinstance(properties, dict) else {}).items():
        if isinstance(sub, dict):
            found.append(_field(f"{prefix}{name}", name, _nullable(_resolve(sub, root)), root,
                                name in required, depth))
    return sorted(found, key=lambda f: not f.required)  # required ones first


def _field(path: str, label: str, schema: dict[str, Any], root: dict[str, Any],
           required: bool, depth: int) -> Field:
    kind_of = schema.get("type")
    made = Field(path=path, label=label, kind="json", required=required,
                 description=str(schema.get("description") or ""))
    if "default" in schema:
        made.default = json.dumps(schema["default"])
    if "enum" in schema and isinstance(schema["enum"], list):
        made.kind = "enum"
        made.options = [json.dumps(value) for value in schema["enum"]]
    elif kind_of == "boolean":
        made.kind = "boolean"
    elif kind_of in ("integer", "number"):
        made.kind = kind_of
        for key, attribute in (("minimum", "min"), ("maximum", "max")):
            if isinstance(schema.get(key), (int, float)):
                made.attributes[attribute] = schema[key]
        made.attributes["step"] = 1 if kind_of == "integer" else "any"
    elif kind_of == "string":
        fmt = schema.get("format")
        made.kind = {"date": "date", "date-time": "datetime"}.get(fmt, "text")
        if made.kind == "text":
            for key, attribute in (("minLength", "minlength"), ("maxLength", "maxlength"),
                                   ("pattern", "pattern")):
                if key in schema:
                    made.attributes[attribute] = schema[key]
            if fmt:
                made.hint = f"format {fmt}"
    elif kind_of == "object" and schema.get("properties") and depth < MAX_DEPTH:
        made.kind = "object"
        made.children = fields_for(schema, root, f"{path}.", depth + 1)
    else:
        made.hint = _json_hint(schema)
    if made.default and made.kind in ("text", "date", "datetime"):
        try:
            value = json.loads(made.default)
            made.default = value if isinstance(value, str) else made.default
        except ValueError:
            pass
    return made


def _json_hint(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        inner = items.get("type") if isinstance(items, dict) else None
        return f"JSON array{f' of {inner}' if inner else ''}, e.g. []"
    if kind == "object":
        return "JSON object, e.g. {}"
    return "JSON value"


def _no_retrieval(uri: str) -> Any:
    """A `$ref` to anything outside the schema itself: never fetched (the schema comes from
    the shared schema, which any service writes; fetching would make the console's host
    request any URL, inside its network too)."""
    raise referencing.exceptions.NoSuchResource(ref=uri)


def validation_errors(schema: dict[str, Any], value: Any, limit: int = 20
                      ) -> list[dict[str, str]]:
    """The schema's complaints about `value`: [{"path", "message"}], best first."""
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)  # a schema from elsewhere may be malformed
        validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER,
                                    registry=referencing.Registry(retrieve=_no_retrieval))
        errors = sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.path)))
    except jsonschema.exceptions.SchemaError as exc:
        return [{"path": "", "message": f"the schema itself is invalid: {exc.message}"}]
    except referencing.exceptions.Unresolvable as exc:
        return [{"path": "", "message": f"the schema's $ref {str(exc.ref)[:200]!r} cannot be "
                                        "resolved here (only references inside the schema "
                                        "are followed)"}]
    return [{"path": ".".join(map(str, error.path)) or "(arguments)",
             "message": error.message[:500]} for error in errors[:limit]]
