"""``mxfed room create``, ``send``, ``history`` and ``tail`` against a running mxfed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys

import pytest

from tests.support.scene import Scene

pytestmark = pytest.mark.whole_stack


def _command(scene: Scene, *args: str) -> list[str]:
    return [sys.executable, "-m", "mxfed.cli", "--config", str(scene.mxfed.config_path), *args]


async def mxfed_cli(scene: Scene, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *_command(scene, *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture(scope="module")
async def lobby(scene: Scene) -> dict:
    code, out, err = await mxfed_cli(
        scene,
        "room",
        "create",
        "--creator",
        scene.creator,
        "--preset",
        "public_chat",
        "--name",
        "Lobby",
        "--topic",
        "Say hi",
        "--alias",
        "lobby",
        "--json",
    )
    assert code == 0, err
    return json.loads(out)


async def test_room_create_prints_the_room_and_its_alias(scene: Scene, lobby: dict) -> None:
    assert lobby["room_id"].startswith("!")
    assert lobby["room_alias"] == f"#lobby:{scene.mxfed.server_name}"
    state = await scene.current_state(lobby["room_id"])
    assert ("m.room.name", "") in state and ("m.room.topic", "") in state

    code, out, err = await mxfed_cli(scene, "room", "create", "--creator", scene.creator)
    assert code == 0, err
    assert re.fullmatch(r"!\S+\n", out)


async def test_room_info_shows_the_room_and_its_state(scene: Scene, lobby: dict) -> None:
    code, out, err = await mxfed_cli(scene, "room", "info", lobby["room_alias"], "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["room_id"] == lobby["room_id"]
    assert info["we_are_joined"] is True
    assert info["state"] == "full_state"  # created here: never partial
    assert info["members_known"] == info["members_expected"] == 1
    code, out, err = await mxfed_cli(scene, "room", "info", lobby["room_id"])
    assert code == 0, err
    assert "members    1\n" in out and "state      full state" in out


async def test_send_then_history_oldest_first(scene: Scene, lobby: dict) -> None:
    code, out, err = await mxfed_cli(
        scene, "send", lobby["room_id"], "hello from the cli", "--sender", scene.creator
    )
    assert code == 0, err
    event_id = out.strip()
    assert event_id.startswith("$")
    # By alias too.
    code, out, err = await mxfed_cli(
        scene, "send", lobby["room_alias"], "and by alias", "--sender", scene.creator, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["room_id"] == lobby["room_id"]

    code, out, err = await mxfed_cli(scene, "history", lobby["room_id"], "--limit", "50")
    assert code == 0, err
    lines = out.splitlines()
    assert "m.room.create" in lines[0]
    assert f"{scene.creator}  m.room.message  hello from the cli" in lines[-2]
    assert lines[-1].endswith("and by alias")
    assert any("m.room.name" in line and "Lobby" in line for line in lines)

    code, out, err = await mxfed_cli(scene, "history", lobby["room_id"], "--limit", "2", "--json")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2
    assert records[0]["event_id"] == event_id
    assert records[0]["pdu"]["content"] == {"msgtype": "m.text", "body": "hello from the cli"}
    assert records[0]["status"] == "accepted"
    assert records[1]["pdu"]["content"]["body"] == "and by alias"


async def test_tail_prints_messages_sent_while_it_runs(scene: Scene, lobby: dict) -> None:
    tail = await asyncio.create_subprocess_exec(
        *_command(scene, "tail", lobby["room_id"]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT: every thread's stack
    )
    try:
        assert tail.stderr is not None and tail.stdout is not None
        header = await asyncio.wait_for(tail.stderr.readline(), timeout=30)
        assert header.decode().startswith(f"following {lobby['room_id']}")
        code, _, err = await mxfed_cli(
            scene, "send", lobby["room_id"], "live message", "--sender", scene.creator
        )
        assert code == 0, err
        line = await asyncio.wait_for(tail.stdout.readline(), timeout=30)
        assert f"{scene.creator}  m.room.message  live message" in line.decode()
        tail.send_signal(signal.SIGINT)
        try:
            assert await asyncio.wait_for(tail.wait(), timeout=15) == 130
        except TimeoutError:
            # Still running 15 s after Ctrl-C: where it was, and what it said.
            tail.send_signal(signal.SIGABRT)
            await tail.wait()
            printed = (await tail.stderr.read()).decode()[-6000:]
            raise AssertionError(
                f"mxfed tail did not stop on SIGINT; its stacks and output:\n{printed}"
            ) from None
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()


async def test_service_errors_print_the_errcode_and_exit_non_zero(scene: Scene) -> None:
    code, out, err = await mxfed_cli(
        scene, "send", "!nosuchroom:nowhere.example", "hi", "--sender", scene.creator
    )
    assert code != 0
    assert out == ""
    assert re.match(r"M_[A-Z_]+: ", err), err

    code, _, err = await mxfed_cli(scene, "history", "#nosuchalias:nowhere.example")
    assert code != 0
    assert err.startswith("M_NOT_FOUND: ")

    for command in ("history", "tail"):
        code, out, err = await mxfed_cli(scene, command, "!nosuchroom:nowhere.example")
        assert code == 1
        assert err.startswith("M_NOT_FOUND: ")


async def test_history_limit_must_be_positive(scene: Scene, lobby: dict) -> None:
    code, _, err = await mxfed_cli(scene, "history", lobby["room_id"], "--limit", "0")
    assert code == 1
    assert err.startswith("M_INVALID_PARAM: ")


async def test_an_alias_is_taken_whole_or_as_its_localpart(scene: Scene) -> None:
    server = scene.mxfed.server_name
    code, out, err = await mxfed_cli(
        scene, "room", "create", "--creator", scene.creator, "--alias", f"#whole:{server}", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["room_alias"] == f"#whole:{server}"
    code, out, err = await mxfed_cli(scene, "history", f"#whole:{server}", "--limit", "1")
    assert code == 0, err

    # Another server's alias, or a malformed one: refused before anything is made.
    for alias, expected in (
        ("#elsewhere:other.example", "is on other.example"),
        ("bad:alias", f"give #NAME:{server} or just NAME"),
        (f"#:{server}", "is not a valid alias"),
    ):
        code, out, err = await mxfed_cli(
            scene, "room", "create", "--creator", scene.creator, "--alias", alias
        )
        assert (code, out) == (1, ""), err
        assert err.startswith("M_INVALID_PARAM: ") and expected in err, err


async def test_a_room_that_is_neither_id_nor_alias_is_refused_with_the_forms(
    scene: Scene,
) -> None:
    code, _, err = await mxfed_cli(scene, "history", "lobby")
    assert code == 1
    assert "neither a room ID (!...) nor an alias (#name:server)" in err


async def test_a_reader_that_goes_away_ends_the_output_quietly(scene: Scene, lobby: dict) -> None:
    """``mxfed history --json | head -1``: no traceback, the usual status of SIGPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        process = await asyncio.create_subprocess_exec(
            *_command(scene, "history", lobby["room_id"], "--json"),
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 128 + signal.SIGPIPE
    assert stderr.decode() == ""
