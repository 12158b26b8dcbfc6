"""The default serializer, `json`: the encoding Lightbus 1.x peers write and read.

Keys sorted, ASCII-only output (non-ASCII as \\uXXXX escapes), any valid JSON accepted.
"""

from __future__ import annotations

import json
from typing import Any

from bus_core.plugins import hookimpl

_encoder = json.JSONEncoder(sort_keys=True, ensure_ascii=True, allow_nan=False)
_decode = json.loads


class JsonSerializer:
    """Values in, bytes out. NaN and infinity are refused: no JSON peer could read them."""

    name = "json"

    def dumps(self, value: Any) -> bytes:
        return _encoder.encode(value).encode("ascii")

    def loads(self, data: bytes | str) -> Any:
        return _decode(data)


@hookimpl
def bus_register_serializers(register: Any) -> None:
    register("json", JsonSerializer)
