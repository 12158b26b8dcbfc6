"""bus-schema: JSON Schema for every API, from its type hints; shared between services
through the schema transport (Lightbus 1.x format); validated on the way out and in."""

from bus_schema.generate import api_schema, type_schema
from bus_schema.validation import CompiledSchema, SchemaValidationError

__all__ = ["CompiledSchema", "SchemaValidationError", "api_schema", "type_schema"]
