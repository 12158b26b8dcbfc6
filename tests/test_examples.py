"""The examples in examples/ run, and print what the README says they print."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, run_python

pytestmark = pytest.mark.slow


def test_quickstart_demo_prints_the_rpc_result_and_the_handled_event():
    result = run_python(str(ROOT / "examples" / "quickstart" / "demo.py"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "auth.check_password(username='admin', password='secret') -> True" in out
    assert "auth.check_password(username='admin', password='guess') -> False" in out
    assert "[listener] auth.user_registered" in out and "welcome ada <ada@example.com>" in out
    assert "[demo] done" in out
