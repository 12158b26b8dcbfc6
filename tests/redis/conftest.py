"""A real redis-server for the Redis tests: started by the suite on a free loopback port
(one per test process), flushed before each test, stopped at the end. No test touches a
Redis it did not start."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

import bus_core
from bus_core import Bus


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """Terminate a server process this run started (kill it if it will not go)."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class RedisServer:
    """A redis-server process this test run owns."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()
    tls: tuple[Path, Path] | None = None  # (certificate, key): serve TLS only
    unix_socket: Path | None = None  # listen on this socket only, no TCP port
    password: str | None = None  # requirepass (and masterauth), known to client()

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `apt-get install redis-server` "
                        "(.ci/run does this)")
        ports = ["--port", str(self.port)]
        if self.unix_socket is not None:
            ports = ["--port", "0", "--unixsocket", str(self.unix_socket),
                     "--unixsocketperm", "700"]
        if self.tls:
            cert, key = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                     "--tls-auth-clients", "no"]
        self.process = subprocess.Popen(
            [binary, *ports, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), "--protected-mode", "no",
             "--logfile", str(self.folder / "redis.log"), *self.extra,
             *(("--requirepass", self.password, "--masterauth", self.password)
               if self.password else ())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = self.client(socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except (redis.exceptions.ResponseError, redis.exceptions.AuthenticationError):
                break  # up, but wants a password: that is for the test to use
            except (redis.exceptions.ConnectionError, FileNotFoundError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                    where = self.unix_socket or f"port {self.port}"
                    pytest.fail(f"redis-server did not start on {where}:\n{log}")
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def client(self, **options: Any) -> redis.Redis:
        if self.password is not None:
            options.setdefault("password", self.password)
        if self.unix_socket is not None:
            return redis.Redis(unix_socket_path=str(self.unix_socket), **options)
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.tls[0]))
        return redis.Redis(host="127.0.0.1", port=self.port, **options)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test alone, for tests that stop or restart it."""
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, emptied for this test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def raw(redis_server: RedisServer, redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test server, for looking at what Bus wrote."""
    client = redis_server.client()
    yield client
    client.close()


def redis_config(url: str, **api_default: Any) -> dict[str, Any]:
    transport = {"redis": {"url": url}}
    return {
        "bus": {"schema": {"transport": transport}, "drain_timeout": 5},
        "apis": {"default": {
            "rpc_transport": transport, "result_transport": transport,
            "event_transport": transport, "rpc_timeout": 3, "redelivery_delay": 0,
            **api_default,
        }},
    }


@pytest.fixture
def make_redis_bus(redis_url: str) -> Iterator[Callable[..., Bus]]:
    """make_redis_bus(service_name=..., config=..., **apis_default) -> Bus on the test Redis."""
    made: list[Bus] = []

    def make(*, service_name: str = "svc", process_name: str | None = None,
             config: dict[str, Any] | None = None, plugins: Any = (), **api_default: Any) -> Bus:
        bus = bus_core.create(config or redis_config(redis_url, **api_default),
                              service_name=service_name, process_name=process_name,
                              plugins=plugins)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.client.close()


def assert_round_trip(url: str) -> None:
    """A worker and a caller on `url`: an RPC is answered and a fired event reaches the
    worker's listener (which leaves `auth.*:stream` behind, to see where Bus wrote)."""
    import threading

    from tests.apis import AuthApi

    server = bus_core.create(redis_config(url), service_name="round_trip_server")
    caller = bus_core.create(redis_config(url), service_name="round_trip_caller")
    heard: list[dict[str, Any]] = []
    got = threading.Event()

    def welcome(event: Any, **kwargs: Any) -> None:
        heard.append(kwargs)
        got.set()

    try:
        server.client.register_api(AuthApi())
        server.auth.user_registered.listen(welcome, listener_name="welcome")
        server.client.start_worker()
        assert caller.auth.check_password(username="admin", password="secret") is True
        server.auth.user_registered.fire(username="ada", email="a@b")
        assert got.wait(10), f"the event never came back over {url.split('://')[0]}://"
        assert heard == [{"username": "ada", "email": "a@b"}]
    finally:
        caller.client.close()
        server.client.close()
