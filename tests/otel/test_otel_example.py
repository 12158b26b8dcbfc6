"""examples/tracing/demo.py runs and prints the request's trace, and the listener's receive
span that its process span links to, to the console."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import ROOT, run_python


def printed_spans(text: str) -> list[dict[str, Any]]:
    """The JSON objects ConsoleSpanExporter printed one after another."""
    decoder, spans, index = json.JSONDecoder(), [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        span, index = decoder.raw_decode(text, index)
        spans.append(span)
    return spans


def test_tracing_demo_prints_one_trace_and_a_linked_receive_span():
    result = run_python(str(ROOT / "examples" / "tracing" / "demo.py"))
    assert result.returncode == 0, result.stderr
    spans = printed_spans(result.stdout)
    assert sorted(s["name"] for s in spans) == sorted([
        "signup", "publish auth.user_registered", "receive auth.user_registered",
        "process auth.user_registered", "auth/check_password", "auth/check_password"])
    (receive,) = [s for s in spans if s["name"].startswith("receive ")]
    (process,) = [s for s in spans if s["name"].startswith("process ")]
    request = [s for s in spans if s is not receive]
    trace_ids = {s["context"]["trace_id"] for s in request}
    assert len(trace_ids) == 1  # the request's trace; the receive span starts its own
    assert receive["context"]["trace_id"] not in trace_ids and receive["parent_id"] is None
    assert [link["context"]["span_id"] for link in process["links"]] == [
        receive["context"]["span_id"]]
    (line,) = [json.loads(text) for text in result.stderr.splitlines()
               if '"welcoming ada"' in text]
    assert f"0x{line['trace_id']}" in trace_ids and line["span_id"]
