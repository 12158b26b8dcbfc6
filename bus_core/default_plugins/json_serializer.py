"""The default serializer, `json`: the encoding Lightbus 1.x peers write and read.

Keys sorted, ASCII-only output (non-ASCII as \\uXXXX escapes: the bytes Lightbus writes), any
valid JSON accepted. With orjson installed (`pip install bus-core[fast]`), `json` decodes
through it, and `json-fast` also encodes through it (compact UTF-8: the same JSON values, so
Lightbus peers read them alike, in fewer bytes). Whatever orjson would treat differently from
the standard library goes through the standard library instead, so what is accepted, refused
and decoded never depends on whether orjson is there: integers past 64 bits (orjson reads them
as floats and cannot write them), NaN and infinity (orjson would write null), lone surrogates,
and the non-JSON literals the standard library reads. `json-stdlib` never uses orjson.
"""

from __future__ import annotations

import json
import re
from typing import Any

from bus_core.plugins import hookimpl

try:
    import orjson
except ImportError:  # pragma: no cover - the fast codec is optional
    orjson = None  # type: ignore[assignment]

_encoder = json.JSONEncoder(sort_keys=True, ensure_ascii=True, allow_nan=False)
_decode = json.loads
# orjson reads integers of 19 digits or more as floats when they pass 64 bits: those
# documents are left to the standard library, which keeps them exact.
_LONG_INTEGER = re.compile(rb"\d{19}")
_ORJSON_OPTIONS = 0 if orjson is None else (
    orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS)


class StdlibJsonSerializer:
    """Values in, bytes out. NaN and infinity are refused: no JSON peer could read them."""

    name = "json-stdlib"

    def dumps(self, value: Any) -> bytes:
        return _encoder.encode(value).encode("ascii")

    def loads(self, data: bytes | str) -> Any:
        return _decode(data)


class JsonSerializer(StdlibJsonSerializer):
    """`json`: writes exactly the bytes Lightbus writes (sorted keys, ASCII escapes); reads
    through orjson where installed and where it decodes exactly as the standard library."""

    name = "json"

    def __init__(self, fast: bool | None = None) -> None:
        self.fast = orjson is not None if fast is None else (fast and orjson is not None)

    def loads(self, data: bytes | str) -> Any:
        if self.fast:
            raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
            if not _LONG_INTEGER.search(raw):
                try:
                    return orjson.loads(raw)
                except orjson.JSONDecodeError:  # what orjson refuses, stdlib may accept
                    pass
        return _decode(data)


class FastJsonSerializer(JsonSerializer):
    """`json-fast`: also writes through orjson (compact UTF-8, keys sorted: the same JSON
    values, other bytes); the standard library writes what orjson would write differently."""

    name = "json-fast"

    def dumps(self, value: Any) -> bytes:
        if self.fast:
            try:
                data = orjson.dumps(value, option=_ORJSON_OPTIONS)
            except TypeError:  # big integers, lone surrogates, types JSON lacks: stdlib says
                pass
            else:
                # orjson writes NaN and infinity as null, where the standard library refuses
                if b"null" not in data:
                    return data
                super().dumps(value)  # raises on NaN or infinity
                return data
        return super().dumps(value)


@hookimpl
def bus_register_serializers(register: Any) -> None:
    register("json", JsonSerializer)
    register("json-fast", FastJsonSerializer)
    register("json-stdlib", StdlibJsonSerializer)
