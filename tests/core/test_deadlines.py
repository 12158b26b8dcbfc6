"""The shared time limits of the message path (bus_core.deadlines.within) behave as
asyncio's own: what finishes in time is untouched, what does not gets TimeoutError (and
its task lives on), a cancellation from elsewhere stays a cancellation, and limits of any
mix of durations and orders expire on time."""

from __future__ import annotations

import asyncio
import time

import pytest

from bus_core import deadlines
from bus_core.deadlines import within


async def test_in_time_is_untouched_and_late_is_a_timeout() -> None:
    assert await within(asyncio.sleep(0.01, result="done"), 1.0) == "done"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(asyncio.sleep(10), 0.05)
    assert 0.04 <= time.monotonic() - started < 1.0
    await asyncio.sleep(0.01)  # the task is not left cancelled
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_many_limits_of_one_duration_each_expire_on_their_own() -> None:
    async def one(delay: float) -> str:
        try:
            return await within(asyncio.sleep(delay, result="ok"), 0.5)
        except TimeoutError:
            return "timeout"

    # in time by far, or late by far: a loaded machine cannot blur the two
    delays = [0.0, 5.0, 0.001, 5.0, 0.002, 0.0, 5.0] * 20
    started = time.monotonic()
    outcomes = await asyncio.gather(*(one(d) for d in delays))
    assert outcomes == ["timeout" if d > 1 else "ok" for d in delays]
    assert time.monotonic() - started < 4  # the late ones were cut at their limit


async def test_durations_mixed_and_started_out_of_order() -> None:
    async def one(limit: float, delay: float) -> str:
        await asyncio.sleep(0.001)
        try:
            return await within(asyncio.sleep(delay, result="ok"), limit)
        except TimeoutError:
            return "timeout"

    cases = [(1.0, 0.01), (0.3, 5.0), (0.6, 0.0), (0.9, 5.0), (0.3, 0.001)]
    outcomes = await asyncio.gather(*(one(limit, delay) for limit, delay in cases))
    assert outcomes == ["ok", "timeout", "ok", "timeout", "ok"]


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    task = asyncio.ensure_future(within(asyncio.sleep(10), 5.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_error_inside_passes_through() -> None:
    async def fail() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        await within(fail(), 1.0)


async def test_odd_durations_beyond_the_bound_still_time_out(monkeypatch) -> None:
    monkeypatch.setattr(deadlines, "MAX_DURATIONS", 1)
    await within(asyncio.sleep(0), 0.5)  # takes the one queue
    with pytest.raises(TimeoutError):
        await within(asyncio.sleep(10), 0.05)  # asyncio's own limit
