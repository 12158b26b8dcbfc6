"""The Redis event transport's one-pass decoding of a stream entry gives exactly what its
general decoding gives, for every kind of entry: well formed, each field missing, empty,
not UTF-8, not JSON, nested past the parser, too large, with headers good and bad, with
extra fields. (No server needed: decoding is pure.)"""

from __future__ import annotations

import itertools
from typing import Any

from bus_redis.event import RedisEventTransport

from bus_core.default_plugins.json_serializer import JsonSerializer
from bus_core.serialization import SizeLimitedSerializer

GOOD: dict[bytes, bytes] = {b"id": b"2e35fc7f-aede-4305-b211-e46e05e836cf", b"api_name": b"auth",
                            b"event_name": b"user_registered", b"version": b"1",
                            b":username": b'"ada"', b":email": b'"a@x"'}
BAD_VALUES = [b"", b"\xff\xfe", b"not json", b"[" * 5000 + b"]" * 5000, b"1e999", b"NaN",
              b"x" * 3000, b" 2 ", b"1_0", b"-1", b'"\\ud800"', b"\xef\xbc\x91"]


def variants() -> list[dict[Any, Any] | None]:
    found: list[dict[Any, Any] | None] = [None, {}, {b"": b""}, GOOD, dict(GOOD, extra=b"x")]
    for key in GOOD:
        found.append({k: v for k, v in GOOD.items() if k != key})
        for value in BAD_VALUES:
            found.append({**GOOD, key: value})
    for headers in (b'{"traceparent": "00-a"}', b"[1]", b"\xff", b"{" * 3000, b""):
        found.append({**GOOD, b"": headers})
    found.append({k.decode(): v for k, v in GOOD.items()})  # text field names
    found.append({**GOOD, b":caf\xc3\xa9": b"1", b":\xff": b"2"})
    return found


def outcome(delivery: Any) -> Any:
    if delivery is None:
        return None
    message = delivery.message
    return (delivery.problem, delivery.native_id, delivery.stream, delivery.delivery_count,
            None if message is None else (message.id, message.api_name, message.event_name,
                                          message.version, message.kwargs, message.headers,
                                          message.native_id, message.time))


def test_one_pass_decoding_matches_the_general_decoding_for_every_kind_of_entry() -> None:
    transport = RedisEventTransport(url="redis://127.0.0.1:1/0", service_name="svc",
                                    process_name="p",
                                    serializer=SizeLimitedSerializer(JsonSerializer(), 2048))
    general = RedisEventTransport(url="redis://127.0.0.1:1/0", service_name="svc",
                                  process_name="p",
                                  serializer=SizeLimitedSerializer(JsonSerializer(), 2048))
    general._decode = general._decode_fields  # type: ignore[method-assign]
    for fields, count in itertools.product(variants(), (1, 3)):
        expected = outcome(general.decode("auth.*:stream", "1700000000000-0", fields, count))
        got = outcome(transport.decode("auth.*:stream", "1700000000000-0", fields, count))
        assert got == expected, fields
