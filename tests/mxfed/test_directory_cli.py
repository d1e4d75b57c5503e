"""``mxfed publish``, ``unpublish``, ``directory``, ``profile`` and ``devices``
against a running mxfed."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from mxfed_api.events.v1 import events_pb2, events_pb2_grpc
from tests.support.databases import create_database, drop_database
from tests.support.mxfed_process import MxfedProcess

pytestmark = pytest.mark.whole_stack


@pytest.fixture(scope="module")
def mxfed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MxfedProcess]:
    database_url = asyncio.run(create_database("mxfed_directory_cli"))
    process = MxfedProcess(tmp_path_factory.mktemp("directory-cli") / "data", database_url)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        asyncio.run(drop_database(database_url))


async def cli(mxfed: MxfedProcess, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mxfed.cli", "--config", str(mxfed.config_path), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, stdout.decode(), stderr.decode()


@pytest.fixture(scope="module")
async def room(mxfed: MxfedProcess) -> AsyncIterator[str]:
    async with mxfed.channel("events") as channel:
        reply = await events_pb2_grpc.EventsStub(channel).PerformCreateRoom(
            events_pb2.PerformCreateRoomRequest(
                creator=f"@alice:{mxfed.server_name}",
                preset="public_chat",
                name="Lobby",
                alias_localpart="lobby",
            ),
            timeout=30,
        )
    yield reply.room_id


async def test_publish_directory_unpublish(mxfed: MxfedProcess, room: str) -> None:
    alias = f"#lobby:{mxfed.server_name}"
    code, out, err = await cli(mxfed, "publish", alias)
    assert code == 0, err
    assert out.strip() == f"published {room}"
    code, out, err = await cli(mxfed, "directory")
    assert code == 0, err
    assert out.splitlines()[0] == f"{room}\t1\t{alias}"
    code, out, _ = await cli(mxfed, "directory", "--json")
    assert [entry["room_id"] for entry in json.loads(out)["chunk"]] == [room]
    code, out, err = await cli(mxfed, "unpublish", room, "--json")
    assert code == 0 and json.loads(out) == {"room_id": room, "published": False}
    code, out, _ = await cli(mxfed, "directory", "--json")
    assert json.loads(out)["chunk"] == []


async def test_errors_print_the_errcode(mxfed: MxfedProcess) -> None:
    code, _, err = await cli(mxfed, "publish", "!unknown:nowhere.example")
    assert code == 1 and err.startswith("M_NOT_FOUND: ")
    code, _, err = await cli(mxfed, "publish", f"#nope:{mxfed.server_name}")
    assert code == 1 and err.startswith("M_NOT_FOUND: ")
    code, _, err = await cli(mxfed, "profile", "get", f"@nobody:{mxfed.server_name}")
    assert code == 1 and err.startswith("M_NOT_FOUND: ")
    code, _, err = await cli(mxfed, "profile", "set", "@x:elsewhere.example", "--displayname", "X")
    assert code == 1 and err.startswith("M_INVALID_PARAM: ")


async def test_profile_set_and_get(mxfed: MxfedProcess) -> None:
    user = f"@bob:{mxfed.server_name}"
    code, out, err = await cli(
        mxfed, "profile", "set", user, "--displayname", "Bob", "--field", "m.tz=Europe/Paris",
        "--field", 'org.example.n={"a": 1}', "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == {
        "displayname": "Bob",
        "m.tz": "Europe/Paris",
        "org.example.n": {"a": 1},
    }
    code, out, _ = await cli(mxfed, "profile", "get", user, "--field", "displayname", "--json")
    assert json.loads(out) == {"displayname": "Bob"}
    code, out, _ = await cli(mxfed, "profile", "get", user)
    assert out.splitlines()[:2] == [user, '  displayname: "Bob"']


async def test_devices_upload_and_list(mxfed: MxfedProcess) -> None:
    user = f"@carol:{mxfed.server_name}"
    code, out, err = await cli(
        mxfed, "devices", "upload", user, "PHONE", "--display-name", "Phone",
        "--one-time-keys", "3", "--fallback-key", "--json",
    )  # fmt: skip
    assert code == 0, err
    uploaded = json.loads(out)
    assert uploaded["one_time_key_counts"] == {"signed_curve25519": 3}
    assert uploaded["stream_id"] == 1
    code, out, err = await cli(mxfed, "devices", "list", user, "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["stream_id"] == 1
    assert body["devices"] == [
        {"device_id": "PHONE", "keys": uploaded["device_keys"], "device_display_name": "Phone"}
    ]
    code, out, _ = await cli(mxfed, "devices", "list", user)
    assert out.splitlines()[1].startswith("  PHONE\tPhone\tcurve25519:PHONE, ed25519:PHONE")
