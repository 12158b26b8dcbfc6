"""The console in a real browser (Debian's chromium driven by Playwright) against a real
`bus run` worker (examples/console) on a real redis-server, with `bus web` run as a user
runs it: log in, call an RPC through its form, see the schema refuse a bad one, fire an
event and find it in the history, watch a worker come and go, replay a dead letter and see
it handled, check a broken config."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser import BROWSER_ARGS, CHROMIUM, WAIT_MS, needs_chromium
from tests.conftest import ROOT
from tests.core.test_cli import Running
from tests.redis.conftest import RedisServer, free_port, stop_process

EXAMPLE = ROOT / "examples" / "console"

pytestmark = [pytest.mark.slow, needs_chromium]


@dataclass
class Setup:
    redis: RedisServer
    env: dict[str, str]
    down: Path  # while this file exists, the example's shipping listener fails
    url: str
    token: str


def start_console(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str, str]:
    """`bus web --allow-writes` from a folder without the service's code; (process, url,
    token) once it printed them."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bus_core.cli", "web", "--allow-writes", "-c",
         str(EXAMPLE / "bus.yaml")], cwd=folder, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen.append(line)
        found = re.search(r"(http://\S+/)\?token=(\S+)", line)
        if found:
            return process, found.group(1), found.group(2)
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError("bus web never printed its URL:\n" + "".join(seen))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("console")
    redis = RedisServer(free_port(), folder)
    redis.start()
    down = folder / "shipping-down"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "REDIS_URL": redis.url,
           "SHOP_SHIPPING_DOWN": str(down), "BUS_CONFIG": str(EXAMPLE / "bus.yaml")}
    worker = Running(["run"], cwd=EXAMPLE, env=env)
    console = None
    try:
        worker.wait_for("serving APIs [shop]")
        elsewhere = folder / "elsewhere"
        elsewhere.mkdir()
        console, url, token = start_console(elsewhere, env)
        yield Setup(redis, env, down, url, token)
    finally:
        stop_process(console)
        if worker.process.poll() is None:
            worker.stop()
        redis.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, setup: Setup) -> Iterator[Any]:
    """A logged-in page (its own browser context: its own cookies)."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    opened.goto(setup.url)
    opened.fill("#token", setup.token)
    opened.click("form.login button")
    opened.wait_for_selector("h1:has-text('APIs on the bus')")
    yield opened
    context.close()


def test_log_in_with_the_printed_token(browser: Any, setup: Setup) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(setup.url + "workers")
        assert "/login" in page.url
        page.fill("#token", "not-the-token")
        page.click("form.login button")
        assert page.locator("[role=alert]").inner_text() == "that token is not right"
        page.fill("#token", setup.token)
        page.click("form.login button")
        page.wait_for_selector("h1:has-text('Workers')")  # back where it was going
        page.goto(f"{setup.url}?token={setup.token}")  # the printed URL works as well
        assert page.url == setup.url and "token" not in page.url
        assert "shop" in page.locator("#apis").inner_text()
    finally:
        context.close()


def test_call_an_rpc_through_its_form(page: Any, setup: Setup) -> None:
    page.goto(setup.url + "apis/shop")
    form = page.locator("#rpc-price form")
    form.locator("[data-path=item]").fill("apple")
    form.locator("[data-path=qty]").fill("3")
    form.locator("[data-path=wrapping]").select_option('"gift"')
    form.locator("[data-path=deliver_on]").fill("2026-12-24")
    form.locator("button").click()
    outcome = form.locator("output")
    outcome.locator("text=Result:").wait_for()
    assert outcome.inner_text() == ('Result: {"deliver_on":"2026-12-24","item":"apple",'
                                    '"qty":3,"total":8.5}')


def test_an_invalid_form_shows_the_schemas_message(page: Any, setup: Setup) -> None:
    page.goto(setup.url + "apis/shop")
    form = page.locator("#rpc-tag form")
    form.locator("button").click()  # nothing filled in: checked in the page
    assert form.locator("output").inner_text() == "Check: tags: required"
    form.locator("[data-path=tags]").fill('["b", 7]')
    form.locator("button").click()
    outcome = form.locator("output.bad")
    outcome.locator("text=not of type").wait_for()
    assert outcome.inner_text() == "tags.1: 7 is not of type 'string'"
    form.locator("[data-path=tags]").fill('["b", "a"]')
    form.locator("button").click()
    form.locator("output.good").wait_for()
    assert form.locator("output").inner_text() == 'Result: ["a","b"]'


def test_fire_an_event_and_see_it_in_the_history(page: Any, setup: Setup) -> None:
    page.goto(setup.url + "apis/shop")
    form = page.locator("#event-shipped form")
    form.locator("[data-path=item]").fill("kettle")
    form.locator("[data-path=qty]").fill("2")
    form.locator("button").click()
    fired = form.locator("output.good")
    fired.wait_for()
    event_id = re.search(r"id ([0-9a-f-]{36})", fired.inner_text()).group(1)
    page.click("nav >> text=History")
    page.select_option("#history-api", "shop")
    page.fill("input[name=event]", "shipped")
    page.fill("input[name=filter]", "kettle")
    page.click("form.filters button")
    row = page.locator("#history tbody tr")
    assert row.count() == 1
    assert "shop.shipped" in row.inner_text() and '{"item": "kettle", "qty": 2}' in \
        row.inner_text()
    row.locator("summary").click()
    assert event_id in row.locator("pre").inner_text()


def test_watch_a_worker_come_and_go(page: Any, setup: Setup) -> None:
    page.goto(setup.url + "workers")
    second = Running(["run"], cwd=EXAMPLE, env=setup.env)
    try:
        second.wait_for("serving APIs [shop]")
        row = page.locator(f"#workers tr[data-process$='-{second.process.pid}']")
        row.wait_for()  # no reload: the page polls
        assert row.locator("td.status").inner_text() == "alive"
        assert second.stop(signal.SIGTERM) == 0
        page.locator(f"#workers tr[data-process$='-{second.process.pid}']"
                     "[data-status=stopped]").wait_for()
    finally:
        if second.process.poll() is None:
            second.process.kill()


def test_replay_a_dead_letter_and_see_it_handled(page: Any, setup: Setup) -> None:
    setup.down.touch()
    try:
        page.goto(setup.url + "apis/shop")
        form = page.locator("#event-ordered form")
        form.locator("[data-path=item]").fill("crate")
        form.locator("[data-path=qty]").fill("5")
        form.locator("button").click()
        form.locator("output.good").wait_for()
        row = page.locator("#dead-letters tr:has-text('crate')")
        deadline = time.monotonic() + 15
        while True:  # the worker dead-letters it after its first failed delivery
            page.goto(setup.url + "dead-letters?api=shop")
            if row.count():
                break
            assert time.monotonic() < deadline, "the event was never dead-lettered"
            time.sleep(0.2)
        assert "shipping is down, cannot ship 5 x crate" in row.locator(".reason").inner_text()
    finally:
        setup.down.unlink()
    row.locator("button[data-action=replay]").click()
    outcome = row.locator("output.good")
    outcome.wait_for()
    assert outcome.inner_text().startswith("replayed as entry ")
    assert row.locator("button[data-action=replay]").is_disabled()
    # Handled: the shipping listener fired shop.shipped for it.
    deadline = time.monotonic() + 15
    while True:
        page.goto(setup.url + "history?api=shop&event=shipped&filter=crate")
        if page.locator("#history tbody tr:has-text('crate')").count():
            break
        assert time.monotonic() < deadline, "the replayed event was never handled"
        time.sleep(0.2)
    page.goto(setup.url + "dead-letters?api=shop")
    assert page.locator("#dead-letters tr:has-text('crate')").count() == 0


def test_validate_a_broken_config(page: Any, setup: Setup) -> None:
    page.goto(setup.url + "config")
    page.fill("#config-text", "apis:\n  default:\n    rpc_timeout: soon\n")
    page.click("#config-form button")
    verdict = page.locator("#config-verdict")
    verdict.locator("p.error:text-is('Invalid')").wait_for()
    assert "apis.default.rpc_timeout" in verdict.locator("pre").inner_text()
    page.fill("#config-text", "apis:\n  default:\n    rpc_timeout: 5\n")
    page.click("#config-form button")
    verdict.locator("p.good:text-is('Valid')").wait_for()
    assert "valid" in verdict.locator("pre").inner_text()
