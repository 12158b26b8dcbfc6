"""The serializer wrapper every transport gets: the configured serializer, with the
`bus.max_message_size` bound applied both ways."""

from __future__ import annotations

from typing import Any

from bus_core.errors import MalformedMessage, MessageTooLarge
from bus_core.messages import describe
from bus_core.transports import Serializer


class SizeLimitedSerializer:
    """Refuses to encode or decode anything above `max_size` bytes. Whatever the inner
    serializer raises (a RecursionError on deeply nested JSON, a third-party serializer's
    KeyError) comes out as MalformedMessage: one bad message is refused, nothing else."""

    def __init__(self, inner: Serializer, max_size: int) -> None:
        self.inner = inner
        self.max_size = max_size
        self.name = getattr(inner, "name", type(inner).__name__)

    def dumps(self, value: Any) -> bytes:
        try:
            data = self.inner.dumps(value)
        except Exception as exc:
            raise MalformedMessage(
                f"cannot encode message with {self.name}: {describe(exc)}") from None
        if len(data) > self.max_size:
            raise MessageTooLarge(
                f"message is {len(data)} bytes, above bus.max_message_size ({self.max_size})"
            )
        return data

    def loads(self, data: bytes | str) -> Any:
        if len(data) > self.max_size:
            raise MessageTooLarge(
                f"received message is {len(data)} bytes, above bus.max_message_size "
                f"({self.max_size})"
            )
        try:
            return self.inner.loads(data)
        except Exception as exc:
            raise MalformedMessage(
                f"cannot decode message with {self.name}: {describe(exc)}") from None
