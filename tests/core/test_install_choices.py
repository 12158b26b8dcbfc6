"""Installing only some of Bus's distributions gives a bus that works, and whatever is missing
is named by the distribution to install.

The slow tests build fresh virtual environments and pip-install the checkout's folders into
them the way the docs tell users to (`pip install ./` alone, and `pip install ./
./transports_redis`), offline: the third-party dependencies are copied from the environment
running the tests and found by pip as already installed, and the local folders are built
without build isolation. Then, with no config at all, the README's tour runs as a script, the
pytest plugin's fixtures work, `bus plugins list` shows the memory transport, and `bus config
check` passes (or names `bus-redis` when a config selects Redis without it installed).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import bus_memory.plugin
import pytest
from packaging.requirements import Requirement

from bus_core import ConfigError, PluginError
from bus_core.config import load_config
from bus_core.default_plugins import config_sources, json_serializer
from bus_core.errors import TransportNotFound
from bus_core.plugins import PluginManager

ROOT = Path(__file__).resolve().parents[2]
# What the installs below need from outside the checkout (their dependencies follow).
THIRD_PARTY = ["pluggy", "PyYAML", "jsonschema", "croniter", "redis", "hiredis", "pytest",
               "setuptools"]
TIMEOUT = 180


# -- without installing anything: the messages -----------------------------------------------


def _manager(*plugins: object) -> PluginManager:
    """A manager with the kernel's built-ins and `plugins`, as if only those were installed."""
    return PluginManager([json_serializer, config_sources, *plugins], load_entry_points=False)


@pytest.mark.parametrize(("name", "distribution"), [("memory", "bus-memory"),
                                                    ("redis", "bus-redis")])
def test_a_transport_that_is_not_installed_names_its_distribution(name, distribution):
    manager = _manager()
    with pytest.raises(TransportNotFound, match=f"pip install {distribution}"):
        manager.transport("rpc", name)


def test_a_config_selecting_an_uninstalled_transport_names_its_distribution():
    manager = _manager(bus_memory.plugin)
    document = {"apis": {"default": {"event_transport": {"redis": {"url": "redis://h/0"}}}}}
    with pytest.raises(ConfigError) as caught:
        load_config(document, manager, environ={})
    text = str(caught.value)
    assert "apis.default.event_transport: 'redis' was unexpected" in text
    assert "no event transport named 'redis' is installed: pip install bus-redis" in text


def test_the_default_config_without_the_memory_transport_names_bus_memory():
    with pytest.raises(ConfigError, match="pip install bus-memory"):
        load_config(None, _manager(), environ={})


def test_enabling_a_plugin_that_is_not_installed_names_its_distribution():
    manager = _manager(bus_memory.plugin)
    with pytest.raises(PluginError, match=r"no plugin named 'otel' is installed: "
                                          r"pip install bus-otel"):
        manager.apply_config({"otel": {"enabled": True}}, {("rpc", "memory")}, "json")


def _declared_requirements(setup_py: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the root's setup.py passes to setuptools as install_requires."""
    import runpy

    import setuptools

    captured: dict[str, list[str]] = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    runpy.run_path(str(setup_py))
    return captured["install_requires"]


def test_the_root_project_depends_on_bus_memory_in_this_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv("BUS_MEMORY_REQUIREMENT", raising=False)
    found = _declared_requirements(ROOT / "setup.py", monkeypatch)
    assert f"bus-memory @ {(ROOT / 'transports_memory').as_uri()}" in found
    # Built from an sdist (no transports_memory/ beside it): by name, from an index.
    shutil.copy2(ROOT / "setup.py", tmp_path / "setup.py")
    assert "bus-memory>=0.1.0" in _declared_requirements(tmp_path / "setup.py", monkeypatch)
    # dev.py's editable install of every member asks for it by name.
    monkeypatch.setenv("BUS_MEMORY_REQUIREMENT", "bus-memory")
    assert "bus-memory" in _declared_requirements(ROOT / "setup.py", monkeypatch)


# -- fresh environments ----------------------------------------------------------------------


def _copy_distributions(names: list[str], destination: Path) -> None:
    """Copy the installed files of `names` and of everything they require (no extras) into
    `destination`, a folder that a fresh environment then has on its path."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
        base = Path(str(dist.locate_file("")))
        for file in dist.files or []:
            if str(file).startswith(".."):  # console scripts outside site-packages
                continue
            source = base / file
            if source.is_file():
                target = destination / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)


@pytest.fixture(scope="module")
def third_party(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("third-party")
    _copy_distributions(THIRD_PARTY, folder)
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout's distributions (a build writes next to its sources)."""
    copy = tmp_path_factory.mktemp("checkout")
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".venv")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, copy / name)
    for folder in ("bus_core", "transports_memory", "transports_redis"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=ignore)
    return copy


@dataclasses.dataclass(frozen=True)
class Venv:
    """A fresh environment and a clean folder to run things in."""

    path: Path
    workdir: Path
    with_redis: bool

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BUS_", "PYTHON", "VIRTUAL_ENV", "PIP_"))}
        env["PATH"] = f"{self.path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), cwd=self.workdir, env=self.env(),
                              capture_output=True, text=True, timeout=TIMEOUT)

    def write(self, name: str, text: str) -> Path:
        path = self.workdir / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def distributions(self) -> set[str]:
        found = self.run(self.python, "-c", "from importlib import metadata; "
                         "print(*sorted(d.metadata['Name'] for d in metadata.distributions()))")
        return set(found.stdout.split())


def _make_venv(base: Path, third_party: Path, targets: list[Path]) -> Venv:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base / "venv")],
                   check=True, timeout=TIMEOUT)
    site = next((base / "venv" / "lib").glob("python3*/site-packages"))
    (site / "third_party.pth").write_text(f"{third_party}\n")
    # This environment's pip installs into the new one (--python): no pip needed there.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUS_", "PIP_"))}
    command = [sys.executable, "-m", "pip", "--python", str(base / "venv" / "bin" / "python"),
               "install", "--quiet", "--disable-pip-version-check", "--no-index",
               "--no-build-isolation", *map(str, targets)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    if result.returncode != 0:
        pytest.fail(f"pip install {' '.join(map(str, targets))} failed:\n{result.stdout}\n"
                    f"{result.stderr}")
    workdir = base / "work"
    workdir.mkdir()
    return Venv(base / "venv", workdir, with_redis=any("redis" in t.name for t in targets))


@pytest.fixture(scope="module")
def only_root(tmp_path_factory, third_party, sources) -> Venv:
    """`pip install ./`: the kernel, and what it depends on."""
    return _make_venv(tmp_path_factory.mktemp("only-root"), third_party, [sources])


@pytest.fixture(scope="module")
def root_and_redis(tmp_path_factory, third_party, sources) -> Venv:
    """`pip install ./ ./transports_redis`, what the Redis docs say."""
    return _make_venv(tmp_path_factory.mktemp("root-redis"), third_party,
                      [sources, sources / "transports_redis"])


@pytest.fixture(params=["only_root", "root_and_redis"])
def venv(request: pytest.FixtureRequest) -> Venv:
    return request.getfixturevalue(request.param)


TOUR = """
    import bus_core
    from bus_core import Api, Event, Parameter

    class AuthApi(Api):
        user_registered = Event(parameters=[Parameter("username", str),
                                            Parameter("email", str)])

        class Meta:
            name = "auth"

        def check_password(self, username: str, password: str) -> bool:
            return username == "admin" and password == "secret"

    seen = []
    bus = bus_core.create()
    bus.client.register_api(AuthApi())
    bus.auth.user_registered.listen(lambda event, username, email: seen.append(username),
                                    listener_name="welcome")
    bus.client.start_worker()
    print("rpc", bus.auth.check_password(username="admin", password="secret"))
    bus.auth.user_registered.fire(username="ada", email="ada@example.com")
    import time
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    print("event", seen)
    bus.close()
"""

USER_TESTS = """
    from bus_core import Api

    class ShopApi(Api):
        class Meta:
            name = "shop"

        def price(self, item: str) -> float:
            return 2.5

    def test_the_bus_fixture(bus):
        bus.client.register_api(ShopApi())
        bus.client.start_worker()
        assert bus.shop.price(item="tea") == 2.5

    def test_the_bus_mock_fixture(bus, bus_mock):
        bus_mock.stub_rpc("shop.price", returns=1.0, api=ShopApi)
        assert bus.shop.price(item="tea") == 1.0
        bus_mock.assert_rpc_called("shop.price", with_kwargs={"item": "tea"})
"""


@pytest.mark.slow
def test_bus_memory_is_installed_as_its_own_distribution(venv: Venv) -> None:
    installed = venv.distributions()
    assert {"bus-core", "bus-memory"} <= installed
    assert ("bus-redis" in installed) is venv.with_redis


@pytest.mark.slow
def test_the_readme_tour_runs_with_no_config(venv: Venv) -> None:
    script = venv.write("tour.py", TOUR)
    result = venv.run(venv.python, str(script))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["rpc True", "event ['ada']"]


@pytest.mark.slow
def test_the_pytest_plugin_works_with_no_config(venv: Venv) -> None:
    tests = venv.write("test_user.py", USER_TESTS)
    result = venv.run(venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.slow
def test_bus_plugins_list_shows_the_memory_transport_in_use(venv: Venv) -> None:
    result = venv.run("bus", "plugins", "list")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["memory"][1:4] == ["bus-memory", "0.1.0", "yes"]
    if venv.with_redis:
        assert rows["redis"][1:4] == ["bus-redis", "0.1.0", "no"]
    else:
        assert "redis" not in rows


REDIS_CONFIG = """
    apis:
      default:
        rpc_transport: {redis: {url: "redis://127.0.0.1:6379/0"}}
        result_transport: {redis: {url: "redis://127.0.0.1:6379/0"}}
        event_transport: {redis: {url: "redis://127.0.0.1:6379/0"}}
"""


@pytest.mark.slow
def test_bus_config_check(venv: Venv) -> None:
    plain = venv.write("plain.yaml", "bus: {service_name: shop}\n")
    result = venv.run("bus", "config", "check", str(plain))
    assert result.returncode == 0, result.stderr
    assert "valid (service 'shop'" in result.stdout and "memory" in result.stdout
    redis = venv.write("redis.yaml", REDIS_CONFIG)
    result = venv.run("bus", "config", "check", str(redis))
    if venv.with_redis:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1, result.stdout
        assert "apis.default.rpc_transport: 'redis' was unexpected" in result.stderr
        assert "pip install bus-redis" in result.stderr
