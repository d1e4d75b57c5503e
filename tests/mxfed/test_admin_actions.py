"""The operator's actions on a whole running mxfed: blocking a server, shutting down,
blocking and purging rooms, each an audit record naming the operator's certificate.

A fake resident server hosts rooms a local user joins; blocking it must make
its signed requests 403 M_FORBIDDEN, drop (and log) what was queued for it,
soft-fail its events, make a join through it fail and the doctor say so;
unblocking restores federation.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import orjson
import pytest

from mxfed.internal_plane import OPERATOR
from mxfed_api.events.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    membership_pb2,
    membership_pb2_grpc,
)
from tests.support.databases import create_database, drop_database
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.join_resident import V10, Resident, add_routes
from tests.support.mxfed_process import MxfedProcess
from tests.support.polling import wait_until
from tests.support.service_errors import errcode

pytestmark = pytest.mark.whole_stack

PATIENCE = 60.0


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """``check()`` true within PATIENCE (the lists reach each part within its refresh)."""
    await wait_until(check, PATIENCE, 0.1, what=what)


def part_has_policy(mxfed: MxfedProcess, part: str, blocked: int) -> bool:
    """Whether ``part`` logged taking a server policy with ``blocked`` block patterns last
    (in a single-process run the parts share one copy: whichever part logged it)."""
    last = None
    for line in (mxfed.data_dir / "mxfed.log").read_text().splitlines():
        if '"server policy updated"' in line and (
            mxfed.single_process or f'"part":"{part}"' in line
        ):
            last = orjson.loads(line)
    return last is not None and last["blocked"] == blocked


def received(room: Resident, body: str) -> bool:
    return any(p["content"].get("body") == body for p in room.pdus)


class Scene:
    def __init__(self, mxfed: MxfedProcess, server: FakeHomeserver) -> None:
        self.mxfed = mxfed
        self.server = server
        self.rooms: dict[str, Resident] = {}
        self.events_channel = mxfed.channel("events")
        self.admin_channel = mxfed.channel("events", caller=OPERATOR)
        self.events = events_pb2_grpc.EventsStub(self.events_channel)
        self.membership = membership_pb2_grpc.MembershipStub(self.events_channel)
        self.admin = admin_pb2_grpc.AdminStub(self.admin_channel)

    def user(self) -> str:
        return f"@u{secrets.token_hex(4)}:{self.mxfed.server_name}"

    def room(self) -> Resident:
        room = Resident(self.server, serve_event=True)
        self.rooms[room.room_id] = room
        return room

    async def join(self, room: Resident, user_id: str) -> membership_pb2.PerformJoinResponse:
        return await self.membership.PerformJoin(
            membership_pb2.PerformJoinRequest(
                room_id_or_alias=room.room_id, user_id=user_id, servers=[self.server.server_name]
            ),
            timeout=30,
        )

    async def say(self, room_id: str, sender: str, text: str) -> str:
        reply = await self.events.PerformSendEvent(
            events_pb2.PerformSendEventRequest(
                room_id=room_id,
                sender=sender,
                type="m.room.message",
                content_json=orjson.dumps({"msgtype": "m.text", "body": text}),
            )
        )
        return reply.event_id

    async def signed_status(self) -> tuple[int, Any]:
        """A signed request of the fake server to mxfed's gateway: (status, body)."""
        response = await self.server.federation_request(
            self.mxfed.federation_url,
            self.mxfed.server_name,
            "GET",
            f"/_matrix/federation/v1/query/profile?user_id=@nobody:{self.mxfed.server_name}",
        )
        return response.status_code, response.json()

    async def cli(self, *args: str) -> tuple[int, str]:
        """``mxfed ARGS`` as the operator runs it; (exit status, stdout)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MXFED_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mxfed.cli",
            "--config",
            str(self.mxfed.config_path),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode() + err.decode()

    async def statuses(self, event_ids: list[str]) -> dict[str, int]:
        reply = await self.events.QueryEvents(events_pb2.QueryEventsRequest(event_ids=event_ids))
        return {e.event_id: e.status for e in reply.events}


@pytest.fixture(scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    database_url = await create_database("mxfed_admin_test")
    server = FakeHomeserver(key_version="admin1")
    rooms: dict[str, Resident] = {}
    add_routes(server, rooms)
    await server.start()
    mxfed = MxfedProcess(
        tmp_path_factory.mktemp("admin") / "mxfed",
        database_url,
        extra_config={
            "server_policy_refresh_interval": 0.2,
            "sender_min_retry_interval": 0.2,
        },
    )
    try:
        await asyncio.to_thread(mxfed.start)
        started = Scene(mxfed, server)
        started.rooms = rooms
        yield started
        await started.events_channel.close()
        await started.admin_channel.close()
    finally:
        await asyncio.to_thread(mxfed.stop)
        await server.stop()
        await drop_database(database_url)


async def test_blocking_a_server_refuses_it_everywhere_and_unblocking_restores_it(
    scene: Scene,
) -> None:
    room = scene.room()
    alice = scene.user()
    await scene.join(room, alice)
    before = await scene.say(room.room_id, alice, "before the block")
    await eventually(lambda: received(room, "before the block"), "the fake server gets our event")
    assert await _ok(scene)

    # Block by a glob pattern (its name is 127.0.0.1:PORT), from the CLI.
    status, out = await scene.cli("servers", "block", "127.0.0.1:*", "--reason", "spam")
    assert status == 0, out

    async def refused() -> bool:
        code, body = await scene.signed_status()
        return code == 403 and body["errcode"] == "M_FORBIDDEN"

    await eventually(refused, "the gateway refuses the blocked server's signed requests")
    await eventually(lambda: part_has_policy(scene.mxfed, "sender", 1), "the sender has the block")

    # Nothing is sent to it: what was queued for it is dropped, and logged.
    await scene.say(room.room_id, alice, "during the block")
    log = scene.mxfed.data_dir / "mxfed.log"
    await eventually(
        lambda: "destination is blocked; dropping" in log.read_text(),
        "the sender logs the dropped transaction",
    )
    assert not received(room, "during the block")

    # Its events reaching us another way are soft-failed (a gap filled by the backfill part).
    relayed_id, relayed = scene.server.build_pdu(
        V10,
        room_id=room.room_id,
        sender=scene.server.user("alice"),
        event_type="m.room.message",
        content={"msgtype": "m.text", "body": "from a blocked server"},
        prev_events=[before],
        auth_events=[room.create, room.join, room.pl2],
        depth=room.depth + 5,
    )
    await scene.events.InputPdus(
        events_pb2.InputPdusRequest(
            room_id=room.room_id,
            room_version="10",
            origin=scene.server.server_name,
            kind=events_pb2.INPUT_KIND_GAP_FILL,
            pdus=[orjson.dumps(relayed)],
        )
    )
    assert (await scene.statuses([relayed_id]))[relayed_id] == events_pb2.EVENT_STATUS_SOFT_FAILED

    # A join through it fails.
    with pytest.raises(grpc.aio.AioRpcError) as refused_join:
        await scene.join(scene.room(), scene.user())
    assert refused_join.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert errcode(refused_join.value) == "M_FORBIDDEN"

    # The doctor names the cause.
    async def doctor_says_blocked() -> bool:
        status, out = await scene.cli("doctor", scene.server.server_name, "--json")
        report = orjson.loads(out[out.index("{") :]) if "{" in out else {}
        verdict = report.get("verdict", {})
        return status == 2 and verdict.get("cause") == "server_blocked"

    await eventually(doctor_says_blocked, "mxfed doctor reports server_blocked")

    status, out = await scene.cli("servers", "list", "--json")
    listed = orjson.loads(out)
    assert [r["pattern"] for r in listed["rules"]] == ["127.0.0.1:*"]
    assert listed["rules"][0]["created_by"] == "mxfed:operator"

    # Unblocking restores federation both ways.
    status, out = await scene.cli("servers", "unblock", "127.0.0.1:*")
    assert status == 0, out
    await eventually(lambda: _ok(scene), "the gateway accepts the server again")
    await eventually(lambda: part_has_policy(scene.mxfed, "sender", 0), "the sender unblocked")
    await scene.say(room.room_id, alice, "after the block")
    await eventually(lambda: received(room, "after the block"), "it gets our events again")
    assert (await scene.join(scene.room(), scene.user())).remote

    audit = await scene.admin.QueryAuditLog(admin_pb2.QueryAuditLogRequest(limit=10))
    actions = [(r.action, r.target, r.caller) for r in audit.records]
    assert ("block_server", "127.0.0.1:*", "mxfed:operator") in actions
    assert ("unblock_server", "127.0.0.1:*", "mxfed:operator") in actions


async def _ok(scene: Scene) -> bool:
    """The signed request got past verification: the profile's own answer (no such user)."""
    status, body = await scene.signed_status()
    return status == 404 and body["errcode"] == "M_NOT_FOUND"


async def test_allow_list_mode_refuses_servers_not_on_it(scene: Scene) -> None:
    await scene.admin.PerformSetAllowListMode(
        admin_pb2.PerformSetAllowListModeRequest(enabled=True)
    )
    try:

        async def refused() -> bool:
            return (await scene.signed_status())[0] == 403

        await eventually(refused, "a server not on the allow list is refused")
        await scene.admin.PerformBlockServer(
            admin_pb2.PerformBlockServerRequest(pattern="127.0.0.1:*", allow=True)
        )
        await eventually(lambda: _ok(scene), "an allowed server is accepted")
    finally:
        await scene.admin.PerformSetAllowListMode(
            admin_pb2.PerformSetAllowListModeRequest(enabled=False)
        )
        await scene.admin.PerformUnblockServer(
            admin_pb2.PerformUnblockServerRequest(pattern="127.0.0.1:*", allow=True)
        )


async def _local_room(scene: Scene, creator: str) -> str:
    reply = await scene.events.PerformCreateRoom(
        events_pb2.PerformCreateRoomRequest(creator=creator, preset="public_chat")
    )
    return reply.room_id


async def test_purging_history_keeps_what_later_events_need(scene: Scene) -> None:
    creator = scene.user()
    room_id = await _local_room(scene, creator)
    said = [await scene.say(room_id, creator, f"message {n}") for n in range(5)]
    status, out = await scene.cli("room", "purge", room_id, "--before", said[3])
    assert status == 0, out
    left = await scene.statuses(said)
    assert set(left) == set(said[3:])
    # The state (and so every auth chain) is whole: later events still authorise.
    state = await scene.events.QueryCurrentState(
        events_pb2.QueryCurrentStateRequest(room_id=room_id)
    )
    assert {e.event_id for e in state.events} <= set(
        await scene.statuses([e.event_id for e in state.events])
    )
    later = await scene.say(room_id, creator, "after the purge")
    assert (await scene.statuses([later]))[later] == events_pb2.EVENT_STATUS_ACCEPTED
    audit = await scene.admin.QueryAuditLog(admin_pb2.QueryAuditLogRequest(limit=5))
    [record] = [r for r in audit.records if r.target == room_id]
    assert record.action == "purge_history"
    assert orjson.loads(record.details_json)["purged_events"] == 3


async def test_a_shut_down_room_is_left_refused_and_optionally_purged(scene: Scene) -> None:
    creator, member = scene.user(), scene.user()
    room_id = await _local_room(scene, creator)
    await scene.membership.PerformJoin(
        membership_pb2.PerformJoinRequest(room_id_or_alias=room_id, user_id=member)
    )
    message = await scene.say(room_id, member, "hello")
    reply = await scene.admin.PerformShutdownRoom(
        admin_pb2.PerformShutdownRoomRequest(room_id=room_id, reason="abuse")
    )
    assert sorted(reply.left_users) == sorted([creator, member])
    state = await scene.events.QueryCurrentState(
        events_pb2.QueryCurrentStateRequest(
            room_id=room_id, filter=[events_pb2.StateKeyFilter(type="m.room.member")]
        )
    )
    assert {orjson.loads(e.pdu_json)["content"]["membership"] for e in state.events} == {"leave"}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await scene.membership.PerformJoin(
            membership_pb2.PerformJoinRequest(room_id_or_alias=room_id, user_id=member)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    blocked = await scene.admin.QueryBlockedRooms(admin_pb2.QueryBlockedRoomsRequest())
    assert room_id in [r.room_id for r in blocked.rooms]
    assert message in await scene.statuses([message])

    # Shut down with --purge: nothing of it is left.
    other = await _local_room(scene, creator)
    message = await scene.say(other, creator, "soon gone")
    status, out = await scene.cli("room", "shutdown", other, "--purge")
    assert status == 0, out
    assert await scene.statuses([message]) == {}
    status, out = await scene.cli("room", "unblock", other)
    assert status == 0 and "unblocked" in out
    status, out = await scene.cli("audit", "--json")
    records = [orjson.loads(line) for line in out.splitlines()]
    assert {"shutdown_room", "unblock_room"} <= {
        r["action"] for r in records if r["target"] == other
    }
