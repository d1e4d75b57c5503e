"""Bounded waits that never lose a cancellation.

Python 3.11's ``asyncio.wait_for`` returns normally when its task is cancelled
in the same turn as the awaited thing completes: the cancellation is lost, and
a loop around it (a background task waiting for a wake-up or a timeout) goes on
running after it was cancelled, so whatever stops it waits forever.
``asyncio.timeout`` awaits in the caller's own task and has no such window; it
is what this codebase uses instead (ruff bans ``asyncio.wait_for`` outside the
tests).
"""

from __future__ import annotations

import asyncio
import contextlib


async def event_set_within(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set, ``seconds`` at most; whether it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
