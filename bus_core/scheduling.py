"""Scheduled tasks: functions a worker runs every interval or at the times of a cron
expression (`bus.client.every(...)`, `bus.client.schedule(...)`)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from datetime import datetime, timezone, tzinfo
from typing import Any, TypeVar

from bus_core.errors import InvalidArguments
from bus_core.runtime import is_async_callable

T = TypeVar("T")


@dataclasses.dataclass
class ScheduledTask:
    """A function run while a worker runs: every `seconds`, or at the times of `cron`.

    `single` tasks run in one process of the service at a time (a lock on the transport)."""

    function: Callable[..., Any]
    seconds: float
    also_run_immediately: bool
    is_async: bool
    cron: str | None = None
    tz: str | None = None
    single: bool = False

    @property
    def name(self) -> str:
        return getattr(self.function, "__qualname__", repr(self.function))

    def next_delay(self, moment: datetime | None = None) -> float:
        """Seconds from `moment` (default: now) to the next run; the interval for every()."""
        if self.cron is None:
            return self.seconds
        moment = moment or datetime.now(timezone.utc)
        fire = next_cron_time(self.cron, self.tz, moment)
        return max(0.0, (fire - moment).total_seconds())


def _zone(tz: str | None) -> tzinfo:
    if tz is None or tz.upper() == "UTC":
        return timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArguments(f"schedule(tz={tz!r}): unknown time zone") from None


def next_cron_time(expression: str, tz: str | None, moment: datetime) -> datetime:
    """The first time strictly after `moment` that the cron `expression` names (in `tz`)."""
    from croniter import croniter

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    fire = croniter(expression, moment.astimezone(_zone(tz))).get_next(datetime)
    return typing.cast(datetime, fire)


def _check_cron(expression: str, tz: str | None) -> None:
    from croniter import croniter

    _zone(tz)
    if not isinstance(expression, str) or not croniter.is_valid(expression):
        why = ""
        if isinstance(expression, str):
            fields = expression.split()
            why = (f"it has {len(fields)} field(s); " if len(fields) != 5
                   else "a field is out of range or not understood; ")
        raise InvalidArguments(
            f"schedule({expression!r}): not a valid cron expression: {why}use five fields "
            "'minute hour day-of-month month day-of-week', e.g. '*/5 * * * *'"
        )


def every(scheduled: list[ScheduledTask], interval: float, also_run_immediately: bool,
          single: bool) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """The decorator `bus.client.every(...)` returns: adds its function to `scheduled`."""
    if interval <= 0:
        raise InvalidArguments("every() needs a positive interval, e.g. every(seconds=30)")

    def decorate(function: Callable[..., T]) -> Callable[..., T]:
        scheduled.append(ScheduledTask(function, interval, also_run_immediately,
                                       is_async_callable(function), single=single))
        return function

    return decorate


def on_cron(scheduled: list[ScheduledTask], cron: str, tz: str | None,
            single: bool) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """The decorator `bus.client.schedule(...)` returns: adds its function to `scheduled`."""
    _check_cron(cron, tz)

    def decorate(function: Callable[..., T]) -> Callable[..., T]:
        scheduled.append(ScheduledTask(function, 0.0, False, is_async_callable(function),
                                       cron=cron, tz=tz, single=single))
        return function

    return decorate
