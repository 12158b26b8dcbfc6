"""bus-web: the operations console of a Bus (`bus web`)."""

from bus_web.app import create_app
from bus_web.security import Settings

__all__ = ["Settings", "create_app"]
