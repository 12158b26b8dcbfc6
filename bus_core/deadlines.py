"""Time limits for the many short awaits of the message path (each fire within
`event_fire_timeout`), sharing one timer per duration and loop.

`asyncio.timeout` arms and cancels a timer per await: a heap push and pop on every message.
Here a limit is an entry appended to the FIFO queue of its duration (entries of one duration
expire in the order they were made); one timer per queue wakes at the earliest deadline
still outstanding. Expiry cancels the waiting task and the await raises TimeoutError, as
with `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import weakref
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class _Limit:
    __slots__ = ("active", "deadline", "expired", "task")

    def __init__(self, deadline: float, task: asyncio.Task[object]) -> None:
        self.deadline = deadline
        self.task = task
        self.active = True
        self.expired = False


class _Queue:
    """The outstanding limits of one duration on one loop, oldest first."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self.loop = loop
        self.seconds = seconds
        self.limits: collections.deque[_Limit] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, task: asyncio.Task[object]) -> _Limit:
        limits = self.limits
        while limits and not limits[0].active:  # finished ones at the front: drop them now
            limits.popleft()
        limit = _Limit(self.loop.time() + self.seconds, task)
        limits.append(limit)
        if self.timer is None:
            self.timer = self.loop.call_at(limit.deadline, self._expire)
        return limit

    def _expire(self) -> None:
        self.timer = None
        now = self.loop.time()
        limits = self.limits
        while limits:
            head = limits[0]
            if not head.active:
                limits.popleft()
            elif head.deadline <= now:
                limits.popleft()
                head.active = False
                head.expired = True
                head.task.cancel()
            else:
                self.timer = self.loop.call_at(head.deadline, self._expire)
                return


MAX_DURATIONS = 64  # queues per loop; other durations (odd bus_options) use asyncio's own
_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Queue]] = (
    weakref.WeakKeyDictionary())


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """`await awaitable`, or TimeoutError once `seconds` have passed (it is cancelled)."""
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - not in a task (a bare coroutine driven by hand)
        return await asyncio.wait_for(awaitable, seconds)
    if seconds not in _queues.get(task.get_loop(), {}) and \
            len(_queues.get(task.get_loop(), {})) >= MAX_DURATIONS:
        return await _own_limit(awaitable, seconds)
    loop = task.get_loop()
    queues = _queues.get(loop)
    if queues is None:
        queues = _queues[loop] = {}
    queue = queues.get(seconds)
    if queue is None:
        queue = queues[seconds] = _Queue(loop, seconds)
    limit = queue.add(task)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if not limit.expired:
            raise
        if sys.version_info >= (3, 11):
            task.uncancel()
        raise TimeoutError from None
    finally:
        limit.active = False


if sys.version_info >= (3, 11):
    async def _own_limit(awaitable: Awaitable[T], seconds: float) -> T:
        """A limit with a timer of its own (asyncio.timeout: no extra task)."""
        async with asyncio.timeout(seconds):
            return await awaitable
else:  # pragma: no cover - Python 3.10
    async def _own_limit(awaitable: Awaitable[T], seconds: float) -> T:
        return await asyncio.wait_for(awaitable, seconds)
