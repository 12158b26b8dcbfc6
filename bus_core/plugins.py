"""The plugin manager: discovery, enablement, registries, and the typed hook facade.

Every plugin, built-in or third-party, arrives the same way: an entry point in the `bus`
group (or a module/object passed to `bus_core.create(plugins=[...])`). Discovery is not
enablement: registration hooks run for every discovered plugin; lifecycle and message-flow
hooks only for enabled ones (see `bus_core.hookspecs`).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import operator
import os
import re
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from bus_core import hookspecs
from bus_core.errors import PluginError, TransportNotFound
from bus_core.runtime import settle
from bus_core.transports import TRANSPORT_KINDS, Serializer

if TYPE_CHECKING:
    from bus_core.api import ApiDefinition
    from bus_core.client import BusClient
    from bus_core.listeners import Listener
    from bus_core.messages import EventMessage, RpcMessage
    from bus_core.transports import EventDelivery
    from bus_core.worker import Worker

ENTRY_POINT_GROUP = "bus"
hookimpl = pluggy.HookimplMarker("bus")
logger = logging.getLogger("bus.plugins")
_WARNED_UNKNOWN_DISABLED: set[str] = set()


@dataclasses.dataclass
class PluginInfo:
    """What `bus plugins list` shows about one plugin."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    source: str = "entry point"  # or "code"
    status: str = "loaded"  # loaded | blocked | failed
    error: str | None = None
    enabled: bool = False
    builtin: bool = False
    hooks: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class TransportEntry:
    kind: str
    name: str
    factory: Callable[..., Any]
    options_schema: Mapping[str, Any] | None
    plugin_name: str


@dataclasses.dataclass(frozen=True)
class CommandEntry:
    name: str
    help: str
    setup: Callable[[Any], None]
    run: Callable[[Any], int | None]
    plugin_name: str


# The distribution that provides each plugin (and transport) name Bus's own packages
# register, for "not installed" errors: what to pip install.
KNOWN_DISTRIBUTIONS = {
    "json": "bus-core", "config_sources": "bus-core", "memory": "bus-memory",
    "redis": "bus-redis", "schema": "bus-schema", "state": "bus-state",
    "metrics": "bus-metrics", "otel": "bus-otel", "web": "bus-web", "outbox": "bus-outbox",
}


def install_hint(name: str) -> str:
    """What to install to get the plugin or transport called `name`."""
    distribution = KNOWN_DISTRIBUTIONS.get(name)
    if distribution:
        return f"pip install {distribution}"
    return ("install the distribution that provides it (Bus plugins are published as "
            "bus-<feature>)")


def disabled_from_env() -> set[str]:
    raw = os.environ.get("BUS_DISABLED_PLUGINS", "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def _truthy_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class PluginManager:
    """One per bus client (and one for the CLI): plugins, registries and hooks."""

    def __init__(self, plugins: Iterable[object] = (), *, load_entry_points: bool = True,
                 disabled: set[str] | None = None, trace: bool | None = None) -> None:
        self.pm = pluggy.PluginManager("bus")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.disabled = disabled_from_env() if disabled is None else set(disabled)
        self.transports: dict[tuple[str, str], TransportEntry] = {}
        self.serializers: dict[str, tuple[Callable[[], Serializer], str]] = {}
        self.config_sources: dict[str, tuple[Callable[[str], Any], str]] = {}
        self.commands: dict[str, CommandEntry] = {}
        self.config_schemas: dict[str, Mapping[str, Any] | None] = {}
        self._forced_enabled: set[str] = set()
        self.enabled: set[str] = set()
        self.hooks = HookFacade(self)
        if trace if trace is not None else _truthy_env("BUS_TRACE_PLUGINS"):
            self.enable_tracing()
        if load_entry_points:
            self.load_entry_points()
        for plugin in plugins:
            self.register(plugin, enabled=True)

    # -- discovery ---------------------------------------------------------------------

    def load_entry_points(self) -> None:
        for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP),
                                  key=lambda ep: ep.name):
            dist = getattr(entry_point, "dist", None)
            info = PluginInfo(
                name=entry_point.name,
                module=entry_point.value,
                distribution=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
                builtin=bool(dist and dist.metadata["Name"] == "bus-core"),
            )
            if entry_point.name in self.infos:
                continue  # the same distribution seen twice on sys.path
            self.infos[info.name] = info
            if info.name in self.disabled:
                info.status = "blocked"
                continue
            try:
                plugin = entry_point.load()
            except Exception as exc:
                info.status, info.error = "failed", import_failure(exc)
                warnings.warn(
                    f"Bus plugin {info.name!r} from distribution "
                    f"{info.distribution or '?'} failed to import and is skipped: {info.error}",
                    RuntimeWarning, stacklevel=2,
                )
                continue
            try:
                self._register(plugin, info)
            except PluginError as exc:
                info.status, info.error = "failed", str(exc)
                warnings.warn(f"Bus plugin {info.name!r} is skipped: {exc}", RuntimeWarning,
                              stacklevel=2)
        unknown = sorted(self.disabled - set(self.infos) - _WARNED_UNKNOWN_DISABLED)
        if unknown:  # most likely a typo, which would leave the plugin running
            _WARNED_UNKNOWN_DISABLED.update(unknown)  # once per process, not per manager
            close = {name: difflib.get_close_matches(name, list(self.infos), n=1)
                     for name in unknown}
            named = ", ".join(f"{name!r}" + (f" (did you mean {close[name][0]!r}?)"
                                              if close[name] else "") for name in unknown)
            logger.warning("BUS_DISABLED_PLUGINS names no installed plugin: %s; installed: %s",
                           named, ", ".join(sorted(self.infos)))

    def register(self, plugin: object, name: str | None = None, *, enabled: bool = True) -> str:
        """Register a plugin given in code (a module, class or instance with hook impls)."""
        if self.pm.is_registered(plugin):  # e.g. an installed plugin passed again in code
            name = self.pm.get_name(plugin) or ""
            self._forced_enabled.add(name)
            self.enabled.add(name)
            self.infos[name].enabled = True
            self.hooks.refresh()
            return name
        name = name or getattr(plugin, "bus_plugin_name", None) or _plugin_name(plugin)
        if name in self.disabled:
            self.infos[name] = PluginInfo(name=name, module=_module_name(plugin), source="code",
                                          status="blocked")
            return name
        info = PluginInfo(name=name, module=_module_name(plugin), source="code")
        self.infos[name] = info
        self._register(plugin, info)
        if enabled:
            self._forced_enabled.add(name)
            self.enabled.add(name)
            info.enabled = True
        self.hooks.refresh()
        return name

    def unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.infos.pop(name, None)
        self.enabled.discard(name)
        self._forced_enabled.discard(name)
        self._forget_registrations(name)
        self.hooks.refresh()

    def _forget_registrations(self, name: str) -> None:
        for registry in (self.transports, self.serializers, self.config_sources, self.commands):
            for key in [k for k, v in registry.items() if _owner(v) == name]:
                del registry[key]
        self.config_schemas.pop(name, None)

    def _register(self, plugin: object, info: PluginInfo) -> None:
        try:
            self.pm.register(plugin, name=info.name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise PluginError(f"plugin {info.name!r} ({info.module}): {exc}"
                              f"{_name_hint(str(exc))}{_spec_hint(str(exc))}") from None
        except Exception as exc:  # check_pending's HookCallError and friends
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise PluginError(
                f"plugin {info.name!r} ({info.module}) implements a hook that does not exist: "
                f"{exc}.{_name_hint(str(exc))} Hook names are listed in docs/reference/hooks.md"
            ) from None
        info.hooks = sorted(
            caller.name for caller in self.pm.get_hookcallers(plugin) or ()
        )
        unmarked = _unmarked_hook_functions(plugin)
        if unmarked:
            warnings.warn(
                f"Bus plugin {info.name!r} ({info.module}) has function(s) named like hooks "
                f"without @hookimpl, which never run: {', '.join(unmarked)}; decorate them "
                f"with @bus_core.hookimpl (or rename them if they are not hooks)",
                RuntimeWarning, stacklevel=3)
        try:
            self._collect_registrations(info.name, plugin)
        except Exception as exc:
            self.pm.unregister(plugin)
            self._forget_registrations(info.name)
            raise PluginError(
                f"plugin {info.name!r} ({info.module}) failed while registering: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _collect_registrations(self, plugin_name: str, plugin: object) -> None:
        def call(hook_name: str, register: Callable[..., None]) -> None:
            impls = [i for i in getattr(self.pm.hook, hook_name).get_hookimpls()
                     if i.plugin is plugin]
            for impl in impls:
                impl.function(register)

        def register_transport(kind: str, name: str, factory: Callable[..., Any],
                               options_schema: Mapping[str, Any] | None = None) -> None:
            if kind not in TRANSPORT_KINDS:
                raise PluginError(f"plugin {plugin_name!r} registered a transport of unknown "
                                  f"kind {kind!r}; kinds are {sorted(TRANSPORT_KINDS)}")
            self.transports[(kind, name)] = TransportEntry(kind, name, factory, options_schema,
                                                           plugin_name)

        def register_serializer(name: str, factory: Callable[[], Serializer]) -> None:
            self.serializers[name] = (factory, plugin_name)

        def register_source(schemes: str | Iterable[str], loader: Callable[[str], Any]) -> None:
            for scheme in [schemes] if isinstance(schemes, str) else schemes:
                self.config_sources[scheme] = (loader, plugin_name)

        def register_command(name: str, help: str, setup: Callable[[Any], None],
                             run: Callable[[Any], int | None]) -> None:
            self.commands[name] = CommandEntry(name, help, setup, run, plugin_name)

        call("bus_register_transports", register_transport)
        call("bus_register_serializers", register_serializer)
        call("bus_register_config_sources", register_source)
        call("bus_register_commands", register_command)
        for impl in self.pm.hook.bus_plugin_config_schema.get_hookimpls():
            if impl.plugin is plugin:
                self.config_schemas[plugin_name] = impl.function()

    # -- enablement --------------------------------------------------------------------

    def apply_config(self, plugin_sections: Mapping[str, Mapping[str, Any]],
                     selected_transports: Iterable[tuple[str, str]], serializer: str) -> None:
        """Decide which plugins are enabled, from the config's `plugins` section and from
        which transports and serializer the config selects."""
        enabled = set(self._forced_enabled)
        for kind_name in selected_transports:
            entry = self.transports.get(kind_name)
            if entry:
                enabled.add(entry.plugin_name)
        if serializer in self.serializers:
            enabled.add(self.serializers[serializer][1])
        for name, section in plugin_sections.items():
            flag = section.get("enabled") if isinstance(section, Mapping) else None
            if flag is True:
                if name not in self.infos:
                    raise PluginError(
                        f"plugins.{name}.enabled is true but no plugin named {name!r} is "
                        f"installed: {install_hint(name)} (installed: "
                        f"{', '.join(sorted(self.infos)) or 'none'})"
                    )
                info = self.infos[name]
                if info.status == "failed":  # a plugin the config relies on is missing
                    raise PluginError(f"plugins.{name}.enabled is true, but plugin {name!r} "
                                      f"({info.distribution or info.module}) failed to load: "
                                      f"{info.error}")
                if info.status == "blocked":  # a deliberate off switch
                    logger.warning("plugin %r is enabled in the config but blocked by "
                                   "BUS_DISABLED_PLUGINS; its section is not checked and it "
                                   "does not run", name)
                    continue
                enabled.add(name)
            elif flag is False:
                enabled.discard(name)
        # Config sources and subcommands work before (or without) any config: a plugin that
        # only provides those is in use as soon as it is installed. One that also has
        # lifecycle or message-flow hooks still waits for `enabled: true`.
        providers = {owner for _, owner in self.config_sources.values()}
        providers.update(entry.plugin_name for entry in self.commands.values())
        enabled.update(name for name in providers
                       if not set(self.infos[name].hooks) - hookspecs.REGISTRATION_HOOKS)
        for name, section in plugin_sections.items():
            if isinstance(section, Mapping) and section.get("enabled") is False:
                enabled.discard(name)
        self.enabled = enabled
        for name, info in self.infos.items():
            info.enabled = name in enabled
        self.hooks.refresh()

    # -- registries --------------------------------------------------------------------

    def transport(self, kind: str, name: str) -> TransportEntry:
        entry = self.transports.get((kind, name))
        if entry is None:
            known = sorted(n for k, n in self.transports if k == kind)
            raise TransportNotFound(self.missing("transport", name, known, kind=kind))
        return entry

    def serializer(self, name: str) -> Serializer:
        if name not in self.serializers:
            raise TransportNotFound(self.missing("serializer", name, list(self.serializers)))
        return self.serializers[name][0]()

    def missing(self, what: str, name: str, installed: Iterable[str], *, kind: str = "") -> str:
        """Why no `what` (transport, serializer) called `name` is available, and the fix:
        blocked by BUS_DISABLED_PLUGINS, failed to load, or not installed (naming the
        distribution to install)."""
        label = f"{kind} {what}" if kind else what
        known = ", ".join(sorted(installed)) or "none"
        info = self.infos.get(name)
        if info is not None and info.status == "blocked":
            return (f"the {label} {name!r} is unavailable: its plugin {name!r} is blocked by "
                    f"BUS_DISABLED_PLUGINS (installed: {known})")
        if info is not None and info.status == "failed":
            return (f"the {label} {name!r} is unavailable: its plugin {name!r} failed to "
                    f"load: {info.error}")
        close = difflib.get_close_matches(name, sorted(installed), n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        return (f"no {label} named {name!r} is installed: {guess}{install_hint(name)} "
                f"(installed: {known})")

    def config_source(self, scheme: str) -> Callable[[str], Any] | None:
        found = self.config_sources.get(scheme)
        return found[0] if found else None

    tracing = False

    def enable_tracing(self) -> None:
        def before(hook_name: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
            logger.info("hook %s -> %s (%s)", hook_name,
                        ", ".join(i.plugin_name for i in impls), ", ".join(sorted(kwargs)))

        def after(outcome: Any, hook_name: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
            if outcome.exception is not None:
                logger.info("hook %s raised %r", hook_name, outcome.exception)

        self.pm.add_hookcall_monitoring(before, after)
        self.tracing = True  # every call then goes through pluggy, which the monitor sees
        self.hooks.refresh()


_HOOK_NAMES = sorted(n for n in dir(hookspecs) if n.startswith("bus_"))


def _name_hint(error: str) -> str:
    """" Did you mean bus_x?" for a misspelled hook named in `error`."""
    match = re.search(r"unknown hook '(bus_\w+)'|hook that does not exist.*'(bus_\w+)'", error)
    name = (match.group(1) or match.group(2)) if match else None
    close = difflib.get_close_matches(name, _HOOK_NAMES, n=1) if name else []
    return f" Did you mean {close[0]}?" if close else ""


def _spec_hint(error: str) -> str:
    """The arguments a hook offers, for an implementation that asks for others."""
    match = re.search(r"hook '(bus_\w+)'", error)
    spec = getattr(hookspecs, match.group(1), None) if match else None
    if spec is None:
        return ""
    names = ", ".join(inspect.signature(spec).parameters)
    return f"\n{match.group(1)} offers: {names} (take any of them, by these names)"


def import_failure(exc: BaseException) -> str:
    """`exc` from importing a plugin, with the file and line where it was raised (for a
    SyntaxError, where the bad code is): the place to look, without a traceback."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text} (at {exc.filename}:{exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    # The innermost frame outside the import machinery is the plugin's own code.
    ours = [f for f in frames if "importlib" not in f.filename
            and not f.filename.startswith("<frozen")]
    where = (ours or frames)[-1] if frames else None
    return f"{text} (at {where.filename}:{where.lineno})" if where else text


def _unmarked_hook_functions(plugin: object) -> list[str]:
    """Functions of `plugin` named `bus_*` that do not carry @hookimpl: most likely a hook
    whose decorator was forgotten, which pluggy silently ignores."""
    marker = f"{ENTRY_POINT_GROUP}_impl"
    names = []
    for name in dir(plugin):
        if not name.startswith("bus_"):
            continue
        value = getattr(plugin, name, None)
        if callable(value) and (inspect.isfunction(value) or inspect.ismethod(value)) \
                and not hasattr(value, marker):
            names.append(name)
    return names


def _owner(value: Any) -> str:
    return value.plugin_name if hasattr(value, "plugin_name") else value[1]


def _module_name(plugin: object) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__module__


def _plugin_name(plugin: object) -> str:
    if inspect.ismodule(plugin):
        return plugin.__name__
    return getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"


def _close_unstarted(results: list[Any]) -> None:
    for result in results:
        if inspect.iscoroutine(result):
            result.close()


async def _settle(results: list[Any]) -> None:
    """Await each implementation's coroutine in order; when one raises, the later ones are
    closed unstarted (the first error stops a "before" hook, as in pluggy)."""
    for index, result in enumerate(results):
        if not inspect.isawaitable(result):
            continue
        try:
            await result
        except BaseException:
            _close_unstarted(results[index + 1:])
            raise


def _arguments_getter(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A C-level picker of the arguments an implementation names, as a tuple."""
    if not names:
        return lambda kwargs: ()
    if len(names) == 1:
        name = names[0]
        return lambda kwargs: (kwargs[name],)
    return operator.itemgetter(*names)


def _direct(impls: list[Any]) -> Callable[..., list[Any]]:
    """Call plain hook implementations as pluggy would (last registered first, each with the
    arguments it names, results that are not None collected, the first exception raised),
    without pluggy's per-call machinery: these run for every message."""
    plan = [(impl.function, _arguments_getter(tuple(impl.argnames)))
            for impl in reversed(impls)]

    def call(**kwargs: Any) -> list[Any]:
        results = []
        try:
            for function, arguments in plan:
                result = function(*arguments(kwargs))
                if result is not None:
                    results.append(result)
        except BaseException:
            _close_unstarted(results)  # the coroutines of the implementations before it
            raise
        return results

    return call


class _Done:
    """An awaitable that is already finished: what a hook nobody implements returns."""

    __slots__ = ()

    def __await__(self) -> Any:
        return iter(())


_DONE = _Done()


class HookFacade:
    """Typed calls into the hooks, for kernel code. Hooks that no enabled plugin implements
    are skipped before any pluggy machinery runs (a dict lookup per message)."""

    GATED = tuple(sorted(
        name for name in dir(hookspecs)
        if name.startswith("bus_") and name not in hookspecs.REGISTRATION_HOOKS
    ))

    def __init__(self, manager: PluginManager) -> None:
        self._manager = manager
        self._callers: dict[str, Callable[..., list[Any]]] = {}
        self._impls: dict[str, list[Any]] = {}  # enabled implementations, by hook

    def refresh(self) -> None:
        """Recompute which gated hooks have enabled implementations."""
        manager = self._manager
        blocked = [
            plugin for name, plugin in manager.pm.list_name_plugin()
            if name not in manager.enabled
        ]
        callers: dict[str, Callable[..., list[Any]]] = {}
        enabled_impls: dict[str, list[Any]] = {}
        for hook_name in self.GATED:
            caller = manager.pm.subset_hook_caller(hook_name, remove_plugins=blocked)
            impls = caller.get_hookimpls()
            if not impls:
                continue
            enabled_impls[hook_name] = impls
            wrapped = any(getattr(i, "hookwrapper", False) or getattr(i, "wrapper", False)
                          for i in impls)
            first_result = caller.spec is not None and caller.spec.opts.get("firstresult")
            callers[hook_name] = (caller if (wrapped or manager.tracing or first_result)
                                  else _direct(impls))
        self._callers = callers
        self._impls = enabled_impls

    def implemented(self, hook_name: str) -> bool:
        return hook_name in self._callers

    def _call(self, hook_name: str, **kwargs: Any) -> Awaitable[None]:
        """Run the implementations now; only async ones leave something to await. An
        exception propagates to the caller (a "before" hook refusing a message)."""
        caller = self._callers.get(hook_name)
        if caller is None:
            return _DONE  # no coroutine to build, schedule or await
        results = caller(**kwargs)
        if not results or not any(inspect.isawaitable(r) for r in results):
            return _DONE
        return _settle(results)

    def _observe(self, hook_name: str, **kwargs: Any) -> Awaitable[None]:
        """As `_call`, but an exception is logged and swallowed (an "after" hook)."""
        caller = self._callers.get(hook_name)
        if caller is None:
            return _DONE
        try:
            results = caller(**kwargs)
        except Exception:
            logger.exception("a %s hook implementation raised; carrying on", hook_name)
            return _DONE
        if not results or not any(inspect.isawaitable(r) for r in results):
            return _DONE
        return self._observe_with(hook_name, results)

    @staticmethod
    async def _observe_with(hook_name: str, results: list[Any]) -> None:
        """Each observer runs whatever the others do: one failing is logged, not allowed to
        keep the rest (metrics, state, ...) from seeing the message."""
        for result in results:
            if not inspect.isawaitable(result):
                continue
            try:
                await result
            except Exception:
                logger.exception("a %s hook implementation raised; carrying on", hook_name)

    # lifecycle
    def client_started(self, client: BusClient) -> Awaitable[None]:
        return self._call("bus_client_started", client=client)

    def client_stopping(self, client: BusClient) -> Awaitable[None]:
        return self._observe("bus_client_stopping", client=client)

    def worker_started(self, client: BusClient, worker: Worker) -> Awaitable[None]:
        return self._call("bus_worker_started", client=client, worker=worker)

    def worker_stopping(self, client: BusClient, worker: Worker) -> Awaitable[None]:
        return self._observe("bus_worker_stopping", client=client, worker=worker)

    # message flow
    def before_rpc_call(self, client: BusClient, message: RpcMessage) -> Awaitable[None]:
        return self._call("bus_before_rpc_call", client=client, message=message)

    def after_rpc_call(self, client: BusClient, message: RpcMessage, result: Any,
                       error: BaseException | None, duration: float) -> Awaitable[None]:
        return self._observe("bus_after_rpc_call", client=client, message=message,
                             result=result, error=error, duration=duration)

    def before_rpc_execution(self, client: BusClient, message: RpcMessage) -> Awaitable[None]:
        return self._call("bus_before_rpc_execution", client=client, message=message)

    def after_rpc_execution(self, client: BusClient, message: RpcMessage, result: Any,
                            error: BaseException | None, duration: float) -> Awaitable[None]:
        return self._observe("bus_after_rpc_execution", client=client, message=message,
                             result=result, error=error, duration=duration)

    def before_rpc_result_sent(self, client: BusClient, message: RpcMessage,
                               result: Any) -> Awaitable[None]:
        return self._call("bus_before_rpc_result_sent", client=client, message=message,
                          result=result)

    def on_rpc_result_received(self, client: BusClient, message: RpcMessage,
                               result: Any) -> Awaitable[None]:
        return self._call("bus_on_rpc_result_received", client=client, message=message,
                          result=result)

    def before_event_fire(self, client: BusClient, message: EventMessage) -> Awaitable[None]:
        return self._call("bus_before_event_fire", client=client, message=message)

    def after_event_fire(self, client: BusClient, message: EventMessage,
                         error: BaseException | None, duration: float) -> Awaitable[None]:
        return self._observe("bus_after_event_fire", client=client, message=message,
                             error=error, duration=duration)

    def after_events_received(self, client: BusClient, listener_name: str,
                              deliveries: Sequence[EventDelivery]) -> Awaitable[None]:
        return self._observe("bus_after_events_received", client=client,
                             listener_name=listener_name, deliveries=deliveries)

    def before_event_handling(self, client: BusClient, message: EventMessage,
                              listener_name: str, delivery_count: int = 0) -> Awaitable[None]:
        return self._call("bus_before_event_handling", client=client, message=message,
                          listener_name=listener_name, delivery_count=delivery_count)

    def after_event_handling(self, client: BusClient, message: EventMessage, listener_name: str,
                             error: BaseException | None, duration: float) -> Awaitable[None]:
        return self._observe("bus_after_event_handling", client=client, message=message,
                             listener_name=listener_name, error=error, duration=duration)

    def on_handler_error(self, client: BusClient, message: RpcMessage | EventMessage,
                         listener_name: str | None, error: BaseException,
                         action: str) -> Awaitable[None]:
        return self._observe("bus_on_handler_error", client=client, message=message,
                             listener_name=listener_name, error=error, action=action)

    def on_undeclared_parameters(self, client: BusClient, message: EventMessage,
                                 listener_name: str,
                                 parameter_names: list[str]) -> Awaitable[None]:
        return self._observe("bus_on_undeclared_parameters", client=client, message=message,
                             listener_name=listener_name, parameter_names=parameter_names)

    def take_event(self, client: BusClient, message: EventMessage) -> Any:
        """True when a plugin took the event to send it later (an outbox), an awaitable of
        that from an async implementation, or None: the kernel sends it."""
        caller = self._callers.get("bus_take_event")
        return None if caller is None else caller(client=client, message=message)

    def wrap_listener_handler(self, client: BusClient, listener: Listener) -> bool:
        """Let each implementation wrap `listener.handler` in turn; True if any did."""
        caller = self._callers.get("bus_wrap_listener_handler")
        if caller is None:
            return False
        wrapped = False
        for impl in reversed(self._impls["bus_wrap_listener_handler"]):
            arguments = {"client": client, "listener": listener}
            handler = impl.function(*(arguments[name] for name in impl.argnames))
            if handler is not None:
                if not callable(handler):
                    raise TypeError(f"bus_wrap_listener_handler of plugin {impl.plugin_name!r} "
                                    f"returned {handler!r}, not a callable")
                listener.handler, wrapped = handler, True
        return wrapped

    # introspection
    async def describe_apis(self, client: BusClient) -> dict[str, ApiDefinition]:
        """What the enabled plugins know of APIs (later-registered plugins answer first;
        the first answer for an API name wins)."""
        caller = self._callers.get("bus_describe_apis")
        described: dict[str, ApiDefinition] = {}
        for answer in caller(client=client) if caller is not None else ():
            try:  # an aid for tools: one plugin failing leaves the others' answers
                answered = dict(await settle(answer) or {})
            except Exception as exc:
                logger.warning("a bus_describe_apis implementation failed: %s: %s",
                               type(exc).__name__, exc)
                continue
            for name, definition in answered.items():
                described.setdefault(name, definition)
        return described


def now() -> float:
    """The clock durations given to "after" hooks are measured with."""
    return time.perf_counter()
