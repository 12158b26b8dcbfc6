"""The plugin manager: discovery, enablement, blocking, tracing, and every hook's call."""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

import bus_core
from bus_core import EventMessage, InvalidArguments, PluginError, RemoteError, RpcTimeout, hookimpl
from bus_core.errors import TransportNotFound
from bus_core.plugins import PluginManager
from tests.apis import AuthApi
from tests.conftest import memory_config


def fake_distribution(root: Path, dist: str, entry_points: dict[str, str],
                      modules: dict[str, str]) -> None:
    """Write an installed-looking distribution (dist-info with entry points) under `root`."""
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[bus]\n{lines}\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(source)


RECORDING_PLUGIN = '''
from bus_core import hookimpl
CALLS = []

@hookimpl
def bus_worker_started(client, worker):
    CALLS.append("worker_started")

@hookimpl
def bus_plugin_config_schema():
    return {"properties": {"volume": {"type": "integer"}}}
'''


@pytest.fixture
def fake_site(tmp_path, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_point_plugins_are_discovered_with_their_distribution(fake_site):
    fake_distribution(fake_site, "bus-recorder", {"recorder": "bus_recorder"},
                      {"bus_recorder": RECORDING_PLUGIN})
    manager = PluginManager()
    info = manager.infos["recorder"]
    assert (info.distribution, info.version, info.status) == ("bus-recorder", "1.2.3", "loaded")
    assert info.hooks == ["bus_plugin_config_schema", "bus_worker_started"]
    assert manager.config_schemas["recorder"] == {"properties": {"volume": {"type": "integer"}}}
    assert not info.enabled  # discovery is not enablement


def test_discovered_plugin_runs_only_when_enabled(fake_site, broker_name):
    fake_distribution(fake_site, "bus-recorder2", {"recorder2": "bus_recorder2"},
                      {"bus_recorder2": RECORDING_PLUGIN})
    import bus_recorder2  # type: ignore[import-not-found]

    for enabled, expected in ((False, []), (True, ["worker_started"])):
        bus_recorder2.CALLS.clear()
        config = memory_config(broker_name)
        config["plugins"] = {"recorder2": {"enabled": enabled, "volume": 3}}
        bus = bus_core.create(config)
        try:
            bus.client.start_worker()
        finally:
            bus.client.close()
        assert expected == bus_recorder2.CALLS


def test_plugin_section_is_validated_with_the_plugins_schema(fake_site):
    fake_distribution(fake_site, "bus-recorder3", {"recorder3": "bus_recorder3"},
                      {"bus_recorder3": RECORDING_PLUGIN})
    with pytest.raises(bus_core.ConfigError, match="plugins.recorder3.volume: 'loud'"):
        bus_core.create({"plugins": {"recorder3": {"enabled": True, "volume": "loud"}}})
    with pytest.raises(bus_core.ConfigError, match="'colour' was unexpected"):
        bus_core.create({"plugins": {"recorder3": {"colour": 1}}})


def test_a_plugin_that_fails_to_import_warns_and_the_rest_keeps_working(fake_site):
    fake_distribution(fake_site, "bus-broken", {"broken": "bus_broken"},
                      {"bus_broken": "raise ImportError('needs libfoo 2')\n"})
    with pytest.warns(RuntimeWarning, match=r"'broken' from distribution bus-broken failed "
                                            r"to import.*needs libfoo 2"):
        bus = bus_core.create({})
    try:
        info = bus.client.plugins.infos["broken"]
        assert info.status == "failed" and "needs libfoo 2" in (info.error or "")
        assert bus.client.plugins.infos["memory"].status == "loaded"
    finally:
        bus.client.close()


def test_a_misspelled_hook_fails_loudly(fake_site):
    class Misspelled:
        @hookimpl
        def bus_before_rpc_cal(self, client: Any, message: Any) -> None: ...

    with pytest.raises(PluginError, match="bus_before_rpc_cal.*Did you mean "
                                          "bus_before_rpc_call[?]"):
        bus_core.create({}, plugins=[Misspelled()])

    fake_distribution(fake_site, "bus-typo", {"typo": "bus_typo"}, {"bus_typo": (
        "from bus_core import hookimpl\n@hookimpl\ndef bus_worker_startd(client, worker): ...\n"
    )})
    with pytest.warns(RuntimeWarning, match="'typo' is skipped.*bus_worker_startd"):
        manager = PluginManager()
    assert manager.infos["typo"].status == "failed"


def test_wrong_hook_arguments_fail_loudly():
    class WrongArgs:
        @hookimpl
        def bus_worker_started(self, client: Any, worker: Any, extra: Any) -> None: ...

    with pytest.raises(PluginError, match="extra") as refused:
        bus_core.create({}, plugins=[WrongArgs()])
    assert str(refused.value).endswith(
        "bus_worker_started offers: client, worker (take any of them, by these names)")


def test_bus_disabled_plugins_blocks_by_name(fake_site, monkeypatch):
    fake_distribution(fake_site, "bus-recorder4", {"recorder4": "bus_recorder4"},
                      {"bus_recorder4": RECORDING_PLUGIN})
    monkeypatch.setenv("BUS_DISABLED_PLUGINS", "recorder4, memory")
    manager = PluginManager()
    assert manager.infos["recorder4"].status == "blocked"
    assert manager.infos["memory"].status == "blocked"
    assert not manager.pm.has_plugin("recorder4")
    with pytest.raises(bus_core.ConfigError, match="'memory' was unexpected"):
        bus_core.create({"apis": {"default": {"rpc_transport": {"memory": {}}}}})


def test_a_blocked_plugins_section_is_left_alone_with_a_warning(
        fake_site, monkeypatch, caplog):
    """Blocking a plugin must not make the config that configures it invalid. (A plugin the
    config enables that failed to load is an error: tests/core/test_plugin_failures.py.)"""
    fake_distribution(fake_site, "bus-recorder5", {"recorder5": "bus_recorder5"},
                      {"bus_recorder5": RECORDING_PLUGIN})
    fake_distribution(fake_site, "bus-typo2", {"typo2": "bus_typo2"}, {"bus_typo2": (
        "from bus_core import hookimpl\n@hookimpl\ndef bus_worker_startd(client, worker): ...\n"
    )})
    monkeypatch.setenv("BUS_DISABLED_PLUGINS", "recorder5")
    config = {"plugins": {"recorder5": {"enabled": True, "volume": 3},
                          "typo2": {"enabled": False, "slow_ms": 5}}}
    with pytest.warns(RuntimeWarning, match="typo2"):  # broken, installed, not enabled
        bus = bus_core.create(config)
    try:
        assert not {"recorder5", "typo2"} & bus.client.plugins.enabled
    finally:
        bus.client.close()
    warned = [r.getMessage() for r in caplog.records if r.name == "bus.plugins"]
    assert ("plugin 'recorder5' is enabled in the config but blocked by BUS_DISABLED_PLUGINS; "
            "its section is not checked and it does not run") in warned


def test_the_kernel_fills_in_defaults_from_a_plugins_schema(fake_site):
    fake_distribution(fake_site, "bus-defaults", {"defaults": "bus_defaults"}, {"bus_defaults": (
        "from bus_core import hookimpl\n@hookimpl\ndef bus_plugin_config_schema():\n"
        "    return {'properties': {'interval': {'type': 'number', 'default': 60},\n"
        "                           'name': {'type': 'string', 'default': 'x'}}}\n"
    )})
    bus = bus_core.create({"plugins": {"defaults": {"enabled": True, "name": "mine"}}})
    bare = bus_core.create({})
    try:
        assert bus.client.config.plugin("defaults") == {"enabled": True, "name": "mine",
                                                        "interval": 60}
        assert bare.client.config.plugin("defaults") == {"name": "x", "interval": 60}
    finally:
        bus.client.close()
        bare.client.close()


def test_a_plugin_without_a_config_schema_takes_no_options(fake_site):
    fake_distribution(fake_site, "bus-plain", {"plain": "bus_plain"}, {"bus_plain": (
        "from bus_core import hookimpl\n@hookimpl\ndef bus_worker_started(client, worker): ...\n"
    )})
    bus_core.create({"plugins": {"plain": {"enabled": True}}}).close()
    with pytest.raises(bus_core.ConfigError, match="plugins.plain: .*'colour' was unexpected"):
        bus_core.create({"plugins": {"plain": {"enabled": True, "colour": "red"}}})


def test_an_installed_plugin_passed_in_code_is_enabled_not_registered_twice(fake_site):
    fake_distribution(fake_site, "bus-recorder5", {"recorder5": "bus_recorder5"},
                      {"bus_recorder5": RECORDING_PLUGIN})
    import bus_recorder5  # type: ignore[import-not-found]

    bus = bus_core.create({}, plugins=[bus_recorder5])
    try:
        assert bus.client.plugins.infos["recorder5"].enabled
        assert "bus_recorder5" not in bus.client.plugins.infos
    finally:
        bus.client.close()


def test_enabling_a_plugin_that_is_not_installed_is_an_error():
    with pytest.raises(PluginError, match="no plugin named 'nope' is installed"):
        bus_core.create({"plugins": {"nope": {"enabled": True}}})


def test_trace_switch_logs_every_hook_call(monkeypatch, caplog, make_bus):
    monkeypatch.setenv("BUS_TRACE_PLUGINS", "1")

    class Observer:
        @hookimpl
        def bus_before_event_fire(self, client: Any, message: Any) -> None: ...

    bus = make_bus(plugins=[Observer()])
    bus.client.register_api(AuthApi())
    with caplog.at_level(logging.INFO, logger="bus.plugins"):
        bus.auth.user_registered.fire(username="a", email="b")
    assert any("hook bus_before_event_fire" in r.getMessage() for r in caplog.records)


def test_a_transport_of_an_unknown_kind_is_refused():
    class BadTransport:
        @hookimpl
        def bus_register_transports(self, register: Any) -> None:
            register("telepathy", "mind", object)

    with pytest.raises(PluginError, match="unknown kind 'telepathy'"):
        bus_core.create({}, plugins=[BadTransport()])


def test_a_missing_transport_names_the_installed_ones():
    manager = PluginManager()
    with pytest.raises(TransportNotFound, match="no event transport named 'kafka'.*memory"):
        manager.transport("event", "kafka")


def test_no_plugin_means_no_hook_machinery(make_bus):
    bus = make_bus()
    facade = bus.client.hooks
    assert not any(facade.implemented(name) for name in facade.GATED)


class Recorder:
    """Implements every lifecycle and message-flow hook; some async, as plugins may."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def _record(self, name: str, **kwargs: Any) -> None:
        with self.lock:
            self.calls.append((name, kwargs))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def get(self, name: str) -> dict[str, Any]:
        return next(kwargs for n, kwargs in self.calls if n == name)

    @hookimpl
    async def bus_client_started(self, client: Any) -> None:
        await asyncio.sleep(0)
        self._record("client_started", client=client)

    @hookimpl
    def bus_client_stopping(self, client: Any) -> None:
        self._record("client_stopping", client=client)

    @hookimpl
    async def bus_worker_started(self, client: Any, worker: Any) -> None:
        self._record("worker_started", worker=worker)

    @hookimpl
    def bus_worker_stopping(self, client: Any, worker: Any) -> None:
        self._record("worker_stopping", worker=worker)

    @hookimpl
    def bus_before_rpc_call(self, client: Any, message: Any) -> None:
        self._record("before_rpc_call", message=message)

    @hookimpl
    def bus_after_rpc_call(self, client: Any, message: Any, result: Any, error: Any,
                           duration: float) -> None:
        self._record("after_rpc_call", message=message, result=result, error=error,
                     duration=duration)

    @hookimpl
    async def bus_before_rpc_execution(self, client: Any, message: Any) -> None:
        self._record("before_rpc_execution", message=message)

    @hookimpl
    def bus_after_rpc_execution(self, client: Any, message: Any, result: Any, error: Any,
                                duration: float) -> None:
        self._record("after_rpc_execution", message=message, result=result, error=error,
                     duration=duration)

    @hookimpl
    def bus_before_event_fire(self, client: Any, message: Any) -> None:
        self._record("before_event_fire", message=message)

    @hookimpl
    def bus_after_event_fire(self, client: Any, message: Any, error: Any,
                             duration: float) -> None:
        self._record("after_event_fire", message=message, error=error, duration=duration)

    @hookimpl
    def bus_before_event_handling(self, client: Any, message: Any, listener_name: str) -> None:
        self._record("before_event_handling", message=message, listener_name=listener_name)

    @hookimpl
    def bus_after_event_handling(self, client: Any, message: Any, listener_name: str,
                                 error: Any, duration: float) -> None:
        self._record("after_event_handling", message=message, listener_name=listener_name,
                     error=error, duration=duration)

    @hookimpl
    def bus_on_handler_error(self, client: Any, message: Any, listener_name: Any, error: Any,
                             action: str) -> None:
        self._record("on_handler_error", message=message, listener_name=listener_name,
                     error=error, action=action)


def test_lifecycle_and_rpc_hooks_fire_with_outcome_and_duration(make_bus):
    recorder = Recorder()
    bus = make_bus(plugins=[recorder])
    bus.client.register_api(AuthApi())
    bus.client.start_worker()
    assert bus.auth.check_password(username="admin", password="secret") is True
    with pytest.raises(RemoteError):
        bus.auth.fail(message="no")
    bus.client.close()
    names = recorder.names()
    assert names[0] == "client_started" and "worker_started" in names
    assert names.index("worker_stopping") < names.index("client_stopping")
    ok_call = recorder.get("after_rpc_call")
    assert ok_call["result"] is True and ok_call["error"] is None and ok_call["duration"] > 0
    executions = [kw for n, kw in recorder.calls if n == "after_rpc_execution"]
    assert [kw["message"].procedure_name for kw in executions] == ["check_password", "fail"]
    assert isinstance(executions[1]["error"], ValueError)
    failed_call = [kw for n, kw in recorder.calls if n == "after_rpc_call"][1]
    assert isinstance(failed_call["error"], RemoteError)
    error_hook = recorder.get("on_handler_error")
    assert (error_hook["action"], error_hook["listener_name"]) == ("reply_error", None)


def test_after_rpc_call_sees_timeouts(make_bus):
    recorder = Recorder()
    bus = make_bus(plugins=[recorder], rpc_timeout=0.1)
    with pytest.raises(RpcTimeout):
        bus.nobody.home()
    assert isinstance(recorder.get("after_rpc_call")["error"], RpcTimeout)


def test_event_hooks_fire_with_listener_name_and_errors(make_bus):
    recorder = Recorder()
    bus = make_bus(plugins=[recorder], max_deliveries=1)
    bus.client.register_api(AuthApi())
    handled = threading.Event()

    def handler(event: EventMessage, username: str, email: str) -> None:
        handled.set()
        if username == "bad":
            raise RuntimeError("cannot welcome")

    bus.auth.user_registered.listen(handler, listener_name="welcome")
    bus.client.start_worker()
    bus.auth.user_registered.fire(username="bad", email="b")
    assert handled.wait(5)
    bus.client.stop_worker()
    fired = recorder.get("after_event_fire")
    assert fired["error"] is None and fired["message"].native_id is not None
    assert recorder.get("before_event_handling")["listener_name"] == "welcome"
    after = recorder.get("after_event_handling")
    assert isinstance(after["error"], RuntimeError) and after["duration"] >= 0
    error_hook = recorder.get("on_handler_error")
    assert (error_hook["listener_name"], error_hook["action"]) == ("welcome", "dead_letter")


def test_a_before_hook_can_refuse_a_call_before_anything_is_sent(make_bus):
    class Gatekeeper:
        @hookimpl
        def bus_before_rpc_call(self, client: Any, message: Any) -> None:
            raise PermissionError(f"{message.canonical_name} is not allowed")

    caller = make_bus(plugins=[Gatekeeper()])
    with pytest.raises(PermissionError, match="auth.check_password is not allowed"):
        caller.auth.check_password(username="a", password="b")
    broker = caller.client.run_sync(caller.client.state())._instances
    assert all(getattr(t, "broker", None) is None or t.broker.queued_calls("auth") == 0
               for t in broker.values())


def test_a_before_hook_may_change_the_arguments(make_bus):
    class Defaulter:
        @hookimpl
        def bus_before_rpc_call(self, client: Any, message: Any) -> None:
            message.kwargs.setdefault("password", "secret")

    bus = make_bus(plugins=[Defaulter()])
    server = make_bus()
    server.client.register_api(AuthApi())
    server.client.start_worker()
    assert bus.auth.check_password(username="admin") is True


def test_refusing_execution_returns_the_error_to_the_caller(make_bus):
    class Firewall:
        @hookimpl
        def bus_before_rpc_execution(self, client: Any, message: Any) -> None:
            raise PermissionError("caller not allowed")

    server = make_bus(plugins=[Firewall()])
    server.client.register_api(AuthApi())
    server.client.start_worker()
    with pytest.raises(RemoteError, match="PermissionError: caller not allowed"):
        server.auth.check_password(username="a", password="b")


def test_result_hooks_can_refuse_a_result_on_either_side(make_bus):
    seen: list[tuple[str, Any]] = []

    class WorkerSide:
        @hookimpl
        def bus_before_rpc_result_sent(self, client: Any, message: Any, result: Any) -> None:
            seen.append(("sent", result))
            if result == "forbidden":
                raise bus_core.InvalidMessage("result 'forbidden' is not allowed")

    class CallerSide:
        @hookimpl
        async def bus_on_rpc_result_received(self, client: Any, message: Any,
                                             result: Any) -> None:
            seen.append(("received", result))
            if result == "suspicious":
                raise bus_core.InvalidMessage("caller refuses 'suspicious'")

    server = make_bus(plugins=[WorkerSide()])
    server.client.register_api(AuthApi())
    server.client.start_worker()
    caller = make_bus(plugins=[CallerSide()], service_name="caller")
    assert caller.auth.slow_echo(value="fine") == "fine"
    with pytest.raises(RemoteError, match="InvalidMessage: result 'forbidden' is not allowed"):
        caller.auth.slow_echo(value="forbidden")
    with pytest.raises(bus_core.InvalidMessage, match="caller refuses"):
        caller.auth.slow_echo(value="suspicious")
    assert ("sent", "fine") in seen and ("received", "fine") in seen
    assert ("received", "forbidden") not in seen  # an error result is not a result


def test_an_invalid_message_from_a_before_handling_hook_is_dead_lettered_at_once(make_bus):
    class Validator:
        @hookimpl
        def bus_before_event_handling(self, client: Any, message: Any,
                                      listener_name: str) -> None:
            raise bus_core.InvalidMessage("fails its schema")

    recorder = Recorder()
    bus = make_bus(plugins=[Validator(), recorder], max_deliveries=5)
    bus.client.register_api(AuthApi())
    bus.auth.user_registered.listen(lambda e, **kw: None, listener_name="strict")
    bus.client.start_worker()
    bus.auth.user_registered.fire(username="a", email="b")
    bus.client.stop_worker()
    actions = [kw["action"] for name, kw in recorder.calls if name == "on_handler_error"]
    assert actions == ["dead_letter"]


def test_an_after_hook_that_raises_is_logged_not_raised(make_bus, caplog):
    class Clumsy:
        @hookimpl
        def bus_after_event_fire(self, client: Any, message: Any, error: Any,
                                 duration: float) -> None:
            raise ZeroDivisionError("oops")

    bus = make_bus(plugins=[Clumsy()])
    bus.client.register_api(AuthApi())
    message = bus.auth.user_registered.fire(username="a", email="b")
    assert message.native_id is not None
    assert any("bus_after_event_fire hook implementation raised" in r.getMessage()
               for r in caplog.records)


def test_a_plugin_adds_config_sources(tmp_path):
    class VaultSource:
        @hookimpl
        def bus_register_config_sources(self, register: Any) -> None:
            register("vault", lambda location: {"bus": {"service_name": location[8:]}})

    bus = bus_core.create("vault://payments", plugins=[VaultSource()])
    try:
        assert bus.client.service_name == "payments"
    finally:
        bus.client.close()


def test_a_plugin_adds_a_serializer_selected_by_config(make_bus, broker_name):
    import json

    class Upper:
        name = "loud-json"

        def dumps(self, value: Any) -> bytes:
            return json.dumps(value).encode()

        def loads(self, data: bytes | str) -> Any:
            return json.loads(data)

    used: list[str] = []

    class LoudPlugin:
        @hookimpl
        def bus_register_serializers(self, register: Any) -> None:
            def factory() -> Upper:
                used.append("made")
                return Upper()

            register("loud-json", factory)

    config = memory_config(broker_name)
    config["bus"]["serializer"] = "loud-json"
    bus = make_bus(plugins=[LoudPlugin()], config=config)
    bus.client.register_api(AuthApi())
    bus.client.start_worker()
    assert bus.auth.check_password(username="admin", password="secret") is True
    assert used == ["made"]


def test_registering_a_plugin_in_code_enables_it_and_unregistering_removes_it(make_bus):
    recorder = Recorder()
    bus = make_bus()
    bus.client.register_api(AuthApi())
    name = bus.client.plugins.register(recorder, "recorder")
    try:
        bus.auth.user_registered.fire(username="a", email="b")
        assert "before_event_fire" in recorder.names()
    finally:
        bus.client.plugins.unregister(name)
    recorder.calls.clear()
    bus.auth.user_registered.fire(username="a", email="b")
    assert recorder.calls == []


class Opaque:
    """A class with no wire form."""


def test_warning_for_annotations_that_cannot_travel(make_bus):
    class LeakyApi(bus_core.Api):
        class Meta:
            name = "leaky"

        def take(self, thing: Opaque) -> None: ...

    bus = make_bus()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bus.client.register_api(LeakyApi())
    assert any("leaky.take() parameter 'thing'" in str(w.message) for w in caught)


def test_warning_for_annotations_that_cannot_be_resolved():
    with pytest.warns(UserWarning, match=r"cannot resolve the annotations of RPC take\(\)"):
        class UnresolvedApi(bus_core.Api):
            class Meta:
                name = "unresolved"

            def take(self, thing: NotDefinedAnywhere) -> None: ...  # type: ignore[name-defined]  # noqa: F821


def test_register_api_needs_an_instance(make_bus):
    with pytest.raises(InvalidArguments, match=r"register_api\(AuthApi\(\)\)"):
        make_bus().client.register_api(AuthApi)  # type: ignore[arg-type]


def test_a_plugin_refusing_the_worker_start_leaves_nothing_running(make_bus):
    stopped: list[str] = []

    class Refuses:
        @hookimpl
        def bus_worker_started(self, client: Any, worker: Any) -> None:
            raise OSError("port 9464 is taken")

    class Holds:
        @hookimpl
        def bus_worker_stopping(self, client: Any, worker: Any) -> None:
            stopped.append("released")

    bus = make_bus(plugins=[Holds(), Refuses()])
    bus.client.register_api(AuthApi())
    with pytest.raises(OSError, match="port 9464 is taken"):
        bus.client.start_worker()
    assert bus.client.running_workers == []
    assert stopped == ["released"]


def test_an_unknown_name_in_bus_disabled_plugins_is_warned_about(monkeypatch, caplog):
    import bus_core.plugins

    monkeypatch.setattr(bus_core.plugins, "_WARNED_UNKNOWN_DISABLED", set())
    monkeypatch.setenv("BUS_DISABLED_PLUGINS", "memroy")
    PluginManager()
    PluginManager()
    warned = [r.getMessage() for r in caplog.records if "BUS_DISABLED_PLUGINS" in
              r.getMessage()]
    assert len(warned) == 1  # once per process
    assert warned[0].startswith("BUS_DISABLED_PLUGINS names no installed plugin: 'memroy' "
                                "(did you mean 'memory'?); installed: ")


class FailingObserver:
    @hookimpl
    async def bus_after_event_fire(self, message):
        raise RuntimeError("observer broke")


class CountingObserver:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    async def bus_after_event_fire(self, message):
        self.seen.append(message.event_name)


async def test_one_failing_observer_does_not_keep_the_others_from_seeing(make_bus, caplog):
    counting = CountingObserver()
    # Registered after it, the failing one is called first.
    bus = make_bus(plugins=[counting, FailingObserver()])
    bus.client.register_api(AuthApi())
    await bus.auth.user_registered.fire_async(username="a", email="b")
    assert counting.seen == ["user_registered"]
    assert "a bus_after_event_fire hook implementation raised" in caplog.text
