"""examples/django as docs/howto/django.md runs it: the accounts service under `bus run`,
the Django app under gunicorn (2 gthread workers), driven over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import ROOT
from tests.core.test_cli import Running
from tests.outbox.conftest import postgres as postgres  # a fixture, used by name
from tests.outbox.postgres import PostgresServer
from tests.redis.conftest import free_port

pytestmark = pytest.mark.slow
EXAMPLE = ROOT / "examples" / "django"
GUNICORN = Path(sys.executable).parent / "gunicorn"


def stop(process: subprocess.Popen[Any], timeout: float = 10) -> int:
    """SIGTERM, wait, SIGKILL if it does not go; the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def http(method: str, url: str, data: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one request; error statuses are returned, not raised."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


class Gunicorn:
    """gunicorn serving the example on a free loopback port, its output in a file."""

    def __init__(self, env: dict[str, str], log: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("w") as out:
            # --no-control-socket: gunicorn's default control socket is one path per user,
            # which parallel test processes would fight over.
            self.process = subprocess.Popen(
                [str(GUNICORN), "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{self.port}",
                 "--workers", "2", "--worker-class", "gthread", "--threads", "4",
                 "--no-control-socket", *extra, "project.wsgi"],
                cwd=EXAMPLE, env=env, stdout=out, stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until_up(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if http("GET", f"{self.url}/health/", timeout=1)[0] == 200:
                    return
            except (OSError, ValueError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not answer:\n{self.output()}")
            time.sleep(0.05)


def wait_for_outbox(outbox: Path, usernames: set[str], timeout: float = 15
                    ) -> list[dict[str, Any]]:
    """The welcome emails the service's listener wrote, once all of `usernames` are there."""
    deadline = time.monotonic() + timeout
    while True:
        lines = outbox.read_text().splitlines() if outbox.exists() else []
        emails = [json.loads(line) for line in lines]
        if usernames <= {email["username"] for email in emails}:
            return emails
        if time.monotonic() > deadline:
            raise AssertionError(f"welcome emails for {sorted(usernames)} not all written; "
                                 f"outbox: {lines}")
        time.sleep(0.05)


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "BUS_CONFIG": "bus.yaml",
        "REDIS_URL": redis_url,
        "BUS_RPC_TIMEOUT": "1",  # the 504 case waits this long
        "ACCOUNTS_OUTBOX": str(tmp_path / "outbox.jsonl"),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
    }


@pytest.fixture
def accounts_worker(env: dict[str, str]) -> Iterator[Running]:
    worker = Running(["run", "--bus", "services.bus"], cwd=EXAMPLE, env=env)
    try:
        worker.wait_for("serving APIs [accounts], listeners [send_welcome_email]")
        yield worker
    finally:
        stop(worker.process)


def test_views_call_the_service_and_fire_its_event(env, accounts_worker, tmp_path):
    outbox = Path(env["ACCOUNTS_OUTBOX"])
    server = Gunicorn(env, tmp_path / "gunicorn.log")
    try:
        server.wait_until_up()

        # The RPC's result comes back in the response; the event reaches the listener.
        status, body = http("POST", f"{server.url}/signup/",
                            {"username": "ada", "email": "ada@example.com"})
        assert status == 201, body
        assert body["user"] == {"id": 1, "username": "ada", "email": "ada@example.com"}
        assert http("GET", f"{server.url}/users/ada/") == (200, {"user": body["user"]})
        [email] = wait_for_outbox(outbox, {"ada"})
        assert email["event_id"] == body["event_id"]
        assert (email["user_id"], email["to"]) == (1, "ada@example.com")

        # Several request threads of both worker processes at once.
        names = [f"user{i}" for i in range(16)]
        with ThreadPoolExecutor(len(names)) as pool:
            results = list(pool.map(
                lambda n: http("POST", f"{server.url}/signup/",
                               {"username": n, "email": f"{n}@example.com"}), names))
        assert [status for status, _ in results] == [201] * len(names), results
        assert sorted(body["user"]["id"] for _, body in results) == list(range(2, 18))
        emails = wait_for_outbox(outbox, set(names))
        assert len(emails) == 1 + len(names)  # each event handled once

        # Remote errors: the expected ones by the view, the rest by the middleware.
        status, body = http("POST", f"{server.url}/signup/",
                            {"username": "ada", "email": "ada2@example.com"})
        assert (status, body["error"]) == (409, "conflict"), body
        assert http("GET", f"{server.url}/users/nobody/") == (
            404, {"error": "not_found", "message": "no user 'nobody'"})
        status, body = http("POST", f"{server.url}/signup/",
                            {"username": "bob", "email": "bob"})
        assert status == 502, body
        assert body == {"error": "remote_error",
                        "message": "accounts.create_user() failed: ValueError: 'bob' is not "
                                   "an email address"}
        assert "Traceback" not in json.dumps(body)  # the trace is logged, not sent

        # No worker serving accounts: the view answers 504 after rpc_timeout.
        assert stop(accounts_worker.process) == 0
        started = time.monotonic()
        status, body = http("GET", f"{server.url}/users/ada/")
        assert status == 504, body
        assert body["error"] == "timeout"
        assert "got no result within 1s" in body["message"]
        assert time.monotonic() - started < 5
    finally:
        code = stop(server.process)
    output = server.output()
    assert code == 0, output
    # worker_exit closed the client of each worker process.
    assert output.count("closed the bus client of process") == 2, output


def test_preload_forks_before_the_client_connects(env, accounts_worker, tmp_path):
    server = Gunicorn(env, tmp_path / "gunicorn.log", "--preload")
    try:
        server.wait_until_up()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(
                lambda n: http("POST", f"{server.url}/signup/",
                               {"username": f"p{n}", "email": f"p{n}@example.com"}), range(8)))
        assert [status for status, _ in results] == [201] * 8, results
        assert http("GET", f"{server.url}/users/p3/")[0] == 200
        wait_for_outbox(Path(env["ACCOUNTS_OUTBOX"]), {f"p{n}" for n in range(8)})
    finally:
        code = stop(server.process)
    assert code == 0, server.output()


# -- transactional events: the orders app on PostgreSQL with the outbox (outbox.yaml) ------


@pytest.fixture
def database_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh database for Django's tables and the outbox, dropped afterwards."""
    import psycopg

    name = f"shop_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    yield postgres.dsn(name)
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def outbox_env(env: dict[str, str], database_url: str) -> dict[str, str]:
    env = {**env, "BUS_CONFIG": "outbox.yaml", "DATABASE_URL": database_url,
           "BUS_LOG_LEVEL": "INFO"}
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--no-input"],
                             cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    return env


def test_an_order_and_its_event_commit_together_and_the_listener_ships_once(
        outbox_env, postgres, tmp_path):
    import psycopg

    worker = Running(["run", "--bus", "orders.listeners"], cwd=EXAMPLE, env=outbox_env)
    server = Gunicorn(outbox_env, tmp_path / "gunicorn.log")
    try:
        worker.wait_for("listeners [ship_order]")
        worker.wait_for("relaying public.bus_outbox")  # it made the tables and relays
        server.wait_until_up()
        status, body = http("POST", f"{server.url}/orders/", {"item": "tea", "quantity": "2"})
        assert status == 201, body
        order_id, event_id = body["order"]["id"], body["event_id"]

        # A late failure inside the transaction: no order row, no event.
        status, body = http("POST", f"{server.url}/orders/", {"item": "tea", "quantity": "500"})
        assert (status, body["error"]) == (400, "bad_request"), body

        def shipment(number: int) -> Any:
            found = http("GET", f"{server.url}/orders/{number}/")[1].get("shipment")
            return found

        deadline = time.monotonic() + 15
        while shipment(order_id) is None:
            assert time.monotonic() < deadline, worker.seen
            time.sleep(0.05)
        assert shipment(order_id) == {"event_id": event_id}

        with psycopg.connect(outbox_env["DATABASE_URL"]) as conn:
            rows = conn.execute("SELECT message_id, sent_at IS NOT NULL FROM bus_outbox"
                                ).fetchall()
            assert rows == [(event_id, True)]  # the rolled-back order wrote nothing
            assert conn.execute("SELECT count(*) FROM orders_order").fetchone() == (1,)
            # A relay crash after publishing, before marking: published again, same id ...
            conn.execute("UPDATE bus_outbox SET sent_at = NULL")
            conn.commit()
            deadline = time.monotonic() + 15
            while conn.execute("SELECT count(*) FROM bus_outbox WHERE sent_at IS NULL"
                               ).fetchone() != (0,):
                assert time.monotonic() < deadline
                conn.commit()
                time.sleep(0.05)
            conn.commit()
            # ... and the inbox acknowledges the repeat without running the handler (which
            # would fail on the one-to-one shipment, and be retried, not acknowledged).
            with redis.Redis.from_url(outbox_env["REDIS_URL"]) as raw:
                stream = "orders.*:stream"
                assert [f[b"id"].decode() for _, f in raw.xrange(stream)] == [event_id] * 2
                last = raw.xrevrange(stream, count=1)[0][0]

                def repeat_acknowledged() -> bool:
                    group = next(g for g in raw.xinfo_groups(stream)
                                 if b"ship_order" in g["name"])
                    return group["last-delivered-id"] == last and group["pending"] == 0

                deadline = time.monotonic() + 15
                while not repeat_acknowledged():
                    assert time.monotonic() < deadline, raw.xinfo_groups(stream)
                    time.sleep(0.05)
            assert conn.execute("SELECT count(*) FROM orders_shipment").fetchone() == (1,)
            assert conn.execute("SELECT service_name, listener_name, message_id "
                                "FROM bus_inbox").fetchall() == [
                ("orders", "ship_order", event_id)]
    finally:
        code = stop(server.process)
        worker_code = worker.stop()
    output = server.output() + "\n".join(worker.seen)
    assert worker_code == 0 and code == 0, output
    assert "IntegrityError" not in output  # the handler never ran for the repeat
    assert postgres.password not in output
