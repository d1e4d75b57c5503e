"""``mxfed.client`` against a running mxfed: typed results, errors with errcodes, and a
stream that resumes (after the consumer dies, and across an events service restart)
without gaps or repeats."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from mxfed.client import (
    Client,
    EventStatus,
    FilePosition,
    Forbidden,
    MatrixError,
    NotFound,
    StreamItem,
)
from mxfed.internal_identity import Caller
from mxfed_api.keys.v1 import keys_pb2, keys_pb2_grpc
from tests.support.scene import Scene

pytestmark = pytest.mark.whole_stack


@pytest.fixture
async def client(scene: Scene) -> AsyncIterator[Client]:
    async with Client(scene.mxfed.config()) as opened:
        yield opened


async def test_rooms_messages_and_history(scene: Scene, client: Client) -> None:
    alice = scene.creator
    created = await client.create_room(alice, name="Client test", preset="public_chat")
    assert created.room_id.startswith("!") and created.room_alias is None
    first = await client.send_message(created.room_id, alice, "one", txn_id="t-one")
    # The same transaction id again: the first event, not a second one.
    again = await client.send_message(created.room_id, alice, "one", txn_id="t-one")
    assert again.event_id == first.event_id
    await client.send_message(created.room_id, alice, "two")
    history = await client.history(created.room_id, 2)
    assert [event.body for event in history] == ["one", "two"]
    assert all(event.status is EventStatus.ACCEPTED for event in history)
    assert history[0].sender == alice and history[0].type == "m.room.message"
    assert alice in await client.joined_members(created.room_id)
    profile = await client.set_profile(alice, {"displayname": "Alice"})
    assert profile["displayname"] == "Alice"
    assert (await client.profile(alice)) == profile


async def test_errors_carry_the_errcode(scene: Scene, client: Client, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as unknown_alias:
        await client.resolve_room(f"#nothing-here:{scene.mxfed.server_name}")
    assert unknown_alias.value.errcode == "M_NOT_FOUND"
    with pytest.raises(MatrixError) as unknown_room:
        await client.send_message("!nowhere:nowhere.example", scene.creator, "hi")
    assert unknown_room.value.errcode.startswith("M_")
    with pytest.raises(Forbidden) as not_ours:
        await client.send_message("!nowhere:nowhere.example", "@eve:elsewhere.example", "hi")
    assert not_ours.value.errcode == "M_FORBIDDEN"
    with pytest.raises(MatrixError) as bad_limit:
        await client.history("!nowhere:nowhere.example", 0)
    assert bad_limit.value.errcode == "M_INVALID_PARAM"
    # An actor may not call what only the operator may.
    added = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mxfed.cli", "--config", str(scene.mxfed.config_path),
        "actors", "add", "client-test",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await added.wait()
    async with Client(scene.mxfed.config(), Caller.actor("client-test")) as actor:
        with pytest.raises(Forbidden) as denied, actor.guarded("keys"):
            await actor.stub(keys_pb2_grpc.KeysStub).PerformKeyRotation(
                keys_pb2.PerformKeyRotationRequest(), timeout=10
            )
        assert denied.value.errcode == "M_FORBIDDEN"
        room = await actor.create_room(scene.creator)  # the bot surface is open
        assert room.room_id.startswith("!")


async def _messages(
    stream: AsyncIterator[StreamItem], count: int
) -> AsyncIterator[tuple[StreamItem, str]]:
    async for item in stream:
        if item.event is not None and item.event.body is not None:
            yield item, item.event.body
            count -= 1
            if count == 0:
                return


async def test_the_stream_resumes_after_the_consumer_dies(
    scene: Scene, client: Client, tmp_path: Path
) -> None:
    """Every message handled exactly once across a crash: the item in hand when the
    consumer died comes again, none it had finished does."""
    alice = scene.creator
    room_id = (await client.create_room(alice)).room_id
    position = FilePosition(
        tmp_path / "bot.position", default=await client.latest_position(room_id)
    )
    bodies = [f"m{i}" for i in range(6)]
    for body in bodies:
        await client.send_message(room_id, alice, body)

    handled: list[str] = []
    stream = client.stream(room_id=room_id, position=position)
    async for _item, body in _messages(stream, 6):
        if body == "m3":
            break  # dies while handling m3: m3 is not done
        handled.append(body)
    await stream.aclose()  # type: ignore[attr-defined]
    assert handled == ["m0", "m1", "m2"]

    # A restarted consumer: a new client, the same position file.
    async with Client(scene.mxfed.config()) as restarted:
        async for _, body in _messages(restarted.stream(room_id=room_id, position=position), 3):
            handled.append(body)
    assert handled == bodies


def _events_part(scene: Scene) -> int | None:
    assert scene.mxfed.process is not None
    for child in psutil.Process(scene.mxfed.process.pid).children():
        try:
            cmdline = child.cmdline()
        except psutil.Error:  # killed, not reaped yet
            continue
        if "--service" in cmdline and cmdline[cmdline.index("--service") + 1] == "events":
            return child.pid
    return None


async def test_the_stream_resumes_across_an_events_service_restart(
    scene: Scene, client: Client
) -> None:
    if scene.mxfed.single_process:
        pytest.skip("restarts the events part process, which a single-process run has not")
    alice = scene.creator
    room_id = (await client.create_room(alice)).room_id
    after = await client.latest_position(room_id)
    received: list[str] = []
    stream = client.stream(room_id=room_id, after=after)
    await client.send_message(room_id, alice, "before")
    async for _, body in _messages(stream, 1):
        received.append(body)

    victim = _events_part(scene)
    os.kill(victim, signal.SIGKILL)
    while _events_part(scene) in (None, victim):  # until the supervisor restarted it
        await asyncio.sleep(0.1)
    await asyncio.to_thread(scene.mxfed.wait_ready)
    # Sent after the restart (retried by the client while the part comes back).
    for body in ("after-1", "after-2"):
        await client.send_message(room_id, alice, body)
    async for _, body in _messages(stream, 2):
        received.append(body)
    assert received == ["before", "after-1", "after-2"]


async def test_media_devices_and_edus(scene: Scene, client: Client, tmp_path: Path) -> None:
    import io

    alice = scene.creator
    data = b"hello media " * 5000
    uploaded = await client.upload(io.BytesIO(data), content_type="text/plain", uploader=alice)
    assert uploaded.mxc_uri.startswith(f"mxc://{scene.mxfed.server_name}/")
    assert uploaded.size == len(data)
    info = await client.media_info(uploaded.mxc_uri)
    assert info.found and info.uploaded and info.size == len(data)
    head, chunks = await client.download(uploaded.mxc_uri)
    assert head.size == len(data)
    assert b"".join([chunk async for chunk in chunks]) == data
    with pytest.raises(MatrixError) as bad_uri:
        await client.media_info("https://example.org/x")
    assert bad_uri.value.errcode == "M_INVALID_PARAM"

    await client.add_device(alice, "BOTDEVICE", "the bot")
    devices = await client.devices(alice)
    assert "BOTDEVICE" in {d["device_id"] for d in devices["devices"]}
    assert await client.delete_device(alice, "BOTDEVICE")

    room_id = (await client.create_room(alice)).room_id
    sent = await client.send_message(room_id, alice, "read me")
    # Nobody else is in the room: nothing to queue, but both calls are accepted.
    await client.typing(room_id, alice, True)
    await client.read_receipt(room_id, alice, sent.event_id)


def test_the_cli_has_one_client_path() -> None:
    """Every command calls the services through mxfed.client (health checks aside:
    they speak the standard health protocol to one part at a given address)."""
    commands = Path(__file__).resolve().parents[2] / "mxfed" / "commands"
    for path in sorted(commands.glob("*.py")):
        if path.name == "health.py":
            continue
        text = path.read_text()
        assert "open_channel(" not in text, path.name
        assert "Stub(channel" not in text, path.name


async def test_the_bridge_example_over_tcp(scene: Scene, client: Client) -> None:
    """examples/bridge.py --tcp: chat lines reach the room from puppets, room messages
    reach every chat connection, and connections see each other's lines."""
    alice = scene.creator
    room_id = (await client.create_room(alice, preset="public_chat")).room_id
    bridge = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).resolve().parents[2] / "examples" / "bridge.py"),
        room_id, "--tcp", "127.0.0.1:0", "--config", str(scene.mxfed.config_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=scene.mxfed.environment(),
    )  # fmt: skip
    try:
        assert bridge.stdout is not None
        line = (await asyncio.wait_for(bridge.stdout.readline(), 60)).decode()
        assert line.startswith("bridge listening on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        dave = await asyncio.open_connection("127.0.0.1", port)
        erin = await asyncio.open_connection("127.0.0.1", port)
        for (reader, writer), nick in ((dave, "dave"), (erin, "erin")):
            assert await asyncio.wait_for(reader.readline(), 30) == b"nick?\n"
            writer.write(f"{nick}\n".encode())
            await writer.drain()
            assert await asyncio.wait_for(reader.readline(), 30) == f"hello {nick}\n".encode()
        dave[1].write(b"hi from tcp\n")
        await dave[1].drain()
        assert await asyncio.wait_for(erin[0].readline(), 30) == b"<dave> hi from tcp\n"

        async def from_puppet() -> bool:
            history = await client.history(room_id, 10)
            return any(
                e.body == "hi from tcp" and e.sender == f"@chat_dave:{client.server_name}"
                for e in history
            )

        for _ in range(300):
            if await from_puppet():
                break
            await asyncio.sleep(0.1)
        assert await from_puppet()
        profile = await client.profile(alice) or {}
        name = profile.get("displayname") or alice  # the sender's display name when set
        await client.send_message(room_id, alice, "hello chat")
        for reader, _ in (dave, erin):
            line = (await asyncio.wait_for(reader.readline(), 30)).decode()
            assert line == f"<{name}> hello chat\n"
        for _, writer in (dave, erin):
            writer.close()
    finally:
        if bridge.returncode is None:
            bridge.terminate()
            await bridge.wait()
