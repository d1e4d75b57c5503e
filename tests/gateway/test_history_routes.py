"""``/backfill``, ``/get_missing_events`` and ``/timestamp_to_event`` against a whole running mxfed.

A room created on mxfed that the FakeHomeserver's @bob joined, with local
messages after; a second FakeHomeserver has no member anywhere.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
import pytest

from tests.support.fake_homeserver import FakeHomeserver
from tests.support.scene import Room, Scene

pytestmark = pytest.mark.whole_stack

V1 = "/_matrix/federation/v1"


def q(value: str) -> str:
    return quote(value, safe="")


@pytest.fixture(scope="module")
async def chat(scene: Scene) -> dict[str, Any]:
    """A joined room with 120 local messages after bob's join (a linear DAG)."""
    room = await scene.joined_room()
    messages = [
        await scene.send_local(room, "m.room.message", {"msgtype": "m.text", "body": f"m{i}"})
        for i in range(120)
    ]
    return {"room": room, "messages": messages}


async def backfill(scene: Scene, room: Room, v: list[str], limit: Any, server=None):
    limits = [f"limit={limit}"] if limit is not None else []
    query = "&".join([*(f"v={q(e)}" for e in v), *limits])
    return await scene.get(f"{V1}/backfill/{q(room.room_id)}?{query}", server=server)


async def missing(scene: Scene, room: Room, body: Any, server=None):
    server = server or scene.remote
    return await server.federation_request(
        scene.mxfed.federation_url,
        scene.mxfed.server_name,
        "POST",
        f"{V1}/get_missing_events/{q(room.room_id)}",
        body,
    )


def ids_of(scene: Scene, room: Room, pdus: list[dict]) -> list[str]:
    from matrix_protocol.events import Event

    return [Event.from_pdu(p, room.version).event_id for p in pdus]


# /backfill ------------------------------------------------------------------------------------


async def test_backfill_returns_the_start_and_its_predecessors_newest_first(
    scene: Scene, chat: dict
) -> None:
    room, messages = chat["room"], chat["messages"]
    response = await backfill(scene, room, [messages[-1]], 10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["origin"] == scene.mxfed.server_name
    assert isinstance(body["origin_server_ts"], int)
    assert ids_of(scene, room, body["pdus"]) == messages[-1:-11:-1]
    assert all("event_id" not in pdu for pdu in body["pdus"])


async def test_backfill_pages_back_to_the_room_start(scene: Scene, chat: dict) -> None:
    room, messages = chat["room"], chat["messages"]
    seen: list[str] = []
    start = [messages[-1]]
    while True:
        response = await backfill(scene, room, start, 50)
        pdus = response.json()["pdus"]
        ids = [e for e in ids_of(scene, room, pdus) if e not in seen]
        if not ids:
            break
        seen.extend(ids)
        start = [ids[-1]]
    assert seen[:120] == messages[::-1]
    assert len(seen) == len(set(seen)) > 120
    oldest = await scene.record(seen[-1])
    assert orjson.loads(oldest.pdu_json)["type"] == "m.room.create"


async def test_backfill_limit_is_capped_at_100(scene: Scene, chat: dict) -> None:
    response = await backfill(scene, chat["room"], [chat["messages"][-1]], 500)
    assert response.status_code == 200
    assert len(response.json()["pdus"]) == 100


async def test_backfill_without_limit_or_v_is_missing_param(scene: Scene, chat: dict) -> None:
    room = chat["room"]
    for response in (
        await backfill(scene, room, [chat["messages"][-1]], None),
        await backfill(scene, room, [], 10),
    ):
        assert response.status_code == 400
        assert response.json()["errcode"] == "M_MISSING_PARAM"
    response = await backfill(scene, room, [chat["messages"][-1]], "ten")
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_INVALID_PARAM"


async def test_backfill_of_an_unknown_room_is_404(scene: Scene) -> None:
    response = await scene.get(f"{V1}/backfill/{q('!nope:example.org')}?v={q('$x')}&limit=5")
    assert response.status_code == 404
    assert response.json()["errcode"] == "M_NOT_FOUND"


async def test_history_for_a_server_without_members_is_forbidden(
    scene: Scene, chat: dict, outsider: FakeHomeserver
) -> None:
    room, messages = chat["room"], chat["messages"]
    response = await backfill(scene, room, [messages[-1]], 10, server=outsider)
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"
    body = {"earliest_events": [messages[0]], "latest_events": [messages[-1]]}
    response = await missing(scene, room, body, server=outsider)
    assert response.status_code == 403
    response = await scene.get(
        f"{V1}/timestamp_to_event/{q(room.room_id)}?ts=0&dir=f", server=outsider
    )
    assert response.status_code == 403


async def test_history_for_a_server_denied_by_the_acl_is_forbidden(scene: Scene) -> None:
    room = await scene.joined_room()
    message = await scene.send_local(room, "m.room.message", {"body": "x"})
    assert (await backfill(scene, room, [message], 5)).status_code == 200
    # Every fake server is an IP literal (127.0.0.1:port).
    await scene.send_local(
        room, "m.room.server_acl", {"allow": ["*"], "deny": [], "allow_ip_literals": False}, ""
    )
    response = await backfill(scene, room, [message], 5)
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"
    response = await missing(scene, room, {"earliest_events": [], "latest_events": [message]})
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"


async def test_history_visibility_joined_redacts_what_came_before_the_join(scene: Scene) -> None:
    room = await scene.create_room()
    await scene.send_local(room, "m.room.history_visibility", {"history_visibility": "joined"}, "")
    before = await scene.send_local(room, "m.room.message", {"body": "secret"})
    join = await scene.join(room, scene.remote.user("bob"))
    after = await scene.send_local(room, "m.room.message", {"body": "hello bob"})
    response = await backfill(scene, room, [after], 10)
    assert response.status_code == 200
    served = response.json()["pdus"]
    pdus = dict(zip(ids_of(scene, room, served), served, strict=True))
    assert list(pdus)[:3] == [after, join, before]
    assert pdus[after]["content"] == {"body": "hello bob"}
    assert pdus[before]["content"] == {}  # redacted: nobody on bob's server could see it
    body = {"earliest_events": [], "latest_events": [after], "limit": 5}
    events = (await missing(scene, room, body)).json()["events"]
    by_id = dict(zip(ids_of(scene, room, events), events, strict=True))
    assert by_id[before]["content"] == {}


# /get_missing_events ------------------------------------------------------------------------


async def test_missing_events_oldest_first_stopping_at_earliest(scene: Scene, chat: dict) -> None:
    room, messages = chat["room"], chat["messages"]
    body = {"earliest_events": [messages[10]], "latest_events": [messages[20]], "limit": 5}
    response = await missing(scene, room, body)
    assert response.status_code == 200, response.text
    assert ids_of(scene, room, response.json()["events"]) == messages[15:20]
    body = {"earliest_events": [messages[15]], "latest_events": [messages[20]]}
    response = await missing(scene, room, body)
    assert ids_of(scene, room, response.json()["events"]) == messages[16:20]


async def test_missing_events_limit_defaults_to_10_and_is_capped_at_20(
    scene: Scene, chat: dict
) -> None:
    room, messages = chat["room"], chat["messages"]
    body = {"earliest_events": [], "latest_events": [messages[-1]]}
    assert len((await missing(scene, room, body)).json()["events"]) == 10
    body["limit"] = 50
    assert (
        ids_of(scene, room, (await missing(scene, room, body)).json()["events"])
        == (messages[-21:-1])
    )


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"latest_events": ["$a"]},
        {"earliest_events": []},
        {"earliest_events": "x", "latest_events": []},
        {"earliest_events": [], "latest_events": [1]},
        {"earliest_events": [], "latest_events": [], "limit": "10"},
        {"earliest_events": [], "latest_events": [], "min_depth": 1.5},
    ],
)
async def test_missing_events_with_a_bad_body_is_bad_json(
    scene: Scene, chat: dict, body: Any
) -> None:
    response = await missing(scene, chat["room"], body)
    assert response.status_code == 400
    assert response.json()["errcode"] == "M_BAD_JSON"


# /timestamp_to_event ------------------------------------------------------------------------


async def test_timestamp_to_event(scene: Scene, chat: dict) -> None:
    room, messages = chat["room"], chat["messages"]
    record = await scene.record(messages[50])
    ts = orjson.loads(record.pdu_json)["origin_server_ts"]
    base = f"{V1}/timestamp_to_event/{q(room.room_id)}"
    for direction in ("f", "b"):
        response = await scene.get(f"{base}?ts={ts}&dir={direction}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["origin_server_ts"] == ts
    after = (await scene.get(f"{base}?ts={ts + 1}&dir=f")).json()
    assert after["origin_server_ts"] > ts
    before = (await scene.get(f"{base}?ts={ts - 1}&dir=b")).json()
    assert before["origin_server_ts"] < ts


async def test_timestamp_to_event_with_nothing_there_is_404(scene: Scene, chat: dict) -> None:
    base = f"{V1}/timestamp_to_event/{q(chat['room'].room_id)}"
    response = await scene.get(f"{base}?ts={2**53 - 1}&dir=f")
    assert response.status_code == 404
    assert response.json()["errcode"] == "M_NOT_FOUND"
    response = await scene.get(f"{base}?ts=0&dir=b")
    assert response.status_code == 404


async def test_timestamp_to_event_parameters(scene: Scene, chat: dict) -> None:
    base = f"{V1}/timestamp_to_event/{q(chat['room'].room_id)}"
    for query, errcode in (
        ("dir=f", "M_MISSING_PARAM"),
        ("ts=1", "M_MISSING_PARAM"),
        ("ts=1&dir=x", "M_INVALID_PARAM"),
        ("ts=x&dir=f", "M_INVALID_PARAM"),
    ):
        response = await scene.get(f"{base}?{query}")
        assert response.status_code == 400, query
        assert response.json()["errcode"] == errcode, query
