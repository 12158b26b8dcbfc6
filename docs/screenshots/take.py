"""Screenshots of the docs site's landing page, at desktop and phone widths, for the README.

    .venv/bin/python docs/screenshots/take.py        # builds the site, writes the two PNGs

Builds the site with mkdocs into a temporary folder, serves it on a free loopback port and
drives Debian's chromium (`/usr/bin/chromium`) through Playwright. The helpers here are also
what tests/docs/test_site_browser.py uses, so the screenshots show what the test checks.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SHOTS = {"landing-desktop.png": DESKTOP, "landing-phone.png": PHONE}


def build_site(destination: Path) -> Path:
    """`mkdocs build --strict` of the checkout into `destination`; returns it."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([str(mkdocs), "build", "--strict", "--quiet", "-d",
                             str(destination)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"mkdocs build failed:\n{result.stdout}\n{result.stderr}")
    return destination


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve `folder` on a free loopback port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def launch(playwright: Any) -> Any:
    """Headless chromium, Debian's build (no browser download)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)


def take(base_url: str, folder: Path = HERE) -> list[Path]:
    """The landing page at each width in SHOTS, first screen only, light scheme."""
    from playwright.sync_api import sync_playwright

    written = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            for name, viewport in SHOTS.items():
                page = browser.new_page(viewport=viewport, color_scheme="light",
                                        device_scale_factor=1)
                page.goto(base_url, wait_until="networkidle")
                path = folder / name
                page.screenshot(path=str(path))
                page.close()
                written.append(path)
        finally:
            browser.close()
    return written


def main() -> int:
    if not CHROMIUM.exists():
        print("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as temporary:
        site = build_site(Path(temporary) / "site")
        with serve(site) as url:
            for path in take(url):
                print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
