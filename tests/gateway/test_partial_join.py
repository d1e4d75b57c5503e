"""Partial-state joins as the joiner: a whole running mxfed and a resident that omits members.

The resident (:mod:`tests.support.partial_resident`) hosts a room of a few
hundred members on two servers and answers send_join v2 with
``omit_members``; its ``/state_ids`` can be held so the resync stays
unfinished while a test looks at the partial-state window.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from mxfed_api.events.v1 import events_pb2, membership_pb2
from tests.support.partial_resident import MEMBER, BigRoom, JoinerScene
from tests.support.polling import until

pytestmark = pytest.mark.whole_stack

MEMBERS = 300


class Scene(JoinerScene):
    """What these tests add: joins with the resync held, local messages and the events
    process's metrics."""

    async def send(self, room: BigRoom, sender: str, body: str) -> str:
        reply = await self.events.PerformSendEvent(
            events_pb2.PerformSendEventRequest(
                room_id=room.room_id,
                sender=sender,
                type="m.room.message",
                content_json=orjson.dumps({"msgtype": "m.text", "body": body}),
            ),
            timeout=30,
        )
        return reply.event_id

    async def joined_while_held(self, members: int) -> tuple[BigRoom, str, str]:
        """A room of ``members`` that omits them, joined by a new user, its resync held
        at /state_ids (asked once): the room, the user and the join's event id."""
        room = self.room(members, omit=True)
        room.release.clear()
        user = self.user()
        join_id = await self.join(room, user)
        await until(lambda: asyncio.sleep(0, room.state_ids_requests), lambda n: n >= 1)
        return room, user, join_id

    def metric(self, sample: str) -> float:
        """A sample of the events process's metrics (0 when absent)."""
        url = f"http://127.0.0.1:{self.mxfed.metrics_ports['events']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            for line in response.read().decode().splitlines():
                if line.startswith(sample + " "):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture(scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    async with Scene.running(
        tmp_path_factory.mktemp("partial-join") / "mxfed",
        "mxfed_partial_join_test",
        key_versions=("big1", "other1"),
    ) as started:
        yield started


async def test_partial_join_is_usable_at_once_and_resyncs_to_the_residents_state(
    scene: Scene,
) -> None:
    room, user, join_id = await scene.joined_while_held(MEMBERS)
    info = await scene.info(room)
    # We asked for omit_members and got a partial state: only the resident's
    # non-member state and our own membership are known.
    assert info.resync_state != events_pb2.RESYNC_STATE_FULL_STATE
    assert info.we_are_joined
    assert info.members_known < 5
    # A local message reaches the resident and the other server of
    # servers_in_room while the resync is still held.
    message_id = await scene.send(room, user, "hello while partial")
    await until(
        lambda: asyncio.sleep(0, [p["content"].get("body") for p in room.received]),
        lambda bodies: "hello while partial" in bodies,
    )
    await until(
        lambda: asyncio.sleep(0, [p["content"].get("body") for p in room.other_received]),
        lambda bodies: "hello while partial" in bodies,
    )
    # An event from a member whose membership was omitted, sent during the
    # window, is accepted on the partial state (checked with its auth events).
    sender = room.members[7]
    unseen_id = room.add(sender, "m.room.message", None, {"msgtype": "m.text", "body": "hi"})
    answer = await room.push(scene.mxfed.federation_url, scene.mxfed.server_name, [unseen_id])
    assert answer["pdus"][unseen_id] == {}
    assert (await scene.statuses([unseen_id]))[unseen_id] == events_pb2.EVENT_STATUS_ACCEPTED
    still = await scene.info(room)
    assert still.resync_state == events_pb2.RESYNC_STATE_FETCHING
    assert still.members_expected == 0  # /state_ids has not answered yet
    # The operator sees it too.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mxfed.cli", "--config", str(scene.mxfed.config_path),
        "room", "info", room.room_id, "--json",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert orjson.loads(out)["state"] == "fetching"
    # Nobody joins through us while our state lacks members.
    uri = f"/_matrix/federation/v1/make_join/{quote(room.room_id)}/{quote(room.alice)}"
    refused = await scene.server.federation_request(
        scene.mxfed.federation_url, scene.mxfed.server_name, "GET", uri
    )
    assert (refused.status_code, refused.json()["errcode"]) == (404, "M_NOT_FOUND")
    # Release the resync: the room leaves partial state with the resident's full state.
    room.release.set()
    info = await scene.resynced(room)
    assert await scene.current_state(room) == room.state
    assert info.members_known == info.members_expected == MEMBERS + 2
    statuses = await scene.statuses([join_id, message_id, unseen_id])
    assert statuses == {
        join_id: events_pb2.EVENT_STATUS_ACCEPTED,
        message_id: events_pb2.EVENT_STATUS_ACCEPTED,
        unseen_id: events_pb2.EVENT_STATUS_ACCEPTED,
    }
    # The unseen member's message is visible in the room's timeline.
    page = await scene.events.QueryTimeline(
        events_pb2.QueryTimelineRequest(room_id=room.room_id, limit=10, backwards=True),
        timeout=10,
    )
    assert unseen_id in [e.event_id for e in page.events]
    assert room.state_requests == 1  # the missing members came in one /state call


async def test_an_event_accepted_while_partial_is_soft_failed_if_the_full_state_disallowed_it(
    scene: Scene,
) -> None:
    room, user, join_id = await scene.joined_while_held(30)
    # A member whose membership was omitted is banned, and concurrently (its
    # prev_events are our join, not the ban) sends a message; the ban reaches
    # us first.
    banned = room.members[4]
    message = {"msgtype": "m.text", "body": "sent while being banned"}
    message_id = room.add(banned, "m.room.message", None, message, prev_events=[join_id])
    ban_id = room.add(room.alice, MEMBER, banned, {"membership": "ban"}, prev_events=[join_id])
    url, name = scene.mxfed.federation_url, scene.mxfed.server_name
    assert (await room.push(url, name, [ban_id]))["pdus"][ban_id] == {}
    assert (await room.push(url, name, [message_id]))["pdus"][message_id] == {}
    # The partial state cannot judge soft failure (it did not know the
    # member): both are accepted for now.
    statuses = await scene.statuses([ban_id, message_id])
    assert statuses == {
        ban_id: events_pb2.EVENT_STATUS_ACCEPTED,
        message_id: events_pb2.EVENT_STATUS_ACCEPTED,
    }
    room.release.set()
    await scene.resynced(room)
    # With the full state the member was banned in the current state when the
    # message arrived: soft-failed, as a server with the full state does.
    statuses = await scene.statuses([ban_id, message_id])
    assert statuses == {
        ban_id: events_pb2.EVENT_STATUS_ACCEPTED,
        message_id: events_pb2.EVENT_STATUS_SOFT_FAILED,
    }
    assert await scene.current_state(room) == room.state
    sample = 'mxfed_events_resync_rejudged_total{change="accepted_to_soft_failed"}'
    assert await asyncio.to_thread(scene.metric, sample) >= 1
    # It is no forward extremity: our next event builds on the ban alone.
    await scene.send(room, user, "after the resync")
    sent = await until(
        lambda: asyncio.sleep(0, [p for p in room.received if p["content"].get("body")]),
        lambda pdus: any(p["content"]["body"] == "after the resync" for p in pdus),
    )
    assert isinstance(sent, list)
    pdu = next(p for p in sent if p["content"]["body"] == "after the resync")
    assert pdu["prev_events"] == [ban_id]


async def test_a_resident_that_does_not_omit_members_gives_a_full_join(scene: Scene) -> None:
    room = scene.room(40, omit=False)
    await scene.join(room, scene.user())
    info = await scene.info(room)
    assert info.resync_state == events_pb2.RESYNC_STATE_FULL_STATE
    assert info.members_known == 40 + 2
    assert room.state_ids_requests == 0
    assert await scene.current_state(room) == room.state


async def test_a_leave_during_the_resync_works(scene: Scene) -> None:
    room, user, _ = await scene.joined_while_held(60)
    reply = await scene.membership.PerformLeave(
        membership_pb2.PerformLeaveRequest(room_id=room.room_id, user_id=user), timeout=30
    )
    await until(
        lambda: asyncio.sleep(0, list(room.received)),
        lambda pdus: any(p["content"].get("membership") == "leave" for p in pdus),
    )
    assert room.state[(MEMBER, user)] == reply.event_id
    room.release.set()
    await scene.resynced(room)
    state = await scene.current_state(room)
    assert state[(MEMBER, user)] == reply.event_id
    assert state == room.state
    assert not (await scene.info(room)).we_are_joined


async def test_a_restart_during_the_resync_resumes_it(scene: Scene) -> None:
    room, _, _ = await scene.joined_while_held(80)
    asked = room.state_ids_requests
    await scene.channel.close()
    await asyncio.to_thread(scene.mxfed.stop, keep_ports=True)
    await asyncio.to_thread(scene.mxfed.start)
    scene.connect()
    info = await scene.info(room)
    assert info.resync_state != events_pb2.RESYNC_STATE_FULL_STATE
    # The restarted events process asks again by itself.
    await until(lambda: asyncio.sleep(0, room.state_ids_requests), lambda n: n > asked)
    room.release.set()
    await scene.resynced(room)
    assert await scene.current_state(room) == room.state


async def test_state_is_refused_and_only_our_history_served_while_the_state_is_partial(
    scene: Scene,
) -> None:
    room, user, join_id = await scene.joined_while_held(30)
    # History in the window: ours, the resident's, ours.
    await scene.send(room, user, "ours before")
    # Waited for by its body: our join reaches the resident by /send too.
    await until(
        lambda: asyncio.sleep(0, [p["content"].get("body") for p in room.received]),
        lambda bodies: "ours before" in bodies,
    )
    theirs_id = room.add(room.members[4], "m.room.message", None, {"body": "theirs"})
    url, name = scene.mxfed.federation_url, scene.mxfed.server_name
    assert (await room.push(url, name, [theirs_id]))["pdus"][theirs_id] == {}
    last_id = await scene.send(room, user, "ours after")
    room_id, event_id = quote(room.room_id), quote(join_id)
    # Asked by a server of the room: our state lacks its members, so no
    # incomplete state is served as if it were complete.
    refused = [
        f"/_matrix/federation/v1/event/{event_id}",
        f"/_matrix/federation/v1/state_ids/{room_id}?event_id={event_id}",
        f"/_matrix/federation/v1/state/{room_id}?event_id={event_id}",
        f"/_matrix/federation/v1/event_auth/{room_id}/{event_id}",
        f"/_matrix/federation/v1/timestamp_to_event/{room_id}?ts={2**53 - 1}&dir=b",
    ]

    async def ask(method: str, uri: str, body: object = None) -> tuple[int, dict[str, Any]]:
        response = await scene.other.federation_request(url, name, method, uri, body)
        return response.status_code, response.json()

    partial = (403, "ORG.MATRIX.MSC3895_UNABLE_DUE_TO_PARTIAL_STATE")
    for uri in refused:
        status, body = await ask("GET", uri)
        assert (status, body.get("errcode")) == partial, uri

    async def history() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        status, missing = await ask(
            "POST",
            f"/_matrix/federation/v1/get_missing_events/{room_id}",
            {"earliest_events": [join_id], "latest_events": [last_id], "limit": 10},
        )
        assert status == 200
        status, backfill = await ask(
            "GET", f"/_matrix/federation/v1/backfill/{room_id}?v={quote(last_id)}&limit=3"
        )
        assert status == 200
        return missing["events"], backfill["pdus"]

    def bodies(pdus: list[dict[str, Any]]) -> list[str | None]:
        return [p["content"].get("body") for p in pdus]

    # History is served to the servers of the room as far as we know them
    # (as Synapse does): our own events in full, the others' redacted.
    missing, backfill = await history()
    assert bodies(missing) == ["ours before", None]
    assert sorted(bodies(backfill), key=str) == sorted(["ours after", None, "ours before"], key=str)
    # Once resynced, everything is answered in full.
    room.release.set()
    await scene.resynced(room)
    for uri in refused:
        assert (await ask("GET", uri))[0] == 200, uri
    missing, backfill = await history()
    assert bodies(missing) == ["ours before", "theirs"]
    assert sorted(bodies(backfill), key=str) == sorted(["ours after", "theirs", "ours before"])
