"""``/event``, ``/state``, ``/state_ids`` and ``/event_auth`` against a whole running mxfed.

The remote FakeHomeserver's @bob joins a public room created on mxfed; a
second FakeHomeserver has no member anywhere.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from matrix_protocol.events import Event
from mxfed_api.events.v1 import events_pb2
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.scene import Room, Scene

pytestmark = pytest.mark.whole_stack

V1 = "/_matrix/federation/v1"


def q(value: str) -> str:
    return quote(value, safe="")


@pytest.fixture(scope="module")
async def joined(scene: Scene) -> dict[str, Any]:
    """A room @bob joined, with one message of his: the ids and the message PDU."""
    room = await scene.create_room()
    join_id = await scene.join(room, scene.remote.user("bob"))
    message_id, message = await scene.build(
        room, scene.remote.user("bob"), "m.room.message", {"msgtype": "m.text", "body": "hi"}
    )
    response = await scene.send([message])
    assert response.json() == {"pdus": {message_id: {}}}
    return {"room": room, "join_id": join_id, "message_id": message_id, "message": message}


async def _auth_closure(scene: Scene, room: Room, event_ids: list[str]) -> set[str]:
    """Every auth event of ``event_ids``, recursively, read over gRPC (plus the create event)."""
    info = await scene.events.QueryRoomInfo(
        events_pb2.QueryRoomInfoRequest(room_id=room.room_id), timeout=10
    )
    seen: set[str] = {info.create_event_id}  # implicit in v12, cited before
    todo = list(event_ids)
    while todo:
        reply = await scene.events.QueryEvents(
            events_pb2.QueryEventsRequest(event_ids=todo), timeout=10
        )
        assert {record.event_id for record in reply.events} == set(todo)
        todo = []
        for record in reply.events:
            for auth_id in orjson.loads(record.pdu_json)["auth_events"]:
                if auth_id not in seen:
                    seen.add(auth_id)
                    todo.append(auth_id)
    return seen


# /event ------------------------------------------------------------------------------


async def test_event_returns_a_single_pdu_transaction(scene: Scene, joined: dict) -> None:
    before = int(time.time() * 1000)
    response = await scene.get(f"{V1}/event/{q(joined['message_id'])}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["origin"] == scene.mxfed.server_name
    assert before - 1000 <= body["origin_server_ts"] <= int(time.time() * 1000) + 1000
    (pdu,) = body["pdus"]
    sent = dict(joined["message"])
    assert {k: v for k, v in pdu.items() if k != "unsigned"} == sent
    assert "event_id" not in pdu


async def test_event_serves_the_servers_own_events_too(scene: Scene, joined: dict) -> None:
    state = await scene.current_state(joined["room"].room_id)
    create_id = state[("m.room.create", "")]
    response = await scene.get(f"{V1}/event/{q(create_id)}")
    assert response.status_code == 200
    assert response.json()["pdus"][0]["type"] == "m.room.create"


async def test_event_unknown_is_404(scene: Scene) -> None:
    response = await scene.get(f"{V1}/event/{q('$doesnotexist0000000000000000000000000000000')}")
    assert response.status_code == 404
    assert response.json()["errcode"] == "M_NOT_FOUND"


async def test_event_of_a_room_the_server_is_not_in_is_404(
    scene: Scene, joined: dict, outsider: FakeHomeserver
) -> None:
    response = await scene.get(f"{V1}/event/{q(joined['message_id'])}", server=outsider)
    assert response.status_code == 404
    assert response.json()["errcode"] == "M_NOT_FOUND"


# /state_ids and /state ------------------------------------------------------------------


async def test_state_ids_before_a_message(scene: Scene, joined: dict) -> None:
    room = joined["room"]
    response = await scene.get(
        f"{V1}/state_ids/{q(room.room_id)}?event_id={q(joined['message_id'])}"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"pdu_ids", "auth_chain_ids"}
    state = await scene.current_state(room.room_id)
    assert sorted(body["pdu_ids"]) == sorted(state.values())
    assert state[("m.room.member", scene.remote.user("bob"))] == joined["join_id"]
    expected_chain = await _auth_closure(scene, room, list(state.values()))
    assert set(body["auth_chain_ids"]) <= expected_chain
    # Every state event's own auth events are in the chain (or are state themselves).
    assert expected_chain <= set(body["auth_chain_ids"]) | set(body["pdu_ids"])


async def test_state_ids_is_the_state_before_the_event(scene: Scene, joined: dict) -> None:
    room = joined["room"]
    response = await scene.get(f"{V1}/state_ids/{q(room.room_id)}?event_id={q(joined['join_id'])}")
    assert response.status_code == 200, response.text
    state = await scene.current_state(room.room_id)
    before_join = {v for k, v in state.items() if k != ("m.room.member", scene.remote.user("bob"))}
    assert set(response.json()["pdu_ids"]) == before_join


async def test_state_matches_state_ids(scene: Scene, joined: dict) -> None:
    room = joined["room"]
    query = f"{q(room.room_id)}?event_id={q(joined['message_id'])}"
    ids = (await scene.get(f"{V1}/state_ids/{query}")).json()
    response = await scene.get(f"{V1}/state/{query}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"pdus", "auth_chain"}

    def event_ids(pdus: list[dict]) -> list[str]:
        return sorted(Event.from_pdu(pdu, room.version).event_id for pdu in pdus)

    assert event_ids(body["pdus"]) == sorted(ids["pdu_ids"])
    assert event_ids(body["auth_chain"]) == sorted(ids["auth_chain_ids"])


@pytest.mark.parametrize("route", ["state", "state_ids"])
async def test_state_without_event_id_is_missing_param(
    scene: Scene, joined: dict, route: str
) -> None:
    response = await scene.get(f"{V1}/{route}/{q(joined['room'].room_id)}")
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_MISSING_PARAM"


@pytest.mark.parametrize("route", ["state", "state_ids"])
async def test_state_at_an_unknown_event_is_404(scene: Scene, joined: dict, route: str) -> None:
    unknown = "$unknownevent000000000000000000000000000000"
    response = await scene.get(f"{V1}/{route}/{q(joined['room'].room_id)}?event_id={q(unknown)}")
    assert response.status_code == 404
    assert response.json()["errcode"] == "M_NOT_FOUND"


async def test_state_of_an_unknown_room_is_404(scene: Scene, joined: dict) -> None:
    response = await scene.get(
        f"{V1}/state_ids/{q('!nosuchroom:nowhere.example')}?event_id={q(joined['message_id'])}"
    )
    assert response.status_code == 404
    assert response.json()["errcode"] == "M_NOT_FOUND"


@pytest.mark.parametrize("route", ["state", "state_ids"])
async def test_state_for_a_server_without_members_is_forbidden(
    scene: Scene, joined: dict, outsider: FakeHomeserver, route: str
) -> None:
    query = f"{q(joined['room'].room_id)}?event_id={q(joined['message_id'])}"
    response = await scene.get(f"{V1}/{route}/{query}", server=outsider)
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"


async def _acl_denied_room(scene: Scene) -> tuple[Room, str]:
    """A room bob joined and wrote in, then an ACL that denies every IP literal server."""
    room = await scene.create_room()
    bob = scene.remote.user("bob")
    await scene.join(room, bob)
    message_id, message = await scene.build(room, bob, "m.room.message", {"body": "before acl"})
    assert (await scene.send([message])).json() == {"pdus": {message_id: {}}}
    query = f"{q(room.room_id)}?event_id={q(message_id)}"
    assert (await scene.get(f"{V1}/state_ids/{query}")).status_code == 200
    # Every fake server is an IP literal (127.0.0.1:port).
    await scene.send_local(
        room, "m.room.server_acl", {"allow": ["*"], "deny": [], "allow_ip_literals": False}, ""
    )
    return room, message_id


async def test_a_server_denied_by_the_acl_is_forbidden(scene: Scene) -> None:
    room, message_id = await _acl_denied_room(scene)
    query = f"{q(room.room_id)}?event_id={q(message_id)}"
    for uri in (
        f"{V1}/state_ids/{query}",
        f"{V1}/state/{query}",
        f"{V1}/event_auth/{q(room.room_id)}/{q(message_id)}",
    ):
        response = await scene.get(uri)
        assert response.status_code == 403, uri
        assert response.json()["errcode"] == "M_FORBIDDEN"


async def test_send_applies_the_acl_per_pdu(scene: Scene) -> None:
    room, _ = await _acl_denied_room(scene)
    bob = scene.remote.user("bob")
    denied_id, denied = await scene.build(room, bob, "m.room.message", {"body": "after acl"})
    response = await scene.send([denied])
    assert response.status_code == 200
    assert "error" in response.json()["pdus"][denied_id]


# /event_auth ----------------------------------------------------------------------------


async def test_event_auth_returns_the_auth_chain_of_the_event(scene: Scene, joined: dict) -> None:
    room = joined["room"]
    response = await scene.get(f"{V1}/event_auth/{q(room.room_id)}/{q(joined['message_id'])}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"auth_chain"}
    returned = {Event.from_pdu(pdu, room.version).event_id for pdu in body["auth_chain"]}
    assert returned == await _auth_closure(scene, room, [joined["message_id"]])
    assert joined["message_id"] not in returned
    assert joined["join_id"] in returned


async def test_event_auth_of_an_unknown_event_is_404(scene: Scene, joined: dict) -> None:
    unknown = "$unknownevent000000000000000000000000000000"
    response = await scene.get(f"{V1}/event_auth/{q(joined['room'].room_id)}/{q(unknown)}")
    assert response.status_code == 404
    assert response.json()["errcode"] == "M_NOT_FOUND"


async def test_event_auth_of_an_event_of_another_room_is_404(scene: Scene, joined: dict) -> None:
    other = await scene.create_room()
    await scene.join(other, scene.remote.user("bob"))
    response = await scene.get(f"{V1}/event_auth/{q(other.room_id)}/{q(joined['message_id'])}")
    assert response.status_code == 404
    assert response.json()["errcode"] == "M_NOT_FOUND"


async def test_event_auth_for_a_server_without_members_is_forbidden(
    scene: Scene, joined: dict, outsider: FakeHomeserver
) -> None:
    uri = f"{V1}/event_auth/{q(joined['room'].room_id)}/{q(joined['message_id'])}"
    response = await scene.get(uri, server=outsider)
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"


async def test_v3_event_ids_with_slashes_and_pluses(scene: Scene) -> None:
    """Room v3 event IDs use standard base64: ``/`` arrives as ``%2F`` and must still route."""
    room = await scene.create_room(room_version="3")
    await scene.join(room, scene.remote.user("bob"))
    awkward: list[str] = []
    for n in range(40):
        event_id = await scene.send_local(room, "m.room.message", {"body": f"n{n}"})
        if "/" in event_id or "+" in event_id:
            awkward.append(event_id)
        if any("/" in e for e in awkward) and any("+" in e for e in awkward):
            break
    assert awkward
    for event_id in awkward:
        response = await scene.get(f"{V1}/event/{q(event_id)}")
        assert response.status_code == 200, (event_id, response.text)
        assert Event.from_pdu(response.json()["pdus"][0], room.version).event_id == event_id
        response = await scene.get(f"{V1}/event_auth/{q(room.room_id)}/{q(event_id)}")
        assert response.status_code == 200, (event_id, response.text)
        query = f"{q(room.room_id)}?event_id={q(event_id)}"
        assert (await scene.get(f"{V1}/state_ids/{query}")).status_code == 200
