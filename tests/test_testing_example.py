"""examples/testing passes under pytest, with the fixtures bus-core's pytest11 entry point
provides (as in any project that installs bus-core)."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, run_python

pytestmark = pytest.mark.slow


def test_the_testing_example_passes() -> None:
    example = ROOT / "examples" / "testing"
    result = run_python("-m", "pytest", "-q", "-p", "no:cacheprovider", str(example),
                        cwd=example)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
