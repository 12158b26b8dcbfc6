"""Take the screenshots of docs/howto/console.md from the real console.

    .venv/bin/python plugins/web/screenshots.py [OUT_FOLDER]   # default docs/howto/console

Starts its own redis-server on a free loopback port, the shop of examples/console under
`bus run`, and `bus web --allow-writes`; drives Debian's chromium (Playwright) through the
pages the how-to shows (making an RPC call, a fired event and a dead letter on the way);
writes one PNG per page; stops everything it started.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "console"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BUS = [sys.executable, "-m", "bus_core.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_line(process: subprocess.Popen[str], pattern: str, timeout: float = 30
                  ) -> re.Match[str]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        found = re.search(pattern, line)
        if found:
            return found
        if not line and process.poll() is not None:
            break
    raise SystemExit(f"never saw {pattern!r} from {process.args}")


def stop(process: subprocess.Popen[Any] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def shoot(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bus-web-shots-"))
    port = free_port()
    redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port",
                              str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                              "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    down = folder / "shipping-down"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "SHOP_SHIPPING_DOWN": str(down), "BUS_CONFIG": str(EXAMPLE / "bus.yaml")}
    worker = console = None
    try:
        time.sleep(0.3)
        worker = subprocess.Popen([*BUS, "run"], cwd=EXAMPLE, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for_line(worker, r"serving APIs")
        console = subprocess.Popen([*BUS, "web", "--allow-writes"], cwd=folder, env=env,
                                   text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url, token = wait_for_line(console, r"(http://\S+/)\?token=(\S+)").groups()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.set_default_timeout(15_000)
            page.goto(url)
            page.screenshot(path=out / "login.png")
            page.fill("#token", token)
            page.click("form.login button")
            page.wait_for_selector("#apis")
            page.screenshot(path=out / "apis.png")

            page.goto(url + "apis/shop")
            form = page.locator("#rpc-price form")
            form.locator("[data-path=item]").fill("apple")
            form.locator("[data-path=qty]").fill("3")
            form.locator("button").click()
            form.locator("output.good").wait_for()
            tag = page.locator("#rpc-tag form")
            tag.locator("[data-path=tags]").fill('["b", 7]')
            tag.locator("button").click()
            tag.locator("output.bad").wait_for()
            page.locator("#rpc-price").screenshot(path=out / "call.png")
            page.locator("#rpc-tag").screenshot(path=out / "invalid.png")

            down.touch()
            ordered = page.locator("#event-ordered form")
            ordered.locator("[data-path=item]").fill("crate")
            ordered.locator("[data-path=qty]").fill("5")
            ordered.locator("button").click()
            ordered.locator("output.good").wait_for()
            page.goto(url + "workers")
            page.wait_for_selector("#workers tr[data-status=alive]")
            page.screenshot(path=out / "workers.png")
            page.goto(url + "history?api=shop&event=ordered")
            page.screenshot(path=out / "history.png")
            page.goto(url + "groups")
            page.screenshot(path=out / "groups.png")
            deadline = time.monotonic() + 15
            while True:
                page.goto(url + "dead-letters?api=shop")
                if page.locator("#dead-letters tr:has-text('crate')").count():
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("the event was never dead-lettered")
                time.sleep(0.2)
            down.unlink()
            page.screenshot(path=out / "dead-letters.png")

            page.goto(url + "config")
            page.fill("#config-text", "apis:\n  default:\n    rpc_timeout: soon\n")
            page.click("#config-form button")
            page.wait_for_selector("#config-verdict pre")
            page.screenshot(path=out / "config.png")
            browser.close()
    finally:
        stop(console)
        stop(worker)
        stop(redis)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"wrote {len(list(out.glob('*.png')))} screenshots to {out}")


if __name__ == "__main__":
    shoot(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "howto" / "console")
