"""Log formatters that show what a line is about: the API, RPC or event, and message id.

The worker passes `extra={"bus": {"api_name": ..., "procedure_name" | "event_name": ...,
"message_id": ...}}` on every line about a message; these formatters print it.

    handler.setFormatter(TextFormatter())   # ... [api=auth rpc=check_password id=...]
    handler.setFormatter(JsonFormatter())   # {"time": ..., "api_name": "auth", ...}
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_SHORT = {"api_name": "api", "procedure_name": "rpc", "event_name": "event",
          "listener_name": "listener", "message_id": "id"}


def bus_context(record: logging.LogRecord) -> dict[str, Any]:
    """The `bus` context a log record carries (empty when it is about no message)."""
    context = getattr(record, "bus", None)
    return dict(context) if isinstance(context, dict) else {}


class TextFormatter(logging.Formatter):
    """Human-readable lines, with a `[api=... rpc=... id=...]` suffix about the message."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = bus_context(record)
        if not context:
            return text
        order = [*(key for key in _SHORT if key in context),
                 *(key for key in context if key not in _SHORT)]
        suffix = " ".join(f"{_SHORT.get(key, key)}={context[key]}" for key in order
                          if context[key] is not None)
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
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
