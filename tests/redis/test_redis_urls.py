"""Redis URLs: every malformed one is refused when the config is loaded (create(),
`bus config check`), naming the setting and never the password; unix:// socket URLs work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from bus_redis.connection import SharedClient, url_problem

import bus_core
from bus_core import ConfigError
from bus_core.config import load_config
from bus_core.plugins import PluginManager
from tests.redis.conftest import RedisServer, assert_round_trip, redis_config

SECRET = "s3cret-pa55"
URL_PATH = "apis.default.event_transport.redis.url"

BAD_URLS = {
    "redis://127.0.0.1:99999/0": "port 99999 is out of range 1-65535",
    "redis://127.0.0.1:0/0": "port 0 is out of range",
    "redis://127.0.0.1:63x9/0": "port '63x9' is not a number",
    "redis://[::1": "'[' without its ']'",
    "redis://[::1]x/0": "malformed host",
    "redis://127.0.0.1:6379/0?db=abc": "option db: 'abc' is not a database number",
    "redis://127.0.0.1:6379?socket_timeout=abc": "option socket_timeout: 'abc' is not a "
                                                 "positive number",
    "redis://127.0.0.1:6379?socket_timeout=nan": "option socket_timeout: 'nan'",
    "redis://127.0.0.1:6379?socket_connect_timeout=inf": "option socket_connect_timeout",
    "redis://127.0.0.1:6379?health_check_interval=1.5": "not a whole number",
    "redis://127.0.0.1:6379?socket_keepalive=maybe": "'maybe' is not true or false",
    "redis://127.0.0.1:6379/abc": "the path /abc is not a database number",
    "redis://127.0.0.1:6379/1/2": "the path /1/2 is not a database number",
    "redis://127.0.0.1:6379/99": "database 99 is out of range 0-15",
    "redis://127.0.0.1:6379/1?db=2": "'db' is given twice",
    "redis://127.0.0.1:6379/0?colour=blue": "unknown option 'colour' for redis://",
    "redis://127.0.0.1:6379/0?ssl_cert_reqs=none": "unknown option 'ssl_cert_reqs'",
    "rediss://127.0.0.1:6379/0?ssl_cert_reqs=sometimes": "'sometimes' is not one of",
    "redis://:6379/0": "no host",
    "redis://127.0.0.1:6379/0#top": "no #fragment",
    "unix://localhost/tmp/redis.sock": "three slashes",
    "unix://": "absolute path",
    "unix:///tmp/redis.sock?socket_keepalive=1": "unknown option 'socket_keepalive' for unix",
}

GOOD_URLS = [
    "redis://127.0.0.1:6379/0",
    "redis://localhost",
    "redis://redis.internal/15",
    f"redis://orders:{SECRET}@[::1]:6380/3?socket_timeout=2.5&health_check_interval=10",
    f"redis://127.0.0.1/0?password={SECRET}&client_name=shop&socket_keepalive=false",
    "rediss://cache.example:6380/1?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem",
    "unix:///run/redis/redis.sock",
    f"unix://:{SECRET}@/run/redis/redis.sock?db=2",
]


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager()


def with_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://user:{SECRET}@{rest}"


@pytest.mark.parametrize("url", list(BAD_URLS))
def test_a_bad_url_is_refused_at_load_with_its_setting(url, manager):
    expected = BAD_URLS[url]
    with pytest.raises(ConfigError) as caught:
        load_config(redis_config(url), manager, environ={})
    lines = str(caught.value).splitlines()
    for setting in (URL_PATH, "bus.schema.transport.redis.url"):
        assert any(line.strip().startswith(f"{setting}: ") and expected in line
                   for line in lines), (setting, lines)
    if not url.startswith("unix://"):  # the same with a password: never repeated
        with pytest.raises(ConfigError) as caught:
            bus_core.create(redis_config(with_password(url)), service_name="x")
        assert expected in str(caught.value) and SECRET not in str(caught.value)


@pytest.mark.parametrize("url", GOOD_URLS)
def test_good_urls_are_accepted(url, manager):
    assert url_problem(url) is None
    load_config(redis_config(url), manager, environ={})


def test_the_database_limit_follows_bus_redis_databases(monkeypatch):
    assert "out of range 0-15" in (url_problem("redis://h/16") or "")
    monkeypatch.setenv("BUS_REDIS_DATABASES", "64")
    assert url_problem("redis://h/16") is None
    assert "out of range 0-63" in (url_problem("redis://h/64") or "")


async def test_a_transport_made_in_code_with_a_bad_url_says_so():
    with pytest.raises(ConfigError, match=r"Redis URL redis://u:\*\*\*@h:99999/0: port 99999"):
        SharedClient(f"redis://u:{SECRET}@h:99999/0", 4, None)


NUMBERS = [
    ("rpc_transport", "blocking_timeout"),
    ("event_transport", "blocking_timeout"),
    ("event_transport", "claim_idle"),
    ("event_transport", "reclaim_interval"),
    ("result_transport", "result_ttl"),
    ("rpc_transport", "socket_timeout"),
]


@pytest.mark.parametrize("transport,option", NUMBERS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_transport_options_are_refused(transport, option, value, manager):
    config = redis_config("redis://127.0.0.1:6379/0")
    config["apis"]["default"][transport] = {"redis": {"url": "redis://127.0.0.1/0",
                                                      option: value}}
    with pytest.raises(ConfigError, match=rf"apis.default.{transport}.redis.{option}: "
                                          rf"-?(nan|inf) is not a"):
        load_config(config, manager, environ={})


def test_bus_config_check_refuses_bad_urls_and_accepts_unix_ones(tmp_path):
    def check(url: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "bus.yaml"
        path.write_text(f"apis:\n  default:\n    event_transport: {{redis: {{url: '{url}'}}}}\n")
        return subprocess.run([sys.executable, "-m", "bus_core.cli", "config", "check",
                               str(path)], capture_output=True, text=True, timeout=60)

    bad = check(with_password("redis://127.0.0.1:99999/0"))
    assert bad.returncode == 1
    assert f"{URL_PATH}: port 99999 is out of range 1-65535" in bad.stderr
    assert SECRET not in bad.stdout + bad.stderr
    good = check("unix:///run/redis/redis.sock?db=0")
    assert good.returncode == 0 and "valid" in good.stdout, good.stderr


# -- unix sockets, with a real redis-server --------------------------------------------------


@pytest.fixture
def unix_socket_server() -> Iterator[Path]:
    """A redis-server listening on a unix socket only (no TCP port)."""
    folder = Path(tempfile.mkdtemp(prefix="bus-redis-"))  # short: socket paths are limited
    server = RedisServer(0, folder, unix_socket=folder / "redis.sock")
    server.start()
    try:
        yield folder / "redis.sock"
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_events_and_rpcs_over_a_unix_socket(unix_socket_server):
    url = f"unix://{unix_socket_server}?db=2"
    assert_round_trip(url)
    with redis.Redis(unix_socket_path=str(unix_socket_server), db=2) as raw:
        assert raw.exists("auth.*:stream")  # it used database 2, as the URL says
    assert os.path.exists(unix_socket_server)
