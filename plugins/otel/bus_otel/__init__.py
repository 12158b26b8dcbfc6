"""OpenTelemetry traces for Bus (the `otel` plugin); see `bus_otel.plugin`."""

from bus_otel.plugin import TRACER_NAME, destination_of

__all__ = ["TRACER_NAME", "destination_of"]
