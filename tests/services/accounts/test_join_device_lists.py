"""Device lists sent when a local user's join brings in new servers
(https://spec.matrix.org/v1.19/server-server-api/#device-management):
the keys process follows the events stream from a durable cursor under an
advisory lock, records joins in an outbox in the cursor's transaction, and
hands one m.device_list_update per device (plus m.signing_key_update) to the
sender for the servers that did not already share a room with the user."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import orjson
import pytest

from mxfed.internal_plane import Caller
from mxfed_api.events.v1 import directory_pb2, directory_pb2_grpc, events_pb2, events_pb2_grpc
from mxfed_api.sender.v1 import sender_pb2, sender_pb2_grpc
from services.accounts.joins import JoinDeviceLists
from services.accounts.local import LocalAccounts
from services.accounts.notify import RecordingNotifier
from tests.support.grpc_plane import bind_loopback, channel_to, make_server
from tests.support.polling import wait_until

OURS = "joins-test.example"


class FakeBackends(
    events_pb2_grpc.EventsServicer,
    directory_pb2_grpc.DirectoryServicer,
    sender_pb2_grpc.SenderServicer,
):
    """Events (stream, events, servers), Directory (rooms of a user) and Sender."""

    def __init__(self) -> None:
        self.items: list[events_pb2.StreamEventsResponse] = []
        self.events: dict[str, bytes] = {}
        self.room_servers: dict[str, list[str]] = {}
        self.user_rooms: dict[str, list[str]] = {}
        # Rooms whose state is partial here (a join with omit_members, resyncing).
        self.resyncing: set[str] = set()
        # The servers before each event, as the events service holds them now.
        self.servers_before: dict[str, list[str]] = {}
        self.sent: list[sender_pb2.Edu] = []
        self.sender_failures = 0
        self.stream_requests: list[events_pb2.StreamEventsRequest] = []
        self._changed = asyncio.Condition()
        self.server = make_server("events")
        self.address = bind_loopback(self.server, "events")

    async def start(self) -> FakeBackends:
        events_pb2_grpc.add_EventsServicer_to_server(self, self.server)
        directory_pb2_grpc.add_DirectoryServicer_to_server(self, self.server)
        sender_pb2_grpc.add_SenderServicer_to_server(self, self.server)
        await self.server.start()
        return self

    def member(self, room_id: str, user_id: str, membership: str, auth: list[str]) -> str:
        event_id = f"${uuid.uuid4().hex}"
        pdu = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": {"membership": membership},
            "auth_events": auth,
            "prev_events": [],
            "depth": 3,
            "origin_server_ts": 1,
        }
        self.events[event_id] = orjson.dumps(pdu)
        return event_id

    async def add(
        self,
        event_id: str,
        room_id: str,
        servers_before: list[str],
        status: int = events_pb2.EVENT_STATUS_ACCEPTED,
    ) -> int:
        position = len(self.items) + 1
        self.servers_before[event_id] = servers_before
        self.items.append(
            events_pb2.StreamEventsResponse(
                position=position,
                event=events_pb2.EventRecord(
                    event_id=event_id,
                    room_id=room_id,
                    room_version="10",
                    pdu_json=self.events[event_id],
                    status=status,
                    stream_position=position,
                ),
                servers_before=servers_before,
            )
        )
        async with self._changed:
            self._changed.notify_all()
        return position

    async def StreamEvents(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        assert request.local_senders_only
        self.stream_requests.append(request)
        sent = len(self.items) if request.after_position == -1 else request.after_position
        while True:
            while sent < len(self.items):
                sent += 1
                yield self.items[sent - 1]
            async with self._changed:
                await self._changed.wait_for(lambda sent=sent: len(self.items) > sent)

    async def QueryEvents(self, request: Any, context: Any) -> Any:  # noqa: N802
        return events_pb2.QueryEventsResponse(
            events=[
                events_pb2.EventRecord(event_id=e, pdu_json=self.events[e])
                for e in request.event_ids
                if e in self.events
            ]
        )

    async def QueryServersInRoom(self, request: Any, context: Any) -> Any:  # noqa: N802
        if request.at_event_id:
            servers = self.servers_before.get(request.at_event_id, [])
        else:
            servers = self.room_servers.get(request.room_id, [])
        return events_pb2.QueryServersInRoomResponse(servers=servers)

    async def QueryRoomInfo(self, request: Any, context: Any) -> Any:  # noqa: N802
        partial = request.room_id in self.resyncing
        return events_pb2.QueryRoomInfoResponse(
            exists=True,
            resync_state=events_pb2.RESYNC_STATE_FETCHING
            if partial
            else events_pb2.RESYNC_STATE_FULL_STATE,
        )

    async def QueryRoomsOfUser(self, request: Any, context: Any) -> Any:  # noqa: N802
        return directory_pb2.QueryRoomsOfUserResponse(
            room_ids=sorted(self.user_rooms.get(request.user_id, []))
        )

    async def PerformSendEdus(self, request: Any, context: Any) -> Any:  # noqa: N802
        if self.sender_failures:
            self.sender_failures -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "sender down")
        self.sent.extend(request.edus)
        return sender_pb2.PerformSendEdusResponse(queued=len(request.edus))


@pytest.fixture
async def backends() -> AsyncIterator[FakeBackends]:
    fake = await FakeBackends().start()
    yield fake
    await fake.server.stop(grace=None)


@pytest.fixture
async def local(keys_pool: asyncpg.Pool) -> LocalAccounts:
    await keys_pool.execute("TRUNCATE accounts.device_list_join_outbox")
    await keys_pool.execute("TRUNCATE accounts.device_list_partial_joins")
    await keys_pool.execute("UPDATE accounts.device_list_join_cursor SET stream_position = 0")
    return LocalAccounts(keys_pool, OURS, RecordingNotifier())


class Runner:
    def __init__(self, database_url: str, local: LocalAccounts, backends: FakeBackends) -> None:
        self.database_url = database_url
        self.local = local
        self.backends = backends
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: dict[JoinDeviceLists, asyncio.Task[None]] = {}

    def start(self) -> JoinDeviceLists:
        channel = channel_to(self.backends.address, "events", Caller.part("keys"))
        self.channels.append(channel)
        follower = JoinDeviceLists(
            self.database_url,
            self.local,
            channel,
            channel,
            lock_poll_interval=0.1,
            retry_interval=0.1,
            resync_poll_interval=0.1,
        )
        self.tasks[follower] = asyncio.create_task(follower.run())
        return follower

    async def stop(self, follower: JoinDeviceLists) -> None:
        task = self.tasks.pop(follower)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        for follower in list(self.tasks):
            await self.stop(follower)
        for channel in self.channels:
            await channel.close()


@pytest.fixture
async def runner(
    database_url: str, local: LocalAccounts, backends: FakeBackends
) -> AsyncIterator[Runner]:
    started = Runner(database_url, local, backends)
    yield started
    await started.close()


async def cursor(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT stream_position FROM accounts.device_list_join_cursor")


async def outbox_empty(pool: asyncpg.Pool) -> None:
    for _ in range(100):
        if not await pool.fetchval("SELECT count(*) FROM accounts.device_list_join_outbox"):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the outbox was not drained")


def device_keys(user_id: str, device_id: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {f"curve25519:{device_id}": "c", f"ed25519:{device_id}": "e"},
        "signatures": {user_id: {f"ed25519:{device_id}": "sig"}},
    }


async def user_with_devices(local: LocalAccounts) -> str:
    user = f"@u{uuid.uuid4().hex[:8]}:{OURS}"
    await local.upload_keys(
        user,
        "PHONE",
        display_name="Phone",
        device_keys=device_keys(user, "PHONE"),
        one_time_keys=None,
        fallback_keys=None,
    )
    await local.upload_keys(
        user, "LAPTOP", display_name=None, device_keys=None, one_time_keys=None, fallback_keys=None
    )
    master = {"user_id": user, "usage": ["master"], "keys": {"ed25519:M": "M"}}
    await local.upload_cross_signing_keys(user, {"master": master})
    return user


def edus_of(backends: FakeBackends, edu_type: str) -> list[tuple[dict[str, Any], list[str]]]:
    return [
        (orjson.loads(e.content_json), list(e.destinations))
        for e in backends.sent
        if e.edu_type == edu_type
    ]


async def test_join_sends_device_lists_to_new_servers_only(
    keys_pool: asyncpg.Pool, local: LocalAccounts, backends: FakeBackends, runner: Runner
) -> None:
    user = await user_with_devices(local)
    stream_id = (await local.user_devices(user))["stream_id"]
    # The user already shares !old with a.example; !new brings in b.example too.
    backends.user_rooms[user] = ["!old:x", "!new:x"]
    backends.room_servers["!old:x"] = [OURS, "a.example"]
    invite = backends.member("!new:x", user, "invite", [])
    join = backends.member("!new:x", user, "join", [invite])
    position = await backends.add(join, "!new:x", [OURS, "a.example", "b.example"])
    runner.start()
    await wait_until(lambda: len(backends.sent) == 3)
    devices = edus_of(backends, "m.device_list_update")
    assert sorted(c["device_id"] for c, _ in devices) == ["LAPTOP", "PHONE"]
    for content, destinations in devices:
        assert destinations == ["b.example"]
        assert content["user_id"] == user
        assert content["stream_id"] == stream_id
        assert content["prev_id"] == []
    phone = next(c for c, _ in devices if c["device_id"] == "PHONE")
    assert phone["keys"] == device_keys(user, "PHONE")
    assert phone["device_display_name"] == "Phone"
    laptop = next(c for c, _ in devices if c["device_id"] == "LAPTOP")
    assert "keys" not in laptop and "device_display_name" not in laptop
    [(signing, destinations)] = edus_of(backends, "m.signing_key_update")
    assert destinations == ["b.example"]
    assert signing["master_key"]["keys"] == {"ed25519:M": "M"}
    assert await cursor(keys_pool) == position
    await outbox_empty(keys_pool)
    # Only member events: every message would have cost a commit of the cursor.
    assert [list(r.event_types) for r in backends.stream_requests] == [["m.room.member"]]


async def test_not_sent_for_other_events_profile_changes_or_known_servers(
    keys_pool: asyncpg.Pool, local: LocalAccounts, backends: FakeBackends, runner: Runner
) -> None:
    user = await user_with_devices(local)
    remote_user = "@bob:b.example"
    backends.user_rooms[user] = ["!old:x", "!new:x"]
    backends.room_servers["!old:x"] = [OURS, "a.example", "b.example"]
    # b.example already shares !old: nothing to send for !new.
    join = backends.member("!new:x", user, "join", [])
    await backends.add(join, "!new:x", [OURS, "b.example"])
    # A display-name change (join → join) in a room with a new server.
    first = backends.member("!third:x", user, "join", [])
    again = backends.member("!third:x", user, "join", [first])
    await backends.add(again, "!third:x", [OURS, "c.example"])
    # Rejected joins, remote users' joins, leaves.
    rejected = backends.member("!fourth:x", user, "join", [])
    await backends.add(
        rejected, "!fourth:x", ["d.example"], status=events_pb2.EVENT_STATUS_REJECTED
    )
    theirs = backends.member("!fourth:x", remote_user, "join", [])
    await backends.add(theirs, "!fourth:x", ["d.example"])
    leave = backends.member("!fourth:x", user, "leave", [])
    last = await backends.add(leave, "!fourth:x", ["d.example"])
    runner.start()
    await wait_until(lambda: backends.stream_requests != [])
    for _ in range(100):
        if await cursor(keys_pool) == last:
            break
        await asyncio.sleep(0.02)
    assert await cursor(keys_pool) == last
    await asyncio.sleep(0.2)
    assert backends.sent == []


async def test_cursor_is_durable_and_one_replica_consumes(
    keys_pool: asyncpg.Pool, local: LocalAccounts, backends: FakeBackends, runner: Runner
) -> None:
    user = await user_with_devices(local)
    backends.user_rooms[user] = []
    first = runner.start()
    second = runner.start()
    await wait_until(lambda: first.leader or second.leader)
    await asyncio.sleep(0.3)
    assert not (first.leader and second.leader)
    assert len(backends.stream_requests) == 1
    join = backends.member("!a:x", user, "join", [])
    position = await backends.add(join, "!a:x", ["e.example"])
    await wait_until(lambda: len(backends.sent) == 3)
    assert {tuple(e.destinations) for e in backends.sent} == {("e.example",)}
    # The leader goes away: the other replica takes over from the stored cursor.
    leader, other = (first, second) if first.leader else (second, first)
    await runner.stop(leader)
    await wait_until(lambda: other.leader)
    await wait_until(lambda: len(backends.stream_requests) == 2)
    assert backends.stream_requests[-1].after_position == position
    join2 = backends.member("!b:x", user, "join", [])
    await backends.add(join2, "!b:x", ["f.example"])
    await wait_until(lambda: len(backends.sent) == 6)
    assert {tuple(e.destinations) for e in backends.sent[3:]} == {("f.example",)}


async def test_sender_failure_is_retried_from_the_outbox(
    keys_pool: asyncpg.Pool, local: LocalAccounts, backends: FakeBackends, runner: Runner
) -> None:
    user = await user_with_devices(local)
    backends.user_rooms[user] = []
    backends.sender_failures = 2
    join = backends.member("!a:x", user, "join", [])
    position = await backends.add(join, "!a:x", ["g.example"])
    follower = runner.start()
    await wait_until(lambda: len(backends.sent) == 3)
    assert backends.sender_failures == 0
    assert follower.position == position
    await outbox_empty(keys_pool)
    # A row left in the outbox by a crash is handed over by the next leader.
    await runner.stop(follower)
    await keys_pool.execute(
        "INSERT INTO accounts.device_list_join_outbox"
        " (user_id, room_id, event_id, destinations, created_ts)"
        " VALUES ($1, '!c:x', '$crashed', ARRAY['h.example'], 0)",
        user,
    )
    runner.start()
    await wait_until(lambda: len(backends.sent) == 6)
    assert {tuple(e.destinations) for e in backends.sent[3:]} == {("h.example",)}


async def test_servers_a_resync_reveals_get_the_device_lists_once_it_has_ended(
    keys_pool: asyncpg.Pool, local: LocalAccounts, backends: FakeBackends, runner: Runner
) -> None:
    user = await user_with_devices(local)
    room = "!partial:x"
    backends.user_rooms[user] = [room]
    backends.resyncing.add(room)
    # The join's answer named a.example (servers_in_room); the full state
    # also has b.example and c.example (joined while the room was partial).
    backends.room_servers[room] = [OURS, "a.example", "b.example", "c.example"]
    join = backends.member(room, user, "join", [])
    await backends.add(join, room, [OURS, "a.example"])
    runner.start()
    await wait_until(lambda: len(backends.sent) == 3)
    assert {tuple(d) for _, d in edus_of(backends, "m.device_list_update")} == {("a.example",)}
    await outbox_empty(keys_pool)
    pending = await keys_pool.fetchval("SELECT count(*) FROM accounts.device_list_partial_joins")
    assert pending == 1
    # The resync ends: the servers not sent to get the whole list, once.
    backends.resyncing.discard(room)
    await wait_until(lambda: len(backends.sent) == 6)
    later = [(c, d) for c, d in edus_of(backends, "m.device_list_update")[2:]]
    assert sorted(c["device_id"] for c, _ in later) == ["LAPTOP", "PHONE"]
    assert all(d == ["b.example", "c.example"] for _, d in later)
    [_, (_, signing_to)] = edus_of(backends, "m.signing_key_update")
    assert signing_to == ["b.example", "c.example"]
    await outbox_empty(keys_pool)
    for _ in range(100):
        if not await keys_pool.fetchval("SELECT count(*) FROM accounts.device_list_partial_joins"):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the partial join was not forgotten")
    # Forgotten in the transaction that queued it: nothing is sent again.
    await outbox_empty(keys_pool)
    assert len(backends.sent) == 6


async def test_a_join_read_before_its_resync_ended_gets_the_full_states_servers(
    keys_pool: asyncpg.Pool, local: LocalAccounts, backends: FakeBackends, runner: Runner
) -> None:
    user = await user_with_devices(local)
    room = "!raced:x"
    backends.user_rooms[user] = [room]
    join = backends.member(room, user, "join", [])
    # Streamed with the partial state's servers; by the time it is handled
    # the resync has ended and placed the join on the full state.
    await backends.add(join, room, [OURS, "a.example"])
    backends.servers_before[join] = [OURS, "a.example", "b.example"]
    runner.start()
    await wait_until(lambda: len(backends.sent) == 3)
    assert {tuple(d) for _, d in edus_of(backends, "m.device_list_update")} == {
        ("a.example", "b.example")
    }
