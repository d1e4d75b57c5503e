"""Waiting for a condition in tests: polled with a deadline of its own, never a fixed
sleep, and past it an AssertionError that says what did not happen."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    condition: Callable[[], object | Awaitable[object]],
    timeout: float = 30.0,
    interval: float = 0.05,
    *,
    what: str = "condition",
) -> None:
    """Poll ``condition`` (a function or a coroutine function) until its answer is true;
    past ``timeout`` seconds, an AssertionError that names ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met in {timeout} s")
        await asyncio.sleep(interval)


async def until(
    get: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float = 60.0
) -> T:
    """Poll ``get`` until ``ok`` holds of its answer (a condition, not a timing)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await get()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met; last value: {value!r}")
        await asyncio.sleep(0.05)
