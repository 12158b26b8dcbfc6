"""Log formatters that show what a line is about: the API, RPC or event, and message id.

While the client sends a call or an event, and while a worker handles one, the message is the
*current message* (a context variable): every line logged meanwhile, by Bus, a transport, a
plugin or the handler's own code, is about it. A line may also say so explicitly with
`extra={"bus": {...}}`. These formatters print that context; `MessageContextFilter` puts it
on the record for other formatters.

    handler.setFormatter(TextFormatter())   # ... [api=auth rpc=check_password id=...]
    handler.setFormatter(JsonFormatter())   # {"time": ..., "api_name": "auth", ...}
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from bus_core.messages import EventMessage, RpcMessage

T = TypeVar("T")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_SHORT = {"api_name": "api", "procedure_name": "rpc", "event_name": "event",
          "listener_name": "listener", "message_id": "id"}


current_message: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "bus_current_message", default=None)


def message_fields(message: RpcMessage | EventMessage, **more: Any) -> dict[str, Any]:
    """The log context of a message: api_name, procedure_name or event_name, message_id."""
    fields = {"api_name": message.api_name, "message_id": message.id}
    name = getattr(message, "procedure_name", None)
    if name is not None:
        fields["procedure_name"] = name
    else:
        fields["event_name"] = getattr(message, "event_name", None)
    fields.update(more)
    return fields


def about(message: RpcMessage | EventMessage, **more: Any) -> contextvars.Token[Any]:
    """Make `message` the current message; undo with `current_message.reset(token)`."""
    return current_message.set(message_fields(message, **more))


def annotate(**fields: Any) -> None:
    """Add `fields` (a plugin's trace_id and span_id, say) to the current message's log
    context, for as long as that message is current; nothing when no message is in hand."""
    current = current_message.get()
    if current is not None:
        current.update(fields)


async def detached(awaitable: Awaitable[T]) -> T:
    """Run `awaitable` about no message: wrap the body of a long-lived task that may be
    started while one message is in hand (a reply reader, an acknowledgement flusher), so
    its log lines do not carry that message's context for ever after."""
    current_message.set(None)  # the task's own copy of the context
    return await awaitable


def bus_context(record: logging.LogRecord) -> dict[str, Any]:
    """The message a log record is about: its own `bus` extra, else the current message
    (empty when it is about none)."""
    context = getattr(record, "bus", None)
    if isinstance(context, dict):
        return dict(context)
    current = current_message.get()
    return dict(current) if current else {}


class MessageContextFilter(logging.Filter):
    """Sets `record.bus` from the current message, for formatters other than Bus's own
    (add it to a handler; `configure()` does)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(getattr(record, "bus", None), dict):
            current = current_message.get()
            if current:
                record.bus = dict(current)
        return True


# Control characters (line breaks above all) escaped in text logs: a name or value from the
# wire that reaches a log line can then never start a forged line of its own.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, 0x85)}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
                 0x2028: "\\u2028", 0x2029: "\\u2029"})


def one_line(text: str) -> str:
    """`text` with every line break and other control character escaped."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """Human-readable lines, with a `[api=... rpc=... id=...]` suffix about the message.

    The message and the context are escaped to one line (a traceback, added below, is the
    only thing that spans lines), so text read off the wire cannot forge a log line."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = bus_context(record)
        if not context:
            return text
        order = [*(key for key in _SHORT if key in context),
                 *(key for key in context if key not in _SHORT)]
        suffix = one_line(" ".join(f"{_SHORT.get(key, key)}={context[key]}" for key in order
                                   if context[key] is not None))
        first, newline, rest = text.partition("\n")  # keep a traceback below the suffix
        return f"{first} [{suffix}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the message's context fields
    (`api_name`, `procedure_name` / `event_name`, `message_id`, ...) and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in bus_context(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for `bus.log_format`: "text" (the default) or "json"."""
    if log_format == "json":
        return JsonFormatter()
    if log_format in ("text", "", None):
        return TextFormatter()
    raise ValueError(f"unknown log format {log_format!r}: use 'text' or 'json'")


def configure(level: str = "INFO", log_format: str = "text") -> None:
    """Log to stderr at `level` in `log_format`, replacing the root logger's handlers."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    handler.addFilter(MessageContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


class Throttle:
    """At most one log line per `interval` seconds for a kind of trouble that outside input
    can repeat at will (a flood of malformed replies must not flood the log); the next line
    says how many were left out meanwhile."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._next = 0.0
        self.suppressed = 0

    def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        now = self.clock()
        if now < self._next:
            self.suppressed += 1
            return
        self._next = now + self.interval
        if self.suppressed:
            message += f" (and {self.suppressed} more like it in the last %gs)"
            args = (*args, self.interval)
            self.suppressed = 0
        self.logger.warning(message, *args, **kwargs)
