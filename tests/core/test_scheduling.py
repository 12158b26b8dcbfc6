"""Cron schedules (`schedule()`) and single-process tasks (`single=True`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from bus_core import Bus
from bus_core.client import ScheduledTask, next_cron_time
from bus_core.errors import InvalidArguments
from tests.helpers import WAIT, count_single_task_runs, eventually, serving, wait_for_runs

UTC = timezone.utc


def test_next_cron_time_is_strictly_after_the_moment() -> None:
    moment = datetime(2026, 1, 1, 12, 3, 10, tzinfo=UTC)
    assert next_cron_time("*/5 * * * *", None, moment) == datetime(2026, 1, 1, 12, 5,
                                                                   tzinfo=UTC)
    on_the_dot = datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
    assert next_cron_time("*/5 * * * *", None, on_the_dot) == on_the_dot + timedelta(minutes=5)


def test_a_naive_moment_is_taken_as_utc() -> None:
    assert next_cron_time("0 * * * *", None, datetime(2026, 1, 1, 12, 30)) == datetime(
        2026, 1, 1, 13, 0, tzinfo=UTC)


def test_tz_names_the_zone_of_the_expression() -> None:
    moment = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)  # 09:00 in Tokyo (UTC+9)
    fire = next_cron_time("0 10 * * *", "Asia/Tokyo", moment)
    assert fire.astimezone(UTC) == datetime(2026, 1, 1, 1, 0, tzinfo=UTC)


def test_next_delay_of_a_cron_task_and_of_an_interval_task() -> None:
    cron = ScheduledTask(print, 0.0, False, False, cron="*/5 * * * *")
    assert cron.next_delay(datetime(2026, 1, 1, 12, 4, 30, tzinfo=UTC)) == 30.0
    interval = ScheduledTask(print, 7.0, False, False)
    assert interval.next_delay() == 7.0


def test_schedule_registers_a_cron_task(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()

    @bus.client.schedule("*/5 * * * *", single=True)
    def report() -> None: ...

    (task,) = bus.client.scheduled
    assert (task.cron, task.tz, task.single, task.function) == ("*/5 * * * *", None, True,
                                                                report)


@pytest.mark.parametrize(("expression", "why"), [
    ("not cron", "it has 2 field(s)"),
    ("61 * * * *", "a field is out of range or not understood"),
    ("* * *", "it has 3 field(s)")])
def test_an_invalid_expression_is_refused_when_decorating(make_bus: Callable[..., Bus],
                                                          expression: str, why: str) -> None:
    bus = make_bus()
    with pytest.raises(InvalidArguments) as refused:
        bus.client.schedule(expression)
    assert str(refused.value).startswith(
        f"schedule({expression!r}): not a valid cron expression: {why}; use five fields")
    assert bus.client.scheduled == []


def test_an_unknown_zone_is_refused(make_bus: Callable[..., Bus]) -> None:
    with pytest.raises(InvalidArguments, match="Mars/Olympus"):
        make_bus().client.schedule("* * * * *", tz="Mars/Olympus")


async def test_a_cron_task_runs_at_its_time_with_a_fake_clock(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    ran = asyncio.Event()
    runs: list[int] = []

    @bus.client.schedule("* * * * *")
    async def minutely() -> None:
        runs.append(1)
        ran.set()

    worker = bus.client.worker()
    worker.now = lambda: datetime(2026, 1, 1, 12, 0, 59, 990000, tzinfo=UTC)  # 10 ms to go
    await worker.start()
    try:
        await asyncio.wait_for(ran.wait(), WAIT)
        await asyncio.sleep(0.05)  # the next time is a (fake) minute away
    finally:
        await worker.stop()
    assert runs == [1]


async def test_a_raising_cron_task_is_logged_and_scheduled_again(
        make_bus: Callable[..., Bus], caplog: pytest.LogCaptureFixture) -> None:
    bus = make_bus()
    runs: list[int] = []
    clock = [datetime(2026, 1, 1, 12, 0, 59, 995000, tzinfo=UTC)]

    @bus.client.schedule("* * * * *")
    def failing() -> None:
        runs.append(1)
        clock[0] += timedelta(minutes=1)  # time moves on to 5 ms before the next minute
        raise RuntimeError("boom")

    worker = bus.client.worker()
    worker.now = lambda: clock[0]
    await worker.start()
    try:
        await eventually(lambda: len(runs) >= 2)
    finally:
        await worker.stop()
    assert any("failing" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_a_worker_without_tasks_runs_no_cron_tasks(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()

    @bus.client.schedule("* * * * *")
    def never() -> None: ...

    async with serving(bus, tasks=False) as worker:
        assert not any(loop.name.startswith("cron:") for loop in worker._loops)
    async with serving(bus) as worker:
        assert any(loop.name == "cron:" + never.__qualname__ for loop in worker._loops)


# -- single=True -------------------------------------------------------------------------------


async def test_a_single_task_runs_in_one_of_two_workers(make_bus: Callable[..., Bus],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bus.worker")
    buses = [make_bus(process_name=f"p{i}") for i in range(2)]
    runs = count_single_task_runs(buses)
    async with serving(buses[0]), serving(buses[1]):
        await wait_for_runs(runs, 6)
        await eventually(lambda: any("another process holds its lock" in r.getMessage()
                                     for r in caplog.records))
    assert len(set(runs)) == 1, runs


async def test_the_other_worker_takes_over_when_the_holder_stops(
        make_bus: Callable[..., Bus]) -> None:
    buses = [make_bus(process_name=f"p{i}") for i in range(2)]
    runs = count_single_task_runs(buses)

    first = buses[0].client.worker()
    await first.start()
    try:
        await eventually(lambda: "p0" in runs)
        async with serving(buses[1]):
            await first.stop()  # releases the lock at once
            await eventually(lambda: "p1" in runs)
    finally:
        await first.stop()
    index = runs.index("p1")
    assert set(runs[:index]) == {"p0"} and set(runs[index:]) == {"p1"}


async def test_the_memory_lock_expires_and_is_kept_by_its_owner(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    state = await bus.client.state()
    transport = await state.transport("rpc", "default")
    assert await transport.try_lock("job", "a", 0.05)
    assert not await transport.try_lock("job", "b", 0.05)
    assert await transport.try_lock("job", "a", 0.05)  # its owner extends it
    await transport.unlock("job", "b")  # not b's to release
    assert not await transport.try_lock("job", "b", 0.05)
    await transport.unlock("job", "a")
    assert await transport.try_lock("job", "b", 0.01)
    await asyncio.sleep(0.02)  # the lock's expiry: nothing to await
    assert await transport.try_lock("job", "a", 1)


async def test_a_single_cron_task_skips_when_another_holds_the_lock(
        make_bus: Callable[..., Bus]) -> None:
    bus = make_bus(process_name="p0")
    other = make_bus(process_name="p1")
    state = await other.client.state()
    transport = await state.transport("rpc", "default")
    runs: list[int] = []
    clock = [datetime(2026, 1, 1, 12, 0, 59, 995000, tzinfo=UTC)]
    attempts = asyncio.Event()

    @bus.client.schedule("* * * * *", single=True)
    def report() -> None:
        runs.append(1)

    worker = bus.client.worker()
    worker.now = lambda: clock[0]
    assert await transport.try_lock(report.__qualname__, "someone else", 60)
    worker_transport = await (await bus.client.state()).transport("rpc", "default")
    original = worker_transport.try_lock

    async def counting(name: str, owner: str, ttl: float) -> bool:
        taken = await original(name, owner, ttl)
        attempts.set()
        return taken

    worker_transport.try_lock = counting  # type: ignore[method-assign]
    await worker.start()
    try:
        await asyncio.wait_for(attempts.wait(), WAIT)
    finally:
        await worker.stop()
    assert runs == []
