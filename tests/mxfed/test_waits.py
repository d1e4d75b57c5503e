"""mxfed.waits: a bounded wait whose cancellation is never lost."""

from __future__ import annotations

import asyncio
import sys

import pytest

from mxfed.waits import event_set_within


async def _cancelled_as_the_event_is_set(wait: asyncio.Task[object], event: asyncio.Event) -> None:
    await asyncio.sleep(0)  # the task is waiting
    event.set()
    wait.cancel()  # in the same turn as the event


async def test_a_cancellation_that_comes_with_the_event_is_not_lost() -> None:
    event = asyncio.Event()
    wait = asyncio.create_task(event_set_within(event, 60))
    await _cancelled_as_the_event_is_set(wait, event)
    with pytest.raises(asyncio.CancelledError):
        await wait


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for rewritten in Python 3.12")
async def test_asyncio_wait_for_loses_it_on_python_3_11() -> None:
    """Why the helper exists (and ruff bans asyncio.wait_for outside the tests)."""
    event = asyncio.Event()
    wait = asyncio.create_task(asyncio.wait_for(event.wait(), 60))
    await _cancelled_as_the_event_is_set(wait, event)
    assert await wait is True  # returned as if never cancelled


async def test_set_within_the_time_or_not() -> None:
    event = asyncio.Event()
    assert not await event_set_within(event, 0.01)
    asyncio.get_running_loop().call_soon(event.set)
    assert await event_set_within(event, 60)


async def test_a_background_loop_stops_when_cancelled_as_it_is_woken() -> None:
    """The shape of the services' wake-up loops (stream hub, delivery, outboxes)."""
    wake = asyncio.Event()
    turns = 0

    async def loop() -> None:
        nonlocal turns
        while True:
            await event_set_within(wake, 60)
            wake.clear()
            turns += 1

    task = asyncio.create_task(loop())
    await _cancelled_as_the_event_is_set(task, wake)
    # Bounded: a lost cancellation would leave the loop waiting for its next wake-up.
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(30):
            await task
    assert turns == 0
