"""The landing page's example runs and prints what the page says it prints."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import run_python

ROOT = Path(__file__).resolve().parents[2]


def landing_example() -> str:
    text = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- landing-example -->\n```python\n(.*?)^```", text, re.S | re.M)
    assert found, "docs/index.md lost its <!-- landing-example --> python block"
    return found.group(1)


def test_the_landing_example_calls_and_hears_in_one_process(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(landing_example(), encoding="utf-8")
    result = run_python(str(script), cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["True", "welcome ada"]


def test_the_landing_page_names_the_two_commands_and_the_benchmark() -> None:
    text = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    for command in ("python3 dev.py demo", "python3 dev.py test", "python3 dev.py bench"):
        assert command in text
