"""The Directory gRPC service on a real port over the events tables: publishing,
public rooms (entries from current state, filters, pagination), hierarchy
(children, accessibility by the requesting server), rooms of a user, and a
remote server's directory read over federation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest
from aiohttp import web

from mxfed.federation_client import FederationClient
from mxfed_api.events.v1 import directory_pb2, directory_pb2_grpc
from services.events.directory.logic import Directory, HierarchyCache
from services.events.directory.servicer import DirectoryServicer
from services.events.directory.summaries import decode_token, encode_token, paginate
from tests.support.events_service import OUR_SERVER, EventsService, RemoteServer
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.grpc_plane import bind_loopback, channel_to, make_server
from tests.support.service_errors import described, errcode

ADMIN = f"@admin:{OUR_SERVER}"


@pytest.fixture
async def directory(
    events: EventsService, federation_client: FederationClient
) -> AsyncIterator[directory_pb2_grpc.DirectoryStub]:
    async with events.pool.acquire() as conn:
        await conn.execute("DELETE FROM events.published_rooms")
    server = make_server("events")
    logic = Directory(events.pool, OUR_SERVER, federation_client)
    directory_pb2_grpc.add_DirectoryServicer_to_server(DirectoryServicer(logic), server)
    address = bind_loopback(server, "events")
    await server.start()
    channel = channel_to(address, "events")
    yield directory_pb2_grpc.DirectoryStub(channel)
    await channel.close()
    await server.stop(grace=None)


async def _room(events: EventsService, version: str = "11", **kwargs: Any) -> str:
    kwargs.setdefault("preset", "public_chat")
    return await events.create_room(version, ADMIN, **kwargs)


async def _state(
    events: EventsService, room_id: str, event_type: str, content: dict, key: str = ""
):
    return await events.send(room_id, ADMIN, event_type, content, state_key=key)


async def _publish(stub: directory_pb2_grpc.DirectoryStub, *room_ids: str) -> None:
    for room_id in room_ids:
        await stub.PerformPublishRoom(directory_pb2.PerformPublishRoomRequest(room_id=room_id))


async def _public(stub, **kwargs: Any) -> dict[str, Any]:
    reply = await stub.QueryPublicRooms(directory_pb2.QueryPublicRoomsRequest(**kwargs))
    return orjson.loads(reply.response_json)


async def test_publish_list_and_unpublish(events: EventsService, directory) -> None:
    room_id = await _room(
        events,
        name="Cheese",
        topic="Tasty tasty cheese",
        alias_localpart=f"c{uuid.uuid4().hex[:8]}",
    )
    await _state(events, room_id, "m.room.avatar", {"url": "mxc://example.org/abc"})
    await _state(
        events, room_id, "m.room.history_visibility", {"history_visibility": "world_readable"}
    )
    await _state(events, room_id, "m.room.guest_access", {"guest_access": "can_join"})
    first = await directory.PerformPublishRoom(
        directory_pb2.PerformPublishRoomRequest(room_id=room_id)
    )
    again = await directory.PerformPublishRoom(
        directory_pb2.PerformPublishRoomRequest(room_id=room_id)
    )
    assert (first.was_published, again.was_published) == (False, True)

    reply = await directory.QueryPublicRooms(directory_pb2.QueryPublicRoomsRequest())
    body = orjson.loads(reply.response_json)
    (entry,) = body["chunk"]
    assert entry["room_id"] == room_id
    assert entry["name"] == "Cheese"
    assert entry["topic"] == "Tasty tasty cheese"
    assert entry["canonical_alias"].startswith("#c")
    assert entry["avatar_url"] == "mxc://example.org/abc"
    assert entry["num_joined_members"] == 1
    assert entry["join_rule"] == "public"
    assert entry["world_readable"] is True and entry["guest_can_join"] is True
    assert "room_type" not in entry
    assert body["total_room_count_estimate"] == 1
    assert "next_batch" not in body and "prev_batch" not in body
    assert reply.chunk[0].name == "Cheese" and reply.chunk[0].num_joined_members == 1
    assert not reply.chunk[0].HasField("room_type")

    gone = await directory.PerformUnpublishRoom(
        directory_pb2.PerformUnpublishRoomRequest(room_id=room_id)
    )
    assert gone.was_published
    assert (await _public(directory))["chunk"] == []
    again_gone = await directory.PerformUnpublishRoom(
        directory_pb2.PerformUnpublishRoomRequest(room_id=room_id)
    )
    assert not again_gone.was_published


async def test_publishing_an_unknown_room_is_not_found(directory) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _publish(directory, "!unknown:nowhere.example")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert errcode(caught.value) == "M_NOT_FOUND"


async def test_rich_topic_and_defaults(events: EventsService, directory) -> None:
    room_id = await _room(events, preset="private_chat")
    await _state(
        events,
        room_id,
        "m.room.topic",
        {
            "topic": "fallback",
            "m.topic": {
                "m.text": [{"mimetype": "text/html", "body": "<b>x</b>"}, {"body": "plain one"}]
            },
        },
    )
    await _state(events, room_id, "m.room.avatar", {"url": "https://not-mxc"})
    await _publish(directory, room_id)
    (entry,) = (await _public(directory))["chunk"]
    assert entry["topic"] == "plain one"
    assert "avatar_url" not in entry and "name" not in entry
    assert entry["join_rule"] == "invite"
    assert entry["world_readable"] is False
    assert entry["guest_can_join"] is True  # the private_chat preset allows guests


async def test_search_and_room_type_filters(events: EventsService, directory) -> None:
    tag = uuid.uuid4().hex[:8]
    plain = await _room(events, name=f"Plain {tag}")
    space = await _room(
        events,
        name="A space",
        topic=f"about {tag.upper()}",
        creation_content_json=orjson.dumps({"type": "m.space"}),
    )
    other = await _room(
        events, name="Other", creation_content_json=orjson.dumps({"type": "org.example"})
    )
    await _publish(directory, plain, space, other)

    def ids(body: dict) -> set[str]:
        return {entry["room_id"] for entry in body["chunk"]}

    assert ids(await _public(directory, generic_search_term=tag)) == {plain, space}
    spaces = directory_pb2.RoomTypeFilter(room_types=["m.space"])
    assert ids(await _public(directory, room_types=spaces)) == {space}
    untyped = directory_pb2.RoomTypeFilter(include_untyped=True)
    assert ids(await _public(directory, room_types=untyped)) == {plain}
    both = directory_pb2.RoomTypeFilter(room_types=["org.example"], include_untyped=True)
    assert ids(await _public(directory, room_types=both)) == {plain, other}
    assert ids(await _public(directory)) == {plain, space, other}
    space_entry = next(e for e in (await _public(directory))["chunk"] if e["room_id"] == space)
    assert space_entry["room_type"] == "m.space"


async def test_third_party_networks(events: EventsService, directory) -> None:
    ours = await _room(events)
    bridged = await _room(events)
    await _publish(directory, ours)
    await directory.PerformPublishRoom(
        directory_pb2.PerformPublishRoomRequest(room_id=bridged, network_id="irc")
    )

    def ids(body: dict) -> set[str]:
        return {entry["room_id"] for entry in body["chunk"]}

    assert ids(await _public(directory)) == {ours}
    assert ids(await _public(directory, third_party_instance_id="irc")) == {bridged}
    assert ids(await _public(directory, include_all_networks=True)) == {ours, bridged}


async def test_rooms_that_do_not_federate_are_hidden_from_federation(
    events: EventsService, directory
) -> None:
    local_only = await _room(events, creation_content_json=orjson.dumps({"m.federate": False}))
    await _publish(directory, local_only)
    assert len((await _public(directory))["chunk"]) == 1
    assert (await _public(directory, for_federation=True))["chunk"] == []


async def test_pagination_largest_first_both_ways(
    events: EventsService, remote: RemoteServer, directory
) -> None:
    rooms = [await _room(events) for _ in range(5)]
    # rooms[0] gets two more members, rooms[1] one more: they come first.
    for index, extra in ((0, 2), (1, 1)):
        for n in range(extra):
            head = await events.head(rooms[index])
            user = remote.user(f"u{n}")
            join, join_id = remote.pdu(head, "m.room.member", user, {"membership": "join"}, user)
            assert (await events.transaction(remote.name, [join])) == {"pdus": {join_id: {}}}
    await _publish(directory, *rooms)
    everything = (await _public(directory))["chunk"]
    order = [entry["room_id"] for entry in everything]
    assert order[:2] == [rooms[0], rooms[1]]
    assert [e["num_joined_members"] for e in everything] == [3, 2, 1, 1, 1]
    assert order[2:] == sorted(rooms[2:])

    pages, token = [], ""
    while True:
        body = await _public(directory, limit=2, since=token)
        pages.append([entry["room_id"] for entry in body["chunk"]])
        assert body["total_room_count_estimate"] == 5
        if "next_batch" not in body:
            break
        token = body["next_batch"]
    assert pages == [order[0:2], order[2:4], order[4:5]]
    assert "prev_batch" in body
    back = await _public(directory, limit=2, since=body["prev_batch"])
    assert [e["room_id"] for e in back["chunk"]] == order[2:4]
    first = await _public(directory, limit=2, since=back["prev_batch"])
    assert [e["room_id"] for e in first["chunk"]] == order[0:2]
    assert "prev_batch" not in first


async def test_bad_tokens_and_limits_are_invalid_argument(directory) -> None:
    for request in (
        directory_pb2.QueryPublicRoomsRequest(since="garbage!!"),
        directory_pb2.QueryPublicRoomsRequest(limit=-1),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await directory.QueryPublicRooms(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert errcode(caught.value) == "M_INVALID_PARAM"


def test_tokens_round_trip() -> None:
    entry = {"room_id": "!a:b", "num_joined_members": 7}
    assert decode_token(encode_token("n", entry)) == ("n", (-7, "!a:b"))
    assert paginate([], 10, "")["chunk"] == []


async def test_hierarchy_children_and_accessibility(
    events: EventsService, remote: RemoteServer, directory
) -> None:
    space = await _room(
        events, name="Space", creation_content_json=orjson.dumps({"type": "m.space"})
    )
    public = await _room(events, name="Public child")
    private = await _room(events, preset="private_chat", name="Private child")
    restricted = await _room(events, "10", preset="private_chat", name="Restricted")
    await _state(
        events,
        restricted,
        "m.room.join_rules",
        {
            "join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": space}],
        },
    )
    await _state(events, restricted, "m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"})
    for child, suggested in ((public, True), (private, False), (restricted, False)):
        await _state(
            events, space, "m.space.child", {"via": [OUR_SERVER], "suggested": suggested}, child
        )
    await _state(
        events, space, "m.space.child", {"via": ["elsewhere.example"]}, "!unknown:elsewhere.example"
    )
    await _state(events, space, "m.space.child", {}, "!removed:elsewhere.example")

    async def hierarchy(as_server: str, suggested_only: bool = False) -> dict:
        reply = await directory.QueryHierarchy(
            directory_pb2.QueryHierarchyRequest(
                room_id=space, as_server=as_server, suggested_only=suggested_only
            )
        )
        return orjson.loads(reply.response_json)

    body = await hierarchy(remote.name)
    assert body["room"]["room_id"] == space
    assert body["room"]["room_type"] == "m.space"
    assert body["room"]["room_version"] == "11"
    states = {s["state_key"]: s for s in body["room"]["children_state"]}
    assert set(states) == {public, private, restricted, "!unknown:elsewhere.example"}
    assert states[public]["sender"] == ADMIN and isinstance(states[public]["origin_server_ts"], int)
    assert states[public]["type"] == "m.space.child"
    assert [c["room_id"] for c in body["children"]] == [public]
    assert body["children"][0]["children_state"] == []
    assert sorted(body["inaccessible_children"]) == sorted([private, restricted])

    # Once the remote server has a member in the space, the restricted child opens up.
    head = await events.head(space)
    user = remote.user("spacer")
    join, join_id = remote.pdu(head, "m.room.member", user, {"membership": "join"}, user)
    assert (await events.transaction(remote.name, [join])) == {"pdus": {join_id: {}}}
    body = await hierarchy(remote.name)
    by_id = {c["room_id"]: c for c in body["children"]}
    assert set(by_id) == {public, restricted}
    assert by_id[restricted]["allowed_room_ids"] == [space]
    assert by_id[restricted]["encryption"] == "m.megolm.v1.aes-sha2"
    assert by_id[restricted]["join_rule"] == "restricted"
    assert body["inaccessible_children"] == [private]

    suggested = await hierarchy(remote.name, suggested_only=True)
    assert [s["state_key"] for s in suggested["room"]["children_state"]] == [public]
    assert [c["room_id"] for c in suggested["children"]] == [public]

    local = await hierarchy("")
    assert {c["room_id"] for c in local["children"]} == {public, private, restricted}


async def test_hierarchy_of_unknown_or_private_rooms_is_not_found(
    events: EventsService, directory
) -> None:
    private = await _room(events, preset="private_chat")
    for room_id, as_server in (("!nope:nowhere.example", ""), (private, "stranger.example")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await directory.QueryHierarchy(
                directory_pb2.QueryHierarchyRequest(room_id=room_id, as_server=as_server)
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_rooms_of_user(events: EventsService, remote: RemoteServer, directory) -> None:
    user = f"@u{uuid.uuid4().hex[:8]}:{OUR_SERVER}"
    first = await events.create_room("11", user, preset="public_chat")
    second = await events.create_room("10", user, preset="public_chat")
    await events.create_room("11", ADMIN, preset="public_chat")
    reply = await directory.QueryRoomsOfUser(directory_pb2.QueryRoomsOfUserRequest(user_id=user))
    assert list(reply.room_ids) == sorted([first, second])
    await events.send(first, user, "m.room.member", {"membership": "leave"}, state_key=user)
    reply = await directory.QueryRoomsOfUser(directory_pb2.QueryRoomsOfUserRequest(user_id=user))
    assert list(reply.room_ids) == [second]


@pytest.fixture
async def remote_directory() -> AsyncIterator[FakeHomeserver]:
    server = FakeHomeserver(key_version="dir1")
    seen: list[Any] = []

    async def public_rooms(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if body.get("filter", {}).get("generic_search_term") == "fail":
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "no"}, status=403)
        return web.json_response(
            {
                "chunk": [
                    {
                        "room_id": "!r:remote",
                        "num_joined_members": 4,
                        "world_readable": False,
                        "guest_can_join": False,
                        "name": "Remote",
                        "x.extra": 1,
                    }
                ],
                "next_batch": "tok",
                "total_room_count_estimate": 9,
            }
        )

    server.route("POST", "/_matrix/federation/v1/publicRooms", public_rooms)
    server.seen = seen  # type: ignore[attr-defined]
    await server.start()
    yield server
    await server.stop()


async def test_remote_directory_over_federation(
    directory, remote_directory: FakeHomeserver
) -> None:
    reply = await directory.QueryPublicRooms(
        directory_pb2.QueryPublicRoomsRequest(
            server=remote_directory.server_name,
            limit=5,
            generic_search_term="Re",
            room_types=directory_pb2.RoomTypeFilter(include_untyped=True),
        )
    )
    assert [r.room_id for r in reply.chunk] == ["!r:remote"]
    assert reply.next_batch == "tok" and reply.total_room_count_estimate == 9
    assert orjson.loads(reply.response_json)["chunk"][0]["x.extra"] == 1
    assert remote_directory.seen[-1] == {  # type: ignore[attr-defined]
        "limit": 5,
        "filter": {"generic_search_term": "Re", "room_types": [None]},
    }
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await directory.QueryPublicRooms(
            directory_pb2.QueryPublicRoomsRequest(
                server=remote_directory.server_name, generic_search_term="fail"
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert described(caught.value) == "M_FORBIDDEN: no"


async def test_unreachable_remote_directory_is_unavailable(directory, refused_port: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await directory.QueryPublicRooms(
            directory_pb2.QueryPublicRoomsRequest(server=f"127.0.0.1:{refused_port}")
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_hierarchy_asks_via_servers_for_children_we_do_not_hold(
    events: EventsService, remote: RemoteServer, directory, refused_port: int
) -> None:
    resident = FakeHomeserver(key_version="space1")
    asked: list[tuple[str, str]] = []
    remote_child = f"!far{uuid.uuid4().hex[:6]}:{resident.server_name}"
    missing_child = f"!gone{uuid.uuid4().hex[:6]}:{resident.server_name}"

    async def hierarchy_route(request: web.Request) -> web.Response:
        room_id = request.match_info["room_id"]
        asked.append((room_id, request.query.get("suggested_only", "")))
        if room_id != remote_child:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)
        summary = {
            "room_id": remote_child,
            "num_joined_members": 7,
            "world_readable": False,
            "guest_can_join": False,
            "name": "Far away",
            "join_rule": "public",
            "room_version": "10",
            "children_state": [],
        }
        return web.json_response({"room": summary, "children": [], "inaccessible_children": []})

    resident.route("GET", "/_matrix/federation/v1/hierarchy/{room_id}", hierarchy_route)
    await resident.start()
    try:
        dead = f"127.0.0.1:{refused_port}"
        space = await _room(
            events, name="Space", creation_content_json=orjson.dumps({"type": "m.space"})
        )
        local_child = await _room(events, name="Near")
        await _state(events, space, "m.space.child", {"via": [OUR_SERVER]}, local_child)
        await _state(
            events, space, "m.space.child", {"via": [dead, resident.server_name]}, remote_child
        )
        await _state(events, space, "m.space.child", {"via": [resident.server_name]}, missing_child)

        async def hierarchy(as_server: str = "") -> dict:
            reply = await directory.QueryHierarchy(
                directory_pb2.QueryHierarchyRequest(room_id=space, as_server=as_server)
            )
            return orjson.loads(reply.response_json)

        body = await hierarchy()
        by_id = {c["room_id"]: c for c in body["children"]}
        assert set(by_id) == {local_child, remote_child}
        assert by_id[remote_child]["name"] == "Far away"
        assert by_id[remote_child]["num_joined_members"] == 7
        assert body["inaccessible_children"] == []
        assert sorted(asked) == sorted([(remote_child, "false"), (missing_child, "false")])
        # Answers (and "nobody has it") are cached: no new requests.
        again = await hierarchy()
        assert {c["room_id"] for c in again["children"]} == {local_child, remote_child}
        assert len(asked) == 2
        # A remote requester is not answered with rooms we do not hold.
        federated = await hierarchy(remote.name)
        assert {c["room_id"] for c in federated["children"]} == {local_child}
        assert len(asked) == 2
    finally:
        await resident.stop()


def test_hierarchy_cache_expiry_and_size() -> None:
    cache = HierarchyCache(ttl=60, negative_ttl=0, size=2)
    cache.put(("!a", False), {"room_id": "!a"})
    cache.put(("!b", False), None)
    assert cache.get(("!a", False)) == (True, {"room_id": "!a"})
    assert cache.get(("!b", False)) == (False, None)  # negative entry already expired
    cache.put(("!c", False), {"room_id": "!c"})
    cache.put(("!d", False), {"room_id": "!d"})
    assert cache.get(("!a", False)) == (False, None)  # dropped for size
    assert cache.get(("!d", True)) == (False, None)
