"""bus-hello: a small Bus plugin, written the way a third party would write one.

It shows the three kinds of hook a feature plugin usually needs:

- ``bus_plugin_config_schema``: its section of the config, ``plugins: {hello: {...}}``,
  validated by ``bus config check`` and whenever a bus is created;
- ``bus_worker_started`` / ``bus_worker_stopping`` (lifecycle): log the configured greeting
  when a worker starts, and how many calls it served when it stops;
- ``bus_after_rpc_execution`` (message flow): count every RPC the worker ran, per procedure,
  and optionally log each one with its duration.

The plugin is discovered through the entry point in ``pyproject.toml`` but does nothing until
the config enables it::

    plugins:
      hello:
        enabled: true
        greeting: "Good morning"   # optional, default "Hello from bus-hello"
        log_each_call: true         # optional, default false
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import weakref
from typing import TYPE_CHECKING, Any

from bus_core import hookimpl

if TYPE_CHECKING:
    from bus_core.client import BusClient
    from bus_core.messages import RpcMessage
    from bus_core.worker import Worker

__all__ = ["DEFAULT_GREETING", "PLUGIN_NAME", "HelloSettings", "calls_served", "settings"]

PLUGIN_NAME = "hello"
"""The entry-point name: the key of this plugin's section under `plugins:` in the config."""
DEFAULT_GREETING = "Hello from bus-hello"

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HelloSettings:
    """The `plugins.hello` section with this plugin's defaults filled in."""

    greeting: str = DEFAULT_GREETING
    log_each_call: bool = False


def settings(client: BusClient) -> HelloSettings:
    """Read this plugin's options from the client's config.

    The kernel validates the section and fills in our schema's defaults, under the name the
    plugin is registered as: ``hello`` when installed, but the module's name when it is
    passed in code (``bus_core.create(plugins=[bus_hello])``), where ``plugins.hello`` is
    then empty; so the defaults are applied here too."""
    section = client.config.plugin(PLUGIN_NAME)
    return HelloSettings(
        greeting=str(section.get("greeting", DEFAULT_GREETING)),
        log_each_call=bool(section.get("log_each_call", False)),
    )


@dataclasses.dataclass
class _ClientState:
    settings: HelloSettings
    calls: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


# One entry per bus client: the plugin module is shared by every client in the process, and a
# weak key lets a closed client's counts go away with it.
_states: weakref.WeakKeyDictionary[BusClient, _ClientState] = weakref.WeakKeyDictionary()


def _state(client: BusClient) -> _ClientState:
    found = _states.get(client)
    if found is None:
        found = _states[client] = _ClientState(settings(client))
    return found


def calls_served(client: BusClient) -> dict[str, int]:
    """How many times each RPC ("api.procedure") ran on this client's workers so far."""
    found = _states.get(client)
    return dict(found.calls) if found is not None else {}


# -- registration ---------------------------------------------------------------------------


@hookimpl
def bus_plugin_config_schema() -> dict[str, Any]:
    """Our config section. The kernel adds `enabled` and refuses keys not listed here."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "greeting": {
                "type": "string",
                "minLength": 1,
                "default": DEFAULT_GREETING,
                "description": "logged when a worker starts",
            },
            "log_each_call": {
                "type": "boolean",
                "default": False,
                "description": "log every RPC the worker runs, with its duration",
            },
        },
    }


# -- lifecycle ------------------------------------------------------------------------------


@hookimpl
def bus_worker_started(client: BusClient, worker: Worker) -> None:
    """Greet once the worker is consuming (after the user's on_start functions)."""
    state = _state(client)
    logger.info("%s (worker %s/%s, APIs: %s)", state.settings.greeting, client.service_name,
                client.process_name, ", ".join(worker.api_names) or "none")


@hookimpl
def bus_worker_stopping(client: BusClient, worker: Worker) -> None:
    """Report the tally once in-flight calls have drained."""
    calls = _state(client).calls
    detail = ", ".join(f"{name} x{count}" for name, count in sorted(calls.items()))
    logger.info("hello: this worker served %d call(s)%s", sum(calls.values()),
                f": {detail}" if detail else "")


# -- message flow ---------------------------------------------------------------------------


@hookimpl
def bus_after_rpc_execution(client: BusClient, message: RpcMessage,
                            error: BaseException | None, duration: float) -> None:
    """Count each executed call. Runs per message, so by default it only increments a
    counter; a log line per call is opt-in (`log_each_call`)."""
    state = _state(client)
    name = message.canonical_name
    state.calls[name] += 1
    if state.settings.log_each_call:
        outcome = f"failed with {type(error).__name__}" if error is not None else "ok"
        logger.info("hello: %s() call #%d %s in %.2f ms", name, state.calls[name], outcome,
                    duration * 1000)
