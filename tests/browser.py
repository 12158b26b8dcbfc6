"""What the browser tests share: Debian's Chromium (never a downloaded browser), launched
headless with the flags this closed network needs, and the mark that skips them, saying
why, where it is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying hosts this network refuses.
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
WAIT_MS = 15_000

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="browser tests need Debian's chromium at /usr/bin/chromium "
                                  "(apt-get install chromium; .ci/run installs it)")
