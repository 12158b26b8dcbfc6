"""RPC, result and event messages, and their Lightbus-compatible "blob" envelope.

Messages carry wire values (already JSON-safe, see `values.py`). The blob form is
`{"metadata": {...}, "kwargs": {...}}`; senders write exactly the metadata keys a Lightbus 1.x
peer accepts, receivers accept any extra key and refuse only what they cannot act on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bus_core.errors import MalformedMessage

RPC_METADATA_KEYS = ("id", "api_name", "procedure_name", "return_path")
# Message headers (W3C trace context, ...): a top-level "headers" object of a call blob and
# the empty-named field of a Redis event entry, places Lightbus 1.x peers ignore (see
# docs/protocol). Bounded as names and ids are: they come off the wire.
HEADERS_KEY = "headers"
MAX_HEADERS = 16
MAX_HEADER_LENGTH = 1024
EVENT_METADATA_KEYS = ("id", "api_name", "event_name", "version")

# Names and ids read off the wire are bounded: they reach Redis key names, logs and metrics.
MAX_NAME_LENGTH = 200
MAX_ID_LENGTH = 200
_NAME_CACHE_SIZE = 4096  # names seen valid; a hostile peer cannot grow it past this
_valid_api_names: set[str] = set()
_valid_member_names: set[str] = set()


_VARIANT = "89ab89ab89ab89ab"  # the RFC 4122 variant nibble for each random nibble


def new_message_id() -> str:
    """A fresh message id: a random (version 4) UUID in its canonical 36-character text form,
    formatted directly: a third of the cost of `str(uuid.uuid4())`, paid on every message."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16)]}{h[17:20]}-{h[20:]}"


@dataclass(slots=True)
class RpcMessage:
    """One call of `api_name.procedure_name(**kwargs)`, answered on `return_path`."""

    api_name: str
    procedure_name: str
    kwargs: dict[str, Any]
    id: str = field(default_factory=new_message_id)
    return_path: str = ""
    # Set by an RPC consumer that recorded which worker took the call (so its caller can
    # tell if that worker dies); the result transport then ends the record with the result.
    # Never on the wire.
    claim_recorded: bool = False
    # Set by a plugin (in bus_before_rpc_call) to send with the call; read on receipt.
    headers: dict[str, str] | None = None

    @property
    def canonical_name(self) -> str:
        return f"{self.api_name}.{self.procedure_name}"


@dataclass(slots=True)
class ResultMessage:
    """The outcome of one RPC: a wire value, or (error=True) the remote exception."""

    rpc_message_id: str
    result: Any
    error: bool = False
    trace: str | None = None
    id: str = field(default_factory=new_message_id)


@dataclass(slots=True)
class EventMessage:
    """One fired event; handlers get it as their first argument.

    `native_id` is the transport's own id for the entry (a Redis stream id, a memory offset)
    and `time` is when the transport accepted it, when the transport knows.
    """

    api_name: str
    event_name: str
    kwargs: dict[str, Any]
    id: str = field(default_factory=new_message_id)
    version: int = 1
    native_id: str | None = None
    time: datetime | None = None
    # Set by a plugin (in bus_before_event_fire) to send with the event; read on receipt.
    headers: dict[str, str] | None = None

    @property
    def canonical_name(self) -> str:
        return f"{self.api_name}.{self.event_name}"


def preview(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to about `limit` characters: wire text quoted, escaped (no line
    breaks, no control characters) and short, fit for a problem description or a log line."""
    text = repr(value[:limit + 1] if isinstance(value, (str, bytes)) else value)
    return text if len(text) <= limit else text[:limit] + "..."


def describe(exc: BaseException, limit: int = 200) -> str:
    """One short line about `exc` (its type too, unless it is a TypeError or ValueError,
    whose message says it all), escaped and cut to about `limit` characters: for problems
    caused by wire input, whose exception text may be huge or hold line breaks."""
    text = str(exc) if isinstance(exc, (TypeError, ValueError)) \
        else f"{type(exc).__name__}: {exc}"
    if len(text) <= limit and text.isprintable():
        return text
    return preview(text, limit)


def valid_api_name(name: str) -> bool:
    """True for a dotted name of ASCII identifiers (`auth`, `my_company.auth`), as Api
    classes declare them; checked on every message received, so names once seen valid are
    remembered (one set lookup)."""
    if name in _valid_api_names:
        return True
    if not (0 < len(name) <= MAX_NAME_LENGTH and name.isascii()
            and all(part.isidentifier() for part in name.split("."))):
        return False
    if len(_valid_api_names) < _NAME_CACHE_SIZE:
        _valid_api_names.add(name)
    return True


def valid_member_name(name: str) -> bool:
    """True for an RPC, event or parameter name: an ASCII identifier of bounded length."""
    if name in _valid_member_names:
        return True
    if not (0 < len(name) <= MAX_NAME_LENGTH and name.isascii() and name.isidentifier()):
        return False
    if len(_valid_member_names) < _NAME_CACHE_SIZE:
        _valid_member_names.add(name)
    return True


def valid_message_id(value: str) -> bool:
    """True for a message id Bus accepts from the wire: opaque, non-empty, at most
    MAX_ID_LENGTH characters, none of them a control (or other unprintable) character."""
    return 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


def names_problem(message_id: str, api_name: str, member_key: str, member: str) -> str | None:
    """Why the id and names of a received message cannot be used, or None when they can.
    The one check of names from the wire (RPC, event and Redis event decoding use it)."""
    if not valid_message_id(message_id):
        return f"id {preview(message_id)} is not a valid message id"
    if not valid_api_name(api_name):
        return f"api_name {preview(api_name)} is not a valid API name"
    if not valid_member_name(member):
        return f"{member_key} {preview(member)} is not a valid name"
    return None


def result_key(api_name: str, procedure_name: str, message_id: str) -> str:
    """The per-call result key of a call, as Lightbus callers name it: the part of the
    return path after the transport's scheme (`redis+key://`, `memory://`)."""
    return f"{api_name}.{procedure_name}:result:{message_id}"


def result_key_problem(key: str, message_id: str | None = None) -> str | None:
    """Why `key` is not a per-call result key `<api>.<rpc>:result:<id>` (of the call with
    `message_id`, when given), or None when it is one."""
    head, separator, key_id = key.partition(":result:")
    api_name, dot, procedure_name = head.rpartition(".")
    if not separator or not dot:
        return "not of the form <api>.<rpc>:result:<id>"
    if not (valid_api_name(api_name) and valid_member_name(procedure_name)
            and valid_message_id(key_id)):
        return "names or id in it are not valid"
    if message_id is not None and key_id != message_id:
        return "it is the result key of another call"
    return None


def valid_headers(value: Any) -> dict[str, str] | None:
    """`value` read off the wire as message headers, or None when it is not a small mapping
    of printable strings to printable strings (headers are advisory: bad ones are dropped,
    never a reason to refuse a message)."""
    if not isinstance(value, dict) or not value or len(value) > MAX_HEADERS:
        return None
    for key, item in value.items():
        if not (isinstance(key, str) and isinstance(item, str)
                and 0 < len(key) <= MAX_NAME_LENGTH and len(item) <= MAX_HEADER_LENGTH
                and key.isprintable() and item.isprintable()):
            return None
    return value


def _require_str(metadata: dict[str, Any], key: str, kind: str) -> str:
    value = metadata.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedMessage(
            f"{kind} message has no valid {key!r} in its metadata: {preview(value)}")
    return value


def _split_blob(blob: Any, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(blob, dict):
        raise MalformedMessage(f"{kind} message is not an object: {type(blob).__name__}")
    metadata, kwargs = blob.get("metadata"), blob.get("kwargs", {})
    if not isinstance(metadata, dict):
        raise MalformedMessage(f"{kind} message has no 'metadata' object")
    if not isinstance(kwargs, dict):
        raise MalformedMessage(f"{kind} message 'kwargs' is not an object")
    return metadata, kwargs


def rpc_to_blob(message: RpcMessage) -> dict[str, Any]:
    blob = {
        "metadata": {
            "id": message.id,
            "api_name": message.api_name,
            "procedure_name": message.procedure_name,
            "return_path": message.return_path,
        },
        "kwargs": message.kwargs,
    }
    if message.headers:  # beside metadata: a Lightbus worker refuses unknown metadata keys
        blob[HEADERS_KEY] = message.headers
    return blob


def rpc_from_blob(blob: Any) -> RpcMessage:
    """A received call; MalformedMessage if a field is missing, or its id or names are not
    valid (the return path is the result transport's to judge)."""
    if type(blob) is dict:  # the usual well-formed call, checked in one go
        metadata, kwargs = blob.get("metadata"), blob.get("kwargs", {})
        if type(metadata) is dict and type(kwargs) is dict:
            message_id, api_name = metadata.get("id"), metadata.get("api_name")
            procedure, return_path = metadata.get("procedure_name"), metadata.get("return_path")
            if type(message_id) is str and type(api_name) is str and type(procedure) is str \
                    and type(return_path) is str and message_id and api_name and procedure \
                    and return_path and names_problem(message_id, api_name, "procedure_name",
                                                      procedure) is None:
                message = RpcMessage(api_name=api_name, procedure_name=procedure,
                                     kwargs=kwargs, id=message_id, return_path=return_path)
                if HEADERS_KEY in blob:
                    message.headers = valid_headers(blob[HEADERS_KEY])
                return message
    return _rpc_from_any_blob(blob)


def _rpc_from_any_blob(blob: Any) -> RpcMessage:
    metadata, kwargs = _split_blob(blob, "RPC")
    message = RpcMessage(
        id=_require_str(metadata, "id", "RPC"),
        api_name=_require_str(metadata, "api_name", "RPC"),
        procedure_name=_require_str(metadata, "procedure_name", "RPC"),
        return_path=_require_str(metadata, "return_path", "RPC"),
        kwargs=kwargs,
    )
    if HEADERS_KEY in blob:
        message.headers = valid_headers(blob[HEADERS_KEY])
    problem = names_problem(message.id, message.api_name, "procedure_name",
                            message.procedure_name)
    if problem is not None:
        raise MalformedMessage(f"RPC message: {problem}")
    return message


def result_to_blob(message: ResultMessage) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "id": message.id,
        "rpc_message_id": message.rpc_message_id,
        "error": message.error,
    }
    if message.error:
        metadata["trace"] = message.trace or ""
    return {"metadata": metadata, "kwargs": {"result": message.result}}


def result_from_blob(blob: Any) -> ResultMessage:
    """A received result; MalformedMessage if a field is missing or an id is not valid."""
    if type(blob) is dict:  # the usual well-formed result, checked in one go
        metadata, kwargs = blob.get("metadata"), blob.get("kwargs", {})
        if type(metadata) is dict and type(kwargs) is dict:
            message_id, call_id = metadata.get("id"), metadata.get("rpc_message_id")
            error, trace = metadata.get("error", False), metadata.get("trace")
            if type(message_id) is str and type(call_id) is str and type(error) is bool \
                    and (trace is None or type(trace) is str) \
                    and valid_message_id(message_id) and valid_message_id(call_id):
                return ResultMessage(id=message_id, rpc_message_id=call_id, error=error,
                                     trace=trace, result=kwargs.get("result"))
    return _result_from_any_blob(blob)


def _result_from_any_blob(blob: Any) -> ResultMessage:
    metadata, kwargs = _split_blob(blob, "Result")
    trace = metadata.get("trace")
    message = ResultMessage(
        id=_require_str(metadata, "id", "Result"),
        rpc_message_id=_require_str(metadata, "rpc_message_id", "Result"),
        error=bool(metadata.get("error", False)),
        trace=trace if isinstance(trace, str) else None,
        result=kwargs.get("result"),
    )
    if not (valid_message_id(message.id) and valid_message_id(message.rpc_message_id)):
        raise MalformedMessage(f"Result message has an invalid id: {preview(message.id)}, "
                               f"{preview(message.rpc_message_id)}")
    return message


def event_to_blob(message: EventMessage) -> dict[str, Any]:
    blob = {
        "metadata": {
            "id": message.id,
            "api_name": message.api_name,
            "event_name": message.event_name,
            "version": message.version,
        },
        "kwargs": message.kwargs,
    }
    if message.headers:
        blob[HEADERS_KEY] = message.headers
    return blob


def event_from_blob(blob: Any) -> EventMessage:
    """A received event; MalformedMessage if a field is missing, the version is not an
    integer, or its id or names are not valid."""
    if type(blob) is dict:  # the usual well-formed event, checked in one go
        metadata, kwargs = blob.get("metadata"), blob.get("kwargs", {})
        if type(metadata) is dict and type(kwargs) is dict:
            message_id, api_name = metadata.get("id"), metadata.get("api_name")
            event_name, version = metadata.get("event_name"), metadata.get("version", 1)
            if type(message_id) is str and type(api_name) is str and type(event_name) is str \
                    and type(version) is int and message_id and api_name and event_name \
                    and names_problem(message_id, api_name, "event_name", event_name) is None:
                message = EventMessage(api_name=api_name, event_name=event_name, kwargs=kwargs,
                                       id=message_id, version=version)
                if HEADERS_KEY in blob:
                    message.headers = valid_headers(blob[HEADERS_KEY])
                return message
    return _event_from_any_blob(blob)


def _event_from_any_blob(blob: Any) -> EventMessage:
    metadata, kwargs = _split_blob(blob, "Event")
    try:
        version = int(metadata.get("version", 1))
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON 1e999
        raise MalformedMessage(
            f"Event message has a non-integer version: {preview(metadata.get('version'))}"
        ) from None
    message = EventMessage(
        id=_require_str(metadata, "id", "Event"),
        api_name=_require_str(metadata, "api_name", "Event"),
        event_name=_require_str(metadata, "event_name", "Event"),
        version=version,
        kwargs=kwargs,
    )
    if HEADERS_KEY in blob:
        message.headers = valid_headers(blob[HEADERS_KEY])
    problem = names_problem(message.id, message.api_name, "event_name", message.event_name)
    if problem is not None:
        raise MalformedMessage(f"Event message: {problem}")
    return message
