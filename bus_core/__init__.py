"""Bus: an RPC and event bus for Python services, built on pluggy plugins.

    import bus_core

    bus = bus_core.create()              # config from $BUS_CONFIG, or every default
    bus.client.register_api(AuthApi())
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bus_core.api import Api, Event, Parameter, rpc
from bus_core.client import Bus, BusClient
from bus_core.config import Config, load_config
from bus_core.errors import (
    BusError,
    ConfigError,
    InvalidApi,
    InvalidArguments,
    InvalidMessage,
    MalformedMessage,
    MessageTooLarge,
    PluginError,
    Refused,
    RemoteError,
    RpcTimeout,
    RpcWorkerLost,
    TransportError,
    TransportNotFound,
    TransportUnavailable,
    UnknownApi,
    UnknownEvent,
    UnknownRpc,
    WireError,
)
from bus_core.messages import EventMessage, ResultMessage, RpcMessage
from bus_core.plugins import PluginManager, hookimpl

__version__ = "0.1.0"

__all__ = [
    "Api", "Bus", "BusClient", "BusError", "Config", "ConfigError", "Event", "EventMessage",
    "InvalidApi", "InvalidArguments", "InvalidMessage", "MalformedMessage", "MessageTooLarge",
    "Parameter", "PluginError", "PluginManager", "Refused", "RemoteError", "ResultMessage",
    "RpcMessage", "RpcTimeout",
    "RpcWorkerLost", "TransportError", "TransportNotFound", "TransportUnavailable",
    "UnknownApi", "UnknownEvent", "UnknownRpc",
    "WireError", "__version__", "create", "hookimpl", "rpc",
]


def create(config: str | os.PathLike[str] | Mapping[str, Any] | None = None, *,
           plugins: Iterable[object] = (), service_name: str | None = None,
           process_name: str | None = None, load_entry_points: bool = True) -> Bus:
    """Make a bus client with its own plugins and config.

    :param config: a path or URL of a YAML/JSON document, a mapping, or None for
        ``$BUS_CONFIG`` (or all defaults: the in-memory transports).
    :param plugins: plugin modules or objects to register and enable, besides those
        discovered through the ``bus`` entry-point group.
    :param service_name: overrides ``bus.service_name``. The default, when neither is set,
        is derived from where ``create()`` is called (the top package of the calling module,
        or its folder's name), so it stays the same across restarts.
    :param process_name: overrides ``bus.process_name`` (default ``{hostname}-{pid}``).
    """
    manager = PluginManager(plugins, load_entry_points=load_entry_points)
    loaded = load_config(config, manager, default_service_name=_guess_service_name())
    for key, value in (("service_name", service_name), ("process_name", process_name)):
        if value is not None:
            if not isinstance(value, str) or not value or any(c.isspace() for c in value):
                raise InvalidArguments(f"create({key}={value!r}): use a non-empty name "
                                       "without spaces")
            loaded.bus[key] = value
    manager.apply_config(loaded.plugins, loaded.selected_transports(),
                         loaded.bus["serializer"])
    return Bus(BusClient(loaded, manager))


def _guess_service_name() -> str:
    """The name of the folder holding the file that calls create(): the same on every
    restart however the module is imported (`bus.py` or `pkg.bus`)."""
    frame = inspect.currentframe()
    caller = frame.f_back.f_back if frame and frame.f_back else None  # create()'s caller
    filename = caller.f_globals.get("__file__") if caller else None
    folder = Path(filename).resolve().parent if filename else Path.cwd()
    return _safe_name(folder.name)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "service"
