"""The echo bot's answer time, seen by a Synapse user (not a test).

A whole mxfed (``mxfed run``, throw-away database on 127.0.0.1:5432), a
Synapse (from the test harness) and ``examples/echo_bot.py`` run at once. A
Synapse user invites the bot into a room on Synapse; then, ``--rounds``
times, sends a message and long-polls Synapse's /sync until the bot's answer
arrives. The time covers Synapse → mxfed (/send), the bot's stream, its
answer through gRPC, mxfed → Synapse (/send) and Synapse's /sync.

    .venv/bin/python bench/bench_echo_bot.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))

from synapse_harness import SynapseClient, SynapseServer  # noqa: E402

from tests.support.databases import create_database, drop_database  # noqa: E402
from tests.support.mxfed_process import MxfedProcess  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _bodies(sync: dict[str, Any], room_id: str) -> list[str]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    return [
        e.get("content", {}).get("body", "")
        for e in room.get("timeline", {}).get("events", [])
        if e.get("type") == "m.room.message"
    ]


async def round_trip(client: SynapseClient, token: str, room_id: str, text: str) -> float:
    since = (await client.sync(token))["next_batch"]
    started = time.perf_counter()
    await client.send_message(token, room_id, text)
    while True:
        sync = await client.sync(token, since=since, timeout=5000)
        since = sync["next_batch"]
        if f"echo: {text}" in _bodies(sync, room_id):
            return time.perf_counter() - started


async def main(rounds: int) -> None:
    database_url = await create_database("mxfed_bench_echo")
    synapse = SynapseServer()
    with tempfile.TemporaryDirectory() as scratch:
        mxfed = MxfedProcess(
            Path(scratch) / "data", database_url, extra_config={"log_level": "WARNING"}
        )
        bot = None
        try:
            await asyncio.to_thread(mxfed.start)
            await asyncio.to_thread(synapse.start)
            bot = await asyncio.create_subprocess_exec(
                sys.executable, str(EXAMPLES / "echo_bot.py"),
                "--config", str(mxfed.config_path), "--state", f"{scratch}/echo.position",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                env=mxfed.environment(),
            )  # fmt: skip
            assert bot.stdout is not None
            await bot.stdout.readline()  # "echo bot ... running"
            bot_user = f"@echo:{mxfed.server_name}"
            async with synapse.client() as client:
                _, token = await client.register("bench")
                room_id = await client.create_room(token, preset="public_chat")
                await client.invite(token, room_id, bot_user)
                await client.wait_for_event(
                    token,
                    room_id,
                    lambda e: (
                        e.get("state_key") == bot_user
                        and e.get("content", {}).get("membership") == "join"
                    ),
                    timeout=60,
                )
                await round_trip(client, token, room_id, "warm-up")
                times = [
                    await round_trip(client, token, room_id, f"ping {i}") for i in range(rounds)
                ]
            ms = sorted(t * 1000 for t in times)
            print(
                f"echo bot round trip (Synapse user → mxfed → bot → mxfed → Synapse /sync), "
                f"{rounds} rounds: p50 {statistics.median(ms):.0f} ms, "
                f"p90 {ms[int(len(ms) * 0.9) - 1]:.0f} ms, max {ms[-1]:.0f} ms"
            )
        finally:
            if bot is not None and bot.returncode is None:
                bot.terminate()
                await bot.wait()
            await asyncio.to_thread(synapse.stop)
            await asyncio.to_thread(mxfed.stop)
            await drop_database(database_url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args().rounds))
