"""The server block list follower: quiet while the events process starts, loud after."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mxfed import server_policy
from mxfed.server_policy import PolicySnapshot, ServerPolicy, follow_server_policy

WARNING = "server policy refresh failed"


async def _follow(answers: list[object], policy: ServerPolicy) -> None:
    """Follow with ``answers`` (an exception is raised, a snapshot returned) until they run out."""
    done = asyncio.Event()

    async def fetch(_known: int) -> PolicySnapshot | None:
        answer = answers.pop(0)
        if not answers:
            done.set()
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, PolicySnapshot)
        return answer

    follower = asyncio.create_task(follow_server_policy(fetch, 0, policy))
    await done.wait()
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_failures_before_the_first_answer_at_start_are_not_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = ServerPolicy()
    snapshot = PolicySnapshot(1, False, ("bad.example",), ())
    with caplog.at_level(logging.INFO, logger="mxfed.server_policy"):
        await _follow(
            [ConnectionError("events not up"), ConnectionError("still not"), snapshot], policy
        )
    assert _warnings(caplog) == []
    assert policy.blocks("bad.example")


async def test_a_failure_after_an_answer_is_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    policy = ServerPolicy()
    snapshot = PolicySnapshot(1, False, ("bad.example",), ())
    with caplog.at_level(logging.INFO, logger="mxfed.server_policy"):
        await _follow([snapshot, ConnectionError("gone"), ConnectionError("gone"), None], policy)
    assert _warnings(caplog) == [WARNING]
    assert policy.blocks("bad.example")  # the last lists stay in force


async def test_failures_that_outlast_start_up_are_warned(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_policy, "STARTUP_GRACE_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="mxfed.server_policy"):
        await _follow([ConnectionError("events never came"), None], ServerPolicy())
    assert _warnings(caplog) == [WARNING]
