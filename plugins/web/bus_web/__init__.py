"""bus-web: the operations console of a Bus (`bus web`)."""

from typing import Any

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    """Starlette and Jinja2 load when the console is built, not when `bus` loads the plugin
    to list its commands."""
    if name == "create_app":
        from bus_web.app import create_app

        return create_app
    if name == "Settings":
        from bus_web.security import Settings

        return Settings
    raise AttributeError(f"module 'bus_web' has no attribute {name!r}")
