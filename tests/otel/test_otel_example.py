"""examples/tracing/demo.py runs and prints one trace to the console."""

from __future__ import annotations

import json
import re

from tests.conftest import ROOT, run_python


def test_tracing_demo_prints_one_trace_with_five_spans():
    result = run_python(str(ROOT / "examples" / "tracing" / "demo.py"))
    assert result.returncode == 0, result.stderr
    names = re.findall(r'^    "name": "([^"]+)"', result.stdout, re.MULTILINE)
    assert sorted(names) == sorted(["signup", "publish auth.user_registered",
                                    "process auth.user_registered", "auth/check_password",
                                    "auth/check_password"])
    trace_ids = set(re.findall(r'"trace_id": "0x([0-9a-f]{32})"', result.stdout))
    assert len(trace_ids) == 1
    (line,) = [json.loads(text) for text in result.stderr.splitlines()
               if '"welcoming ada"' in text]
    assert line["trace_id"] in trace_ids and line["span_id"]
