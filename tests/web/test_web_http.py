"""The console over HTTP (Starlette's TestClient, a memory bus with a real worker): who may
see it, CSRF on writes, read-only mode, bad input, and no credential in any answer."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from bus_web import Settings, create_app
from bus_web.security import COOKIE
from starlette.testclient import TestClient

import bus_core
from bus_core import Bus
from tests.apis import AuthApi
from tests.conftest import memory_config

TOKEN = "t" * 32
OTHER = "o" * 32


def console(bus: Bus, allow_writes: bool = True) -> TestClient:
    settings = Settings({"alice": TOKEN, "bob": OTHER}, allow_writes)
    return TestClient(create_app(bus, settings), base_url="http://127.0.0.1",
                      follow_redirects=False)


@pytest.fixture
def bus(broker_name: str) -> Iterator[Bus]:
    served = bus_core.create(memory_config(broker_name), service_name="auth_service")
    served.client.register_api(AuthApi())
    served.client.start_worker()
    yield served
    served.client.close()


def logged_in(client: TestClient, token: str = TOKEN) -> str:
    """Log in through the form; the page's CSRF token."""
    response = client.post("/login", data={"token": token})
    assert response.status_code == 303 and response.headers["location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    match = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def test_every_page_and_endpoint_needs_a_user(bus: Bus) -> None:
    client = console(bus)
    for path in ("/", "/apis/auth", "/workers", "/history", "/groups", "/dead-letters",
                 "/config"):
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=")
    for path in ("/api/workers", "/api/dead-letters"):
        assert client.get(path).status_code == 401
    for path in ("/api/call/auth/check_password", "/api/fire/auth/user_registered",
                 "/api/dead-letters/replay", "/api/config/check"):
        assert client.post(path, json={}).status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer nope"}).status_code == 303
    assert client.get("/?token=nope").status_code == 401
    wrong = client.post("/login", data={"token": "nope"})
    assert wrong.status_code == 401 and "not right" in wrong.text
    assert COOKIE not in wrong.cookies


def test_login_reads_only_a_small_token_form(bus: Bus) -> None:
    """/login answers anyone: it never takes an upload (spooled to disk) nor a big body."""
    client = console(bus)
    upload = client.post("/login", data={"token": TOKEN},
                         files={"f": ("x.bin", b"\0" * 100_000)})
    assert upload.status_code == 415 and COOKIE not in upload.cookies
    big = client.post("/login", data={"token": TOKEN, "pad": "x" * 100_000})
    assert big.status_code == 413 and COOKIE not in big.cookies
    assert client.post("/login", data={"token": TOKEN}).status_code == 303  # the form works


def test_login_goes_back_only_to_a_page_of_the_console(bus: Bus) -> None:
    for target, landing in (("/workers", "/workers"), ("//evil.example/x", "/"),
                            ("/\\evil.example", "/"), ("https://evil.example", "/")):
        client = console(bus)
        response = client.post("/login", params={"next": target}, data={"token": TOKEN})
        assert response.headers["location"] == landing, target


def test_token_url_logs_in_and_drops_the_token(bus: Bus) -> None:
    client = console(bus)
    response = client.get(f"/apis/auth?token={TOKEN}")
    assert response.status_code == 303 and response.headers["location"] == "/apis/auth"
    cookie = response.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    page = client.get("/apis/auth")
    assert page.status_code == 200 and "alice" in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "check_password" in page.text and "user_registered" in page.text
    for path in ("//evil.example/x", "/\\evil.example/x"):  # never another host
        away = console(bus).get(f"http://127.0.0.1{path}?token={TOKEN}")
        assert away.status_code == 303, path
        assert not away.headers["location"].startswith(("//", "/\\")), away.headers
    client.post("/logout", data={"csrf_token": re.search(
        r'name="csrf-token" content="([^"]+)"', page.text).group(1)})
    assert client.get("/apis/auth").status_code == 303  # the session is gone


def test_bearer_token_works_without_csrf(bus: Bus) -> None:
    client = console(bus)
    response = client.post("/api/call/auth/check_password",
                           json={"kwargs": {"username": "admin", "password": "secret"}},
                           headers={"Authorization": f"Bearer {OTHER}"})
    assert response.status_code == 200 and response.json() == {"result": True}


def test_writes_with_a_session_need_its_csrf_token(bus: Bus) -> None:
    client = console(bus)
    csrf = logged_in(client)
    body = {"kwargs": {"username": "admin", "password": "secret"}}
    refused = client.post("/api/call/auth/check_password", json=body)
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    wrong = client.post("/api/call/auth/check_password", json=body,
                        headers={"X-CSRF-Token": "x" + csrf})
    assert wrong.status_code == 403
    other = console(bus)  # another user's session token is no good here either
    assert client.post("/api/call/auth/check_password", json=body,
                       headers={"X-CSRF-Token": logged_in(other, OTHER)}).status_code == 403
    ok = client.post("/api/call/auth/check_password", json=body,
                     headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200 and ok.json() == {"result": True}
    assert client.post("/logout").status_code == 403  # a form post needs it too


def test_read_only_console_refuses_every_write(bus: Bus) -> None:
    client = console(bus, allow_writes=False)
    csrf = logged_in(client)
    headers = {"X-CSRF-Token": csrf}
    for path, body in (
            ("/api/call/auth/check_password", {"kwargs": {"username": "a", "password": "b"}}),
            ("/api/fire/auth/user_registered", {"kwargs": {"username": "a", "email": "b"}}),
            ("/api/dead-letters/replay", {"ids": ["1@x"]}),
            ("/api/dead-letters/purge", {"ids": ["1@x"]})):
        response = client.post(path, json=body, headers=headers)
        assert response.status_code == 403 and "read-only" in response.json()["error"], path
    page = client.get("/apis/auth").text
    assert "Read-only" in page and "disabled" in page
    # Checking a config writes nothing: allowed.
    check = client.post("/api/config/check", data={"config": "apis: {}\n"}, headers=headers)
    assert check.status_code == 200 and check.json()["valid"] is True


def test_bad_input_gets_a_clear_error(bus: Bus) -> None:
    client = console(bus)
    headers = {"X-CSRF-Token": logged_in(client)}

    def call(path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", headers)
        return client.post(path, **kwargs)

    not_json = call("/api/call/auth/check_password", content=b"{nope",
                    headers={**headers, "Content-Type": "application/json"})
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
    assert call("/api/call/auth/check_password", json=[1]).status_code == 400
    assert "kwargs must be" in call("/api/call/auth/check_password",
                                    json={"kwargs": [1]}).json()["error"]
    unknown = call("/api/call/nowhere/x", json={"kwargs": {}})
    assert unknown.status_code == 404 and "no API 'nowhere'" in unknown.json()["error"]
    assert call("/api/call/auth/nothing", json={"kwargs": {}}).status_code == 404
    invalid = call("/api/call/auth/check_password", json={"kwargs": {"username": 3}})
    assert invalid.status_code == 400
    messages = [e["message"] for e in invalid.json()["errors"]]
    assert "'password' is a required property" in messages
    assert "3 is not of type 'string'" in messages
    remote = call("/api/call/auth/fail", json={"kwargs": {"message": "out of stock"}})
    assert remote.status_code == 502
    assert remote.json()["error"] == "auth.fail() raised ValueError: out of stock"
    deep = call("/api/call/auth/check_password", headers={
        **headers, "Content-Type": "application/json"},
        content=b'{"kwargs": {"username": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}")
    assert deep.status_code == 400 and "deep" in deep.json()["error"], deep.text
    big = call("/api/call/auth/check_password", content=b"x" * (1024 * 1024 + 1),
               headers={**headers, "Content-Type": "application/json"})
    assert big.status_code == 413
    assert call("/api/dead-letters/replay", json={"ids": "1"}).status_code == 400
    assert call("/api/dead-letters/explode", json={"ids": ["1"]}).status_code == 404
    for filters in ({"event": 5}, {"api": ["auth"]}, {"since": 5}, {"until": {}},
                    {"limit": "many"}, {"api": "no such api"}, {"event": "auth.no such"}):
        refused = call("/api/dead-letters/purge", json={"ids": ["1"], **filters})
        assert refused.status_code == 400, (filters, refused.text)
        assert "Traceback" not in refused.text
    for query in ("limit=-5", "limit=0", "limit=many", "api=no%20such%20api",
                  "since=99999999999d", "until=9999999999w"):
        listed = client.get(f"/api/dead-letters?{query}")
        assert listed.status_code == 400, (query, listed.text)
    assert "limit" in client.get("/api/dead-letters?limit=many").json()["error"]
    assert call("/api/config/check", data={"config": "  "}).status_code == 400
    # A body over the limit is refused by its length, before its form is read (for the
    # CSRF field) into memory.
    oversized = client.post("/api/config/check", data={"config": "x" * (2 * 1024 * 1024)})
    assert oversized.status_code == 413, oversized.text
    for big in ({"data": {"config": "a: " + "x" * 300_000}},
                {"files": {"config": (None, "a: " + "x" * 300_000)}}):
        too_big = call("/api/config/check", **big)
        assert too_big.status_code in (400, 413), too_big.text
        assert "256" in too_big.json()["error"]  # JSON, saying why, as every endpoint
    bad_time = client.get("/history?api=auth&event=user_registered&since=yesterday")
    assert bad_time.status_code == 200 and "is not a time" in bad_time.text
    far = client.get("/history?api=auth&event=user_registered&since=99999999999d")
    assert far.status_code == 200 and "too far back" in far.text
    assert "is not a number" in client.get(
        "/history?api=auth&event=user_registered&limit=many").text
    # After all that, the console still calls.
    assert call("/api/call/auth/check_password",
                json={"kwargs": {"username": "admin", "password": "secret"}}).json() == {
        "result": True}


def test_fire_and_history_and_workers(bus: Bus) -> None:
    client = console(bus)
    headers = {"X-CSRF-Token": logged_in(client)}
    fired = client.post("/api/fire/auth/user_registered", headers=headers,
                        json={"kwargs": {"username": "ada", "email": "a@b"}})
    assert fired.status_code == 200 and fired.json()["id"]
    page = client.get("/history?api=auth&event=user_registered")
    assert page.status_code == 200 and "ada" in page.text and fired.json()["id"] in page.text
    assert "ada" not in client.get("/history?api=auth&event=user_registered&filter=zed").text
    assert client.get("/api/workers").json() == {"workers": []}  # bus-state is off here


def test_config_check_shows_paths_and_no_environment(bus: Bus,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUS_WEB_TEST_SECRET", "hunter2-secret")
    client = console(bus, allow_writes=False)
    headers = {"X-CSRF-Token": logged_in(client)}
    broken = client.post("/api/config/check", headers=headers,
                         data={"config": "apis:\n  default:\n    rpc_timeout: soon\n"})
    verdict = broken.json()
    assert broken.status_code == 200 and verdict["valid"] is False
    assert "apis.default.rpc_timeout" in verdict["output"]
    leak = client.post("/api/config/check", headers=headers, data={
        "config": "bus:\n  service_name: ${BUS_WEB_TEST_SECRET}\n"})
    assert "hunter2" not in leak.text
    for name in ("PATH", "HOME", "LANG", "PYTHONIOENCODING"):  # none of the host's either
        answer = client.post("/api/config/check", headers=headers, data={
            "config": f"bus:\n  service_name: ${{{name}}}\n"}).json()
        assert answer["valid"] is False, (name, answer)
        assert f"environment variable {name} is not set" in answer["output"], answer
    uploaded = client.post("/api/config/check", headers=headers,
                           data={"config": ""},
                           files={"file": ("bus.yaml", b"apis: {default: {rpc_timeout: 2}}\n")})
    assert uploaded.json()["valid"] is True, uploaded.json()


def test_no_redis_password_on_any_page(broker_name: str) -> None:
    """Transports that fail (Redis not there) say so without the URL's password."""
    secret_url = "redis://user:pa55word-xyz@127.0.0.1:9/0"
    config = memory_config(broker_name)
    config["apis"]["default"]["event_transport"] = {
        "redis": {"url": secret_url, "socket_timeout": 0.5}}
    bus = bus_core.create(config, service_name="web")
    try:
        bus.client.register_api(AuthApi())
        client = console(bus)
        headers = {"X-CSRF-Token": logged_in(client)}
        answers = [
            client.get("/history?api=auth&event=user_registered"),
            client.get("/dead-letters?api=auth"),
            client.get("/api/dead-letters?api=auth"),
            client.get("/groups"),
            client.get("/workers"),
            client.post("/api/fire/auth/user_registered", headers=headers,
                        json={"kwargs": {"username": "a", "email": "b"}}),
            client.post("/api/dead-letters/replay", headers=headers,
                        json={"ids": ["1-0"], "api": "auth"}),
        ]
        # Redis not there is the bus failing (502, as documented), not bad input (400).
        assert answers[-1].status_code == 502, answers[-1].text
        for answer in answers:
            assert "pa55word" not in answer.text, answer.text
        assert any("127.0.0.1" in a.text for a in answers)  # the errors do say where
    finally:
        bus.client.close()


def test_an_unreachable_shared_schema_is_said_not_hidden(broker_name: str) -> None:
    """Redis down for the shared schema: the pages say the schema could not be read
    (without the password) rather than that the bus has no API and no dead letter."""
    config = memory_config(broker_name)
    config["bus"]["schema"] = {"transport": {"redis": {
        "url": "redis://user:pa55word-xyz@127.0.0.1:9/0", "socket_timeout": 0.5}}}
    bus = bus_core.create(config, service_name="web")
    try:
        client = console(bus)
        logged_in(client)
        for path in ("/", "/dead-letters", "/apis/shop"):
            page = client.get(path).text
            assert "cannot read the shared schema" in page, (path, page)
            assert "127.0.0.1:9" in page and "pa55word" not in page, page
    finally:
        bus.client.close()


def test_dead_letters_page_lists_and_replays(make_bus: Callable[..., Bus]) -> None:
    import time

    from tests.core.dead_letter_scenario import Flaky

    bus = make_bus(max_deliveries=1)
    bus.client.register_api(AuthApi())
    flaky = Flaky()
    bus.auth.user_registered.listen(flaky, listener_name="welcome")
    bus.client.start_worker()
    client = console(bus)
    headers = {"X-CSRF-Token": logged_in(client)}
    bus.auth.user_registered.fire(username="ada", email="a@b")
    deadline = time.monotonic() + 5
    while not (rows := client.get("/api/dead-letters?api=auth").json()["dead_letters"]):
        assert time.monotonic() < deadline, "never dead-lettered"
        time.sleep(0.02)
    (row,) = rows
    assert "cannot welcome ada" in client.get("/dead-letters").text
    groups = client.get("/groups").text
    assert "svc-welcome" in groups and "auth.user_registered" in groups
    flaky.broken = False
    body = {"ids": [row["id"]], "api": "auth", "event": "user_registered"}
    done = client.post("/api/dead-letters/replay", headers=headers, json=body).json()
    assert done["outcomes"][0]["done"] is True
    deadline = time.monotonic() + 5
    while not flaky.handled:
        assert time.monotonic() < deadline, "the replay was never handled"
        time.sleep(0.02)
    again = client.post("/api/dead-letters/replay", headers=headers, json=body)
    assert again.status_code == 400 and "no dead letter" in again.json()["error"]


def test_env_is_untouched() -> None:
    assert "BUS_WEB_TEST_SECRET" not in os.environ


def _children() -> int:
    """How many processes this one has started and not yet reaped."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            count += int(fields[1]) == os.getpid()
    return count


def test_config_checks_run_a_few_at_a_time() -> None:
    """Each check is a Python process: a burst of them (any read-only user can send one)
    runs at most CHECKS_AT_ONCE at a time, and every one still gets its verdict."""
    import asyncio

    from bus_web import data

    async def burst() -> tuple[list[tuple[bool, str]], int]:
        peak = 0
        checks = asyncio.gather(*(data.check_config("apis: {}\n") for _ in range(6)))
        while not checks.done():
            peak = max(peak, _children())
            await asyncio.sleep(0.005)
        return await checks, peak

    before = _children()
    verdicts, peak = asyncio.run(burst())
    assert all(valid for valid, _ in verdicts), verdicts
    assert 0 < peak - before <= data.CHECKS_AT_ONCE, (peak, before)
