"""The `web` plugin: registers `bus web` and the `plugins.web` config section."""

from __future__ import annotations

from typing import Any

from bus_core import hookimpl
from bus_web.commands import register_commands

PLUGIN_NAME = "web"


@hookimpl
def bus_register_commands(register: Any) -> None:
    register_commands(register)


@hookimpl
def bus_plugin_config_schema() -> dict[str, Any]:
    """`plugins.web`: defaults for `bus web` (its options win)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enabled": {"type": "boolean"},
            "host": {"type": "string", "minLength": 1,
                     "description": "address to listen on (default 127.0.0.1)"},
            "port": {"type": "integer", "minimum": 0, "maximum": 65535,
                     "description": "port (0: a free one)"},
            "allow_writes": {
                "type": "boolean",
                "description": "allow calls, fires, replays and purges (default: read-only)"},
            "users": {
                "type": "object",
                "description": "user name -> access token (use ${ENV_VAR}); without users, "
                               "`bus web` makes a token and prints it",
                "additionalProperties": {"type": "string", "minLength": 16,
                                         "writeOnly": True},  # never shown in errors
            },
        },
    }
