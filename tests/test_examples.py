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


def test_performance_example_fires_many_calls_locally_and_uses_the_fast_codec():
    result = run_python(str(ROOT / "examples" / "performance" / "fast_paths.py"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "fire_many: 1000 events fired and handled in order: ['o0', 'o1', 'o2'] ... o999" \
        in out
    assert "local call: shop.price(sku='tea', quantity=3) -> 28.5" in out
    assert "local call error: ValueError: quantity must be at least 1, not 0" in out
    assert "serializer json-fast, event loop uvloop" in out  # the dev set-up has [fast]
    assert "[performance] done" in out
