"""The orjson-backed codecs (`json` reading, `json-fast` both ways) decode every document to
exactly what the standard library decodes, refuse what it refuses, and write the same JSON
values, whatever the input: so whether orjson is installed never changes what a service
accepts or receives."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from bus_core.default_plugins.json_serializer import (
    FastJsonSerializer,
    JsonSerializer,
    StdlibJsonSerializer,
)

orjson = pytest.importorskip("orjson")

DOCUMENTS: list[bytes | str] = [
    b'{"a": 1}', b'{"a":1,"a":2}', b"[1, 2.5, -0, -0.0, 1e308, 1e400, -1e400, 1E2]",
    b"123456789012345678", b"1234567890123456789", b"12345678901234567890123",
    b"-99999999999999999999", b"[0.1, 1e-400]", b"NaN", b"[Infinity, -Infinity]",
    b'"\\ud800"', b'"\\ud83d\\ude00"', b'"\xc3\xa9"', b'"\xff"', b'"\\u0000"',
    b"\xef\xbb\xbf{}", b'{"a": [1, 2', b"", b"   ", b" {} ", b"[1,]", b"{'a': 1}",
    b"true", b"null", b'"' + b"x" * 10000 + b'"', b"[" * 5000 + b"]" * 5000,
    b"[" * 500 + b"]" * 500, '{"é": "ü∑ß 😀"}', '"\ud800"', b'{"a": 1} x',
    '{"a": 1}'.encode("utf-16"), b"[1.0, 100000000000000000000.0]",
]


def outcome(loads: Any, document: bytes | str) -> tuple[str, str]:
    try:
        return "value", repr(loads(document))
    except RecursionError:
        return "error", "RecursionError"
    except (ValueError, TypeError) as exc:
        return "error", type(exc).__name__


@pytest.mark.parametrize("codec", [JsonSerializer, FastJsonSerializer])
def test_every_document_decodes_as_the_standard_library_decodes_it(codec: type) -> None:
    fast, stdlib = codec(), StdlibJsonSerializer()
    assert fast.fast
    for document in DOCUMENTS:
        got, expected = outcome(fast.loads, document), outcome(stdlib.loads, document)
        assert got[0] == expected[0], document[:40]
        if got[0] == "value":
            assert got == expected, document[:40]


def test_json_still_writes_the_bytes_lightbus_writes() -> None:
    value = {"b": "é", "a": [1, True, None, 10 ** 30]}
    assert JsonSerializer().dumps(value) == StdlibJsonSerializer().dumps(value)


VALUES: list[Any] = [{"b": 1, "a": [1.5, None, True]}, {"é": "ü∑ß 😀"}, 10 ** 30, -(2 ** 64),
                     2 ** 63 - 1, "\ud800", [[[]]], {"nested": {"x": [0.1, 1e16, -0.0]}}, "",
                     {"k": None}]


def test_json_fast_writes_the_same_values_with_sorted_keys() -> None:
    fast = FastJsonSerializer()
    for value in VALUES:
        data = fast.dumps(value)
        assert json.loads(data) == value
        assert fast.loads(data) == value
    assert fast.dumps({"b": 1, "a": 2}) == b'{"a":2,"b":1}'


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {"a": [math.nan]},
                                 {"k": None, "v": math.inf}])
def test_json_fast_refuses_what_no_peer_could_read(bad: Any) -> None:
    with pytest.raises(ValueError):
        FastJsonSerializer().dumps(bad)


def test_json_fast_refuses_values_json_has_no_form_for() -> None:
    import datetime as dt

    for value in (dt.datetime(2026, 1, 1), object(), [dt.date(2026, 1, 1)]):
        with pytest.raises(TypeError):
            FastJsonSerializer().dumps(value)
    for keyed in ({1: "x"}, {1.5: "x"}, {True: "x"}):  # non-string keys: as the stdlib does
        assert FastJsonSerializer().dumps(keyed) == StdlibJsonSerializer().dumps(keyed)
