"""bus-schema: JSON Schema for every API, from its type hints; shared between services
through the schema transport (Lightbus 1.x format); validated on the way out and in."""

from typing import Any

from bus_schema.generate import api_schema, type_schema

__all__ = ["CompiledSchema", "SchemaValidationError", "api_schema", "type_schema"]


def __getattr__(name: str) -> Any:
    """Validation (jsonschema) loads when first used, not when `bus` loads the plugin."""
    if name in ("CompiledSchema", "SchemaValidationError"):
        from bus_schema import validation

        return getattr(validation, name)
    raise AttributeError(f"module 'bus_schema' has no attribute {name!r}")
