"""The examples in examples/ against a running mxfed, with a real Synapse user on the other side.

- The echo bot, invited by a Synapse user into a room on Synapse, joins it and
  answers messages; killed with SIGKILL and restarted, it answers what was said
  meanwhile and nothing twice (its stream resumes from its position file).
- The bridge mirrors a mxfed room and stdin/stdout both ways: a Synapse user's
  message appears on stdout, a line on stdin appears in the room (on Synapse)
  from the chat user's puppet.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from synapse_harness import SynapseClient, SynapseServer, wait_until

from tests.support.mx import Mx
from tests.support.mxfed_process import MxfedProcess

pytestmark = [pytest.mark.interop, pytest.mark.whole_stack]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def _start(mxfed: MxfedProcess, script: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / script),
        "--config",
        str(mxfed.config_path),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=mxfed.environment(),
    )


async def _stop(process: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> None:
    if process.returncode is None:
        process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), timeout=15)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _line(process: asyncio.subprocess.Process, what: Callable[[str], bool]) -> str:
    assert process.stdout is not None
    while True:
        raw = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        if not raw:
            assert process.stderr is not None
            raise AssertionError(f"exited: {(await process.stderr.read()).decode()[-3000:]}")
        if what(raw.decode()):
            return raw.decode()


def _messages(response: dict[str, Any]) -> list[str]:
    return [
        e["content"].get("body", "")
        for e in response.get("chunk", [])
        if e.get("type") == "m.room.message"
    ]


@pytest.fixture
async def echo_bot(mxfed: MxfedProcess, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[asyncio.subprocess.Process] = []

    async def start() -> asyncio.subprocess.Process:
        bot = await _start(mxfed, "echo_bot.py", "--state", str(tmp_path / "echo.position"))
        started.append(bot)
        await _line(bot, lambda line: "echo bot" in line and "running" in line)
        return bot

    yield start
    for bot in started:
        await _stop(bot)


async def test_echo_bot_answers_a_synapse_user_and_resumes_after_sigkill(
    mxfed: MxfedProcess,
    synapse: SynapseServer,
    synapse_client: SynapseClient,
    echo_bot: Callable[..., Any],
) -> None:
    bot = await echo_bot()
    bot_user = f"@echo:{mxfed.server_name}"
    bob, token = await synapse_client.register(f"bob_{secrets.token_hex(4)}")
    room_id = await synapse_client.create_room(token, preset="public_chat")
    await synapse_client.invite(token, room_id, bot_user)
    await synapse_client.wait_for_event(
        token,
        room_id,
        lambda e: (
            e.get("type") == "m.room.member"
            and e.get("state_key") == bot_user
            and e["content"].get("membership") == "join"
        ),
        timeout=60,
    )
    await synapse_client.send_message(token, room_id, "hello bot")
    await _answered(synapse_client, token, room_id, "hello bot", bot)

    # Killed without warning; what is said meanwhile is answered after the restart, once.
    await _stop(bot, signal.SIGKILL)
    for text in ("while down 1", "while down 2"):
        await synapse_client.send_message(token, room_id, text)
    bot = await echo_bot()
    await synapse_client.send_message(token, room_id, "after restart")
    await _answered(synapse_client, token, room_id, "after restart", bot)

    async def answers() -> list[str]:
        response = await synapse_client.messages(token, room_id, limit=50)
        return [b for b in _messages(response) if b.startswith("echo: ")]

    expected = [
        "echo: hello bot",
        "echo: while down 1",
        "echo: while down 2",
        "echo: after restart",
    ]
    await wait_until(lambda: _all_in(answers(), expected), timeout=30)
    found = await answers()
    assert sorted(found) == sorted(expected), found  # each exactly once


async def _answered(
    client: SynapseClient,
    token: str,
    room_id: str,
    text: str,
    bot: asyncio.subprocess.Process,
) -> None:
    """The bot's answer to ``text`` is seen on Synapse; without one, fails with the bot's log."""
    try:
        await client.wait_for_event(
            token,
            room_id,
            lambda e: e.get("content", {}).get("body") == f"echo: {text}",
            timeout=30,
        )
    except TimeoutError:
        await _stop(bot)
        assert bot.stderr is not None
        log = (await bot.stderr.read()).decode()[-3000:]
        raise AssertionError(f"no answer to {text!r}; the bot's log:\n{log}") from None


async def _all_in(awaitable: Any, expected: list[str]) -> bool:
    found = await awaitable
    return all(text in found for text in expected)


async def test_bridge_mirrors_a_room_and_stdio_both_ways(
    mx: Mx, mxfed: MxfedProcess, synapse: SynapseServer, synapse_client: SynapseClient
) -> None:
    alice = mx.user("alice")
    room_id = await mx.create_room(alice)
    bob, token = await synapse_client.register(f"bob_{secrets.token_hex(4)}")
    assert await synapse_client.join(token, room_id, via=[mxfed.server_name]) == room_id

    bridge = await _start(mxfed, "bridge.py", room_id, "--stdio", "--nick", "Carol")
    try:
        assert bridge.stderr is not None
        header = await asyncio.wait_for(bridge.stderr.readline(), timeout=60)
        assert f"bridging {room_id}" in header.decode()
        # room → chat: a Synapse user's message, with the sender's name.
        await synapse_client.send_message(token, room_id, "hello chat")
        line = await _line(bridge, lambda text: "hello chat" in text)
        assert bob in line or "bob" in line
        # chat → room: a line on stdin, from the chat user's puppet, seen on Synapse.
        assert bridge.stdin is not None
        bridge.stdin.write(b"hello room\n")
        await bridge.stdin.drain()
        puppet = f"@chat_carol:{mxfed.server_name}"
        event = await synapse_client.wait_for_event(
            token, room_id, lambda e: e.get("content", {}).get("body") == "hello room", timeout=30
        )
        assert event["sender"] == puppet
    finally:
        await _stop(bridge)
