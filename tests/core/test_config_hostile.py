"""Configs from outside, at their worst: credentials in source URLs stay hidden and go only
where they belong; nothing a config says can make loading it unbounded; every broken config
is a ConfigError naming the file (and line), never a traceback."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import bus_core
from bus_core import ConfigError
from bus_core.config import MAX_CONFIG_NODES, check_size, load_config
from bus_core.default_plugins import config_sources
from bus_core.plugins import PluginManager, hookimpl
from bus_core.redaction import redact_text, redact_url
from tests.conftest import ROOT

SECRET = "hunter2-s3cret"
BUS = [sys.executable, "-m", "bus_core.cli"]


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager()


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def run_bus(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BUS, *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=60)


# -- a local HTTP server ----------------------------------------------------------------------

Route = tuple[int, dict[str, str], bytes]


@dataclass
class Site:
    """An http.server on a loopback address: `routes` maps a path to (status, headers,
    body); every request's path and Authorization header is recorded in `seen`."""

    host: str
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    server: http.server.HTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def url(self, path: str, credentials: str | None = None, host: str | None = None) -> str:
        userinfo = f"{credentials}@" if credentials else ""
        return f"http://{userinfo}{host or self.host}:{self.port}{path}"

    def auth_for(self, path: str) -> list[str | None]:
        return [auth for seen_path, auth in self.seen if seen_path == path]


@pytest.fixture
def serve() -> Iterator[Callable[[str], Site]]:
    started: list[http.server.HTTPServer] = []

    def start(host: str = "127.0.0.1") -> Site:
        site = Site(host)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.seen.append((self.path, self.headers.get("Authorization")))
                status, headers, body = site.routes.get(self.path, (404, {}, b"missing"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        site.server = http.server.HTTPServer((host, 0), Handler)
        started.append(site.server)
        threading.Thread(target=site.server.serve_forever, daemon=True).start()
        return site

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- credentials: never shown ---------------------------------------------------------------


def test_one_helper_masks_passwords_tokens_and_credential_parameters():
    assert redact_url(f"http://user:{SECRET}@h:1/x") == "http://user:***@h:1/x"
    assert redact_url(f"https://{SECRET}@h/x") == "https://***@h/x"  # a lone token
    assert redact_url(f"redis://:{SECRET}@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert redact_url(f"redis://u:p@{SECRET}@h/0") == "redis://u:***@h/0"  # '@' in it
    assert redact_url(f"https://h/c.yaml?token={SECRET}&v=1") == "https://h/c.yaml?token=***&v=1"
    # Malformed URLs are the ones error messages quote: masked all the same.
    assert SECRET not in redact_url(f"redis://u:{SECRET}@[::1")
    assert SECRET not in redact_url(f"redis://u:{SECRET}@h:99999/0")
    assert redact_url("/etc/bus.yaml") == "/etc/bus.yaml"
    assert redact_text(f"'redis://u:{SECRET}@h/0' is bad") == "'redis://u:***@h/0' is bad"
    # key=value connection strings (libpq's): the password, quoted or not, any case
    for text, shown in (
            (f"host=db password={SECRET} user=a", "host=db password=*** user=a"),
            (f"host=db PASSWORD = '{SECRET} x' port=5", "host=db PASSWORD = *** port=5"),
            (f"dsn: sslpassword={SECRET}", "dsn: sslpassword=***")):
        assert redact_text(text) == shown
    assert redact_text("password policy: none") == "password policy: none"


SOURCE_PROBLEMS = {
    "/missing.yaml": ("HTTP 404", (404, {}, b"missing")),
    "/error.yaml": ("HTTP 500", (500, {}, b"oops")),
    "/broken.yaml": ("not valid YAML", (200, {}, b"bus: [1,\n")),
    "/broken.json": ("not valid JSON", (200, {}, b'{"bus": {,}}')),
    "/list.yaml": ("must be a mapping", (200, {}, b"- 1\n")),
    "/invalid.yaml": ("is invalid", (200, {}, b"apis: {default: {rpc_timeout: soon}}\n")),
    "/latin1.yaml": ("not valid UTF-8", (200, {}, b"bus: {service_name: caf\xe9}\n")),
    "/dup.yaml": ("given twice", (200, {}, b"bus: {}\nbus: {}\n")),
    "/nan.yaml": ("not a number", (200, {}, b"apis: {default: {rpc_timeout: .nan}}\n")),
}


def test_no_config_source_message_shows_the_password(serve, manager, tmp_path):
    site = serve()
    for path, (_, route) in SOURCE_PROBLEMS.items():
        site.routes[path] = route
    site.routes["/ok.yaml"] = (200, {}, b"bus: {service_name: from_http}\n")
    site.routes["/lightbus.yaml"] = (200, {}, b"apis: {default: {cast_values: true}}\n")
    credentials = f"user:{SECRET}"
    unreachable = f"http://{credentials}@127.0.0.1:{free_port()}/bus.yaml"
    cases = {**{site.url(p, credentials): expected
                for p, (expected, _) in SOURCE_PROBLEMS.items()},
             unreachable: "cannot read config"}
    for url, expected in cases.items():
        for load in (lambda u: load_config(u, manager, environ={}),
                     lambda u: bus_core.create(u, service_name="x")):
            with pytest.raises(ConfigError) as caught:
                load(url)
            assert expected in str(caught.value) and "user:***@" in str(caught.value)
            assert SECRET not in str(caught.value)
        checked = run_bus("config", "check", url)
        assert checked.returncode == 1 and expected in checked.stderr
        assert SECRET not in checked.stdout + checked.stderr
    checked = run_bus("config", "check", site.url("/ok.yaml", credentials))
    assert checked.returncode == 0 and "valid" in checked.stdout
    assert SECRET not in checked.stdout + checked.stderr
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        load_config(site.url("/lightbus.yaml", credentials), manager, environ={})
    assert caught_warnings and all(SECRET not in str(w.message) for w in caught_warnings)
    # `bus run`: the bus module's create() reads the config from $BUS_CONFIG.
    (tmp_path / "bus.py").write_text("import bus_core\nbus = bus_core.create()\n")
    for path in ("/invalid.yaml", "/broken.yaml"):
        ran = run_bus("run", cwd=tmp_path, env={"BUS_CONFIG": site.url(path, credentials)})
        assert ran.returncode == 1 and "user:***@" in ran.stderr
        assert SECRET not in ran.stdout + ran.stderr


# -- credentials: sent only to their origin -------------------------------------------------


def test_credentials_go_to_the_same_origin_only(serve, manager):
    home = serve("127.0.0.1")
    other_host = serve("127.0.0.2")
    other_port = serve("127.0.0.1")
    body = b"bus: {service_name: redirected}\n"
    for site in (home, other_host, other_port):
        site.routes["/bus.yaml"] = (200, {}, body)
    home.routes["/same"] = (302, {"Location": "/bus.yaml"}, b"")
    home.routes["/host"] = (302, {"Location": other_host.url("/bus.yaml")}, b"")
    home.routes["/port"] = (307, {"Location": other_port.url("/bus.yaml")}, b"")
    home.routes["/name"] = (301, {"Location": home.url("/named.yaml", host="localhost")}, b"")
    home.routes["/named.yaml"] = (200, {}, body)
    credentials = f"user:{SECRET}"
    for path in ("/same", "/host", "/port", "/name"):
        config = load_config(home.url(path, credentials), manager, environ={})
        assert config.service_name == "redirected"
    assert home.auth_for("/same") == [home.auth_for("/bus.yaml")[0]]
    assert home.auth_for("/bus.yaml")[0].startswith("Basic ")  # the same origin has them
    assert other_host.auth_for("/bus.yaml") == [None]  # 127.0.0.2: another host
    assert other_port.auth_for("/bus.yaml") == [None]  # another port
    assert home.auth_for("/named.yaml") == [None]  # localhost is not 127.0.0.1 by name


def test_redirects_go_to_http_only_a_few_times(serve, manager):
    site = serve()
    site.routes["/ftp"] = (302, {"Location": "ftp://127.0.0.1/bus.yaml"}, b"")
    site.routes["/file"] = (302, {"Location": "file:///etc/passwd"}, b"")
    site.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    for path, expected in (("/ftp", "not an http(s):// URL"),
                           ("/file", "not an http(s):// URL"),
                           ("/loop", "more than 5 redirects")):
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            load_config(site.url(path), manager, environ={})
    assert len(site.auth_for("/loop")) == 6
    with pytest.raises(ConfigError, match="from https to plain http"):
        config_sources._redirect("https://example.org/a.yaml", "http://example.org/b.yaml",
                                 "https://example.org/a.yaml")


def test_credentials_are_not_sent_over_plain_http_to_another_machine(manager, monkeypatch):
    monkeypatch.delenv("BUS_CONFIG_ALLOW_INSECURE_CREDENTIALS", raising=False)
    monkeypatch.setattr(config_sources, "HTTP_TIMEOUT", 0.2)
    remote = f"http://user:{SECRET}@192.0.2.1:9/bus.yaml"  # TEST-NET: never contacted here
    with pytest.raises(ConfigError, match="refusing to send credentials over plain http") \
            as caught:
        load_config(remote, manager, environ={})
    assert SECRET not in str(caught.value)
    # Allowed explicitly: then it is tried (and fails to connect, quickly).
    monkeypatch.setenv("BUS_CONFIG_ALLOW_INSECURE_CREDENTIALS", "1")
    with pytest.raises(ConfigError) as caught:
        load_config(remote, manager, environ={})
    assert "refusing" not in str(caught.value) and SECRET not in str(caught.value)


def test_a_response_larger_than_the_limit_is_refused(serve, manager):
    site = serve()
    big = b"# " + b"x" * (1024 * 1024) + b"\n"
    site.routes["/declared.yaml"] = (200, {"Content-Length": str(len(big))}, big)
    site.routes["/undeclared.yaml"] = (200, {}, big)  # HTTP/1.0: ends when the server closes
    for path in ("/declared.yaml", "/undeclared.yaml"):
        with pytest.raises(ConfigError, match="larger than 1024 KiB"):
            load_config(site.url(path), manager, environ={})


def test_a_file_larger_than_the_limit_is_refused(tmp_path, manager):
    path = write(tmp_path, "huge.yaml", b"# " + b"x" * (1024 * 1024) + b"\n")
    with pytest.raises(ConfigError, match="huge.yaml is larger than 1024 KiB"):
        load_config(path, manager, environ={})


# -- nothing unbounded --------------------------------------------------------------------


def laughs(levels: int, width: int = 10) -> str:
    lines = ["a0: &a0 lol"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "plugins:\n  laughs:\n" + "".join(f"    {line}\n" for line in lines)


def test_aliases_expanding_past_the_limit_are_refused(tmp_path, manager):
    # 10**6 values once expanded (the old loader copied them all and accepted the config);
    # the check stops counting at the limit.
    path = write(tmp_path, "laughs.yaml", laughs(6))
    with pytest.raises(ConfigError, match=rf"laughs.yaml expands to more than "
                                          rf"{MAX_CONFIG_NODES} values"):
        load_config(path, manager, environ={})
    load_config(write(tmp_path, "few.yaml", laughs(3)), manager, environ={})  # 1111: fine


def test_a_billion_laughs_is_refused_within_bounded_memory(tmp_path):
    path = write(tmp_path, "billion.yaml", laughs(9))  # 10**9 values, a 1 KB file
    assert Path(path).stat().st_size < 3000
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from bus_core.config import load_config\n"
        "from bus_core.errors import ConfigError\n"
        "from bus_core.plugins import PluginManager\n"
        "try:\n"
        "    load_config(sys.argv[1], PluginManager(), environ={})\n"
        "except ConfigError as exc:\n"
        "    print('refused:', exc)\n")
    result = subprocess.run([sys.executable, "-c", script, path], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert "refused:" in result.stdout and "expands to more than" in result.stdout, \
        result.stderr[-2000:]


def test_the_size_check_counts_shared_values_as_often_as_they_appear():
    leaf = list(range(10))
    shared = [leaf] * 10
    check_size({"a": [shared] * 10}, "ok")  # 1,111 values
    with pytest.raises(ConfigError):
        check_size({"a": [[shared] * 100] * 100}, "big")  # 10**6 values from a few objects


def test_an_alias_inside_itself_is_refused(tmp_path, manager):
    path = write(tmp_path, "loop.yaml", "plugins:\n  loop:\n    x: &x [1, *x]\n")
    with pytest.raises(ConfigError, match="loop.yaml nests mappings/lists more than"):
        load_config(path, manager, environ={})


# -- clear errors instead of tracebacks --------------------------------------------------


def test_text_that_is_not_utf8_names_the_file_and_line(tmp_path, manager, serve):
    path = write(tmp_path, "latin1.yaml", b"bus:\n  service_name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml is not valid UTF-8 text: line 2, "
                                          r"column 20"):
        load_config(path, manager, environ={})
    site = serve()
    site.routes["/latin1.json"] = (200, {}, b'{"bus":\n {"service_name": "caf\xe9"}}')
    with pytest.raises(ConfigError, match=r"latin1.json is not valid UTF-8 text: line 2"):
        load_config(site.url("/latin1.json"), manager, environ={})
    # A byte-order mark is no error.
    load_config(write(tmp_path, "bom.yaml", b"\xef\xbb\xbfbus: {}\n"), manager, environ={})


@pytest.mark.parametrize("name,text", [
    ("deep.yaml", "[" * 5000 + "]" * 5000),
    ("deep.json", '{"plugins": {"x": {"a": ' + "[" * 100000 + "]" * 100000 + "}}}"),
    ("deep.yaml", "plugins: {x: {a: " + "[" * 40 + "]" * 40 + "}}"),  # parses; too deep
    ("deep.json", '{"plugins": {"x": {"a": ' + "[" * 40 + "]" * 40 + "}}}"),
])
def test_deep_nesting_is_a_clear_error(tmp_path, manager, name, text):
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=rf"{name} nests mappings/lists"):
        load_config(path, manager, environ={})


def test_deep_nesting_given_as_a_mapping_is_a_clear_error(manager):
    deep: Any = 1
    for _ in range(5000):
        deep = {"a": deep}
    with pytest.raises(ConfigError, match="config nests mappings/lists"):
        load_config({"plugins": {"x": deep}}, manager, environ={})


def test_duplicate_keys_are_refused_with_both_lines(tmp_path, manager):
    path = write(tmp_path, "dup.yaml", "bus:\n  service_name: a\n  drain_timeout: 1\n"
                                       "  service_name: b\n")
    with pytest.raises(ConfigError, match=r"dup.yaml is not valid YAML at line 4, column 3: "
                                          r"key 'service_name' is given twice in one mapping "
                                          r"\(line 2 and line 4\)"):
        load_config(path, manager, environ={})
    path = write(tmp_path, "dup.json", '{"bus": {"service_name": "a", "service_name": "b"}}')
    with pytest.raises(ConfigError, match="dup.json is not valid: key 'service_name' is given "
                                          "twice in one JSON object"):
        load_config(path, manager, environ={})
    # YAML merge keys may still be overridden, as YAML means them to be.
    merged = write(tmp_path, "merge.yaml", "plugins:\n  x:\n    base: &b {a: 1, b: 2}\n"
                                           "    copy: {<<: *b, a: 3}\n")
    config = load_config(merged, manager, environ={})
    assert config.plugins["x"]["copy"] == {"a": 3, "b": 2}


class HostilePlugin:
    """A throwaway plugin with a number option in its schema."""

    @hookimpl
    def bus_plugin_config_schema(self) -> dict[str, Any]:
        return {"properties": {"interval": {"type": "number"}}}


NON_FINITE_PATHS = [
    ("apis", "default", "rpc_timeout"),
    ("apis", "default", "event_fire_timeout"),
    ("apis", "shop", "redelivery_delay"),
    ("bus", "drain_timeout"),
    ("bus", "single_task_lock_ttl"),
    ("bus", "schema", "ttl"),
    ("plugins", "hostile", "interval"),
]


def nested(path: tuple[str, ...], value: str) -> str:
    """A flow-style YAML document setting `path` to `value`."""
    text = value
    for key in reversed(path):
        text = f"{{{key}: {text}}}"
    return text


@pytest.mark.parametrize("path", NON_FINITE_PATHS, ids=".".join)
def test_non_finite_numbers_are_refused_anywhere(tmp_path, path):
    manager = PluginManager()
    manager.register(HostilePlugin(), name="hostile")
    try:
        dotted = ".".join(path)
        for index, (name, text, environ) in enumerate([
            ("c.yaml", nested(path, ".nan"), {}),
            ("c.yaml", nested(path, ".inf"), {}),
            ("c.yaml", nested(path, "-.inf"), {}),
            ("c.yaml", nested(path, "1.0e+309"), {}),
            ("c.yaml", nested(path, "'${T}'"), {"T": "1e309"}),
            ("c.json", nested(path, "NaN").replace("{", '{"').replace(":", '":'), {}),
            ("c.json", nested(path, "1e309").replace("{", '{"').replace(":", '":'), {}),
            ("c.json", nested(path, "-Infinity").replace("{", '{"').replace(":", '":'), {}),
        ]):
            location = write(tmp_path, f"{index}{name}", text)
            with pytest.raises(ConfigError, match=rf"{dotted}: -?(nan|inf) is not a"):
                load_config(location, manager, environ=environ)
        load_config(write(tmp_path, "fine.yaml", nested(path, "7")), manager, environ={})
    finally:
        manager.unregister("hostile")


def test_keys_that_are_not_strings_are_refused(manager):
    with pytest.raises(ConfigError, match=r"plugins.x: key 1 is not a string"):
        load_config({"plugins": {"x": {1: "a"}}}, manager, environ={})


def test_a_failing_plugin_config_source_is_a_config_error(manager):
    class Source:
        @staticmethod
        @hookimpl
        def bus_register_config_sources(register: Any) -> None:
            def broken(location: str) -> str:
                raise OSError(f"cannot reach {location}")
            register("vault", broken)

    own = PluginManager()
    own.register(Source(), name="vault-source")
    try:
        with pytest.raises(ConfigError, match=r"the 'vault' config source failed: OSError") \
                as caught:
            load_config(f"vault://user:{SECRET}@vault/bus", own, environ={})
        assert SECRET not in str(caught.value)
    finally:
        own.unregister("vault-source")


class SecretPlugin:
    """A throwaway plugin whose token option is a secret (`writeOnly` in its schema)."""

    @hookimpl
    def bus_plugin_config_schema(self) -> dict[str, Any]:
        return {"properties": {
            "token": {"type": "string", "minLength": 16, "pattern": "^[a-z]+$",
                      "writeOnly": True},
            "users": {"type": "object", "additionalProperties": {
                "type": "string", "minLength": 16, "writeOnly": True}}}}


@pytest.mark.parametrize("section", [
    "{token: hunter2}", "{token: HUNTER2HUNTER2HUNTER2}", "{token: 42}",
    "{users: {alice: hunter2}}",
])
def test_a_bad_secret_is_named_never_shown(tmp_path, section):
    manager = PluginManager()
    manager.register(SecretPlugin(), name="secret")
    try:
        path = write(tmp_path, "bus.yaml", f"plugins:\n  secret: {section}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path, manager, environ={})
    finally:
        manager.unregister("secret")
    text = str(caught.value)
    assert "plugins.secret." in text and "(the value, hidden)" in text
    assert "hunter2" not in text.lower() and "42" not in text
