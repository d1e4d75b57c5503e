"""A join's answer (and a resync's /state) stored while its signatures are verified.

mxfed stores a send_join answer, and the /state answer of a partial-state
room's resync, in a transaction while the keys service still verifies their
signatures, and commits only once all have verified. These tests give
answers where that is not so (a forged signature) or where the join is
refused by the room's state, and check the outcome is what checking every
signature first gives: the forged event left out (or, for the create event,
no join), a refused join refused, a resync that stores nothing until the
state it is given verifies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from mxfed_api.events.v1 import events_pb2
from tests.support.partial_resident import MEMBER, BigRoom, JoinerScene

pytestmark = pytest.mark.whole_stack


@pytest.fixture(scope="module")
async def scene(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[JoinerScene]:
    async with JoinerScene.running(
        tmp_path_factory.mktemp("join-checked") / "mxfed",
        "mxfed_join_checked_test",
        key_versions=("checked1", "checked2"),
    ) as started:
        yield started


async def held(scene: JoinerScene, event_ids: list[str]) -> set[str]:
    """Which of ``event_ids`` mxfed holds."""
    return set(await scene.statuses(event_ids))


def forge(room: BigRoom, event_id: str) -> None:
    """The resident serves ``event_id`` with a signature that does not verify (same id)."""
    pdu = room.events[event_id]
    origin = pdu["sender"].split(":", 1)[1]
    key_id = next(iter(pdu["signatures"][origin]))
    room.events[event_id] = {**pdu, "signatures": {origin: {key_id: "A" * 86}}}


async def test_a_state_event_with_a_forged_signature_is_left_out_of_the_join(
    scene: JoinerScene,
) -> None:
    room = scene.room(30, omit=False)
    forged = room.state[(MEMBER, room.members[7])]
    forge(room, forged)
    join_id = await scene.join(room, scene.user())
    state = await scene.current_state(room)
    expected = {key: e for key, e in room.state.items() if e != forged}
    assert state == expected
    assert (MEMBER, room.members[7]) not in state
    assert await held(scene, [forged, join_id]) == {join_id}


async def test_a_forged_create_event_leaves_no_join(scene: JoinerScene) -> None:
    room = scene.room(10, omit=False)
    forge(room, room.create)
    with pytest.raises(grpc.aio.AioRpcError):
        await scene.join(room, scene.user())
    assert await held(scene, [room.create]) == set()
    assert await scene.current_state(room) == {}


async def test_a_join_the_rooms_state_refuses_is_refused(scene: JoinerScene) -> None:
    room = scene.room(10, omit=False)
    room.add(room.alice, "m.room.join_rules", "", {"join_rule": "invite"})
    with pytest.raises(grpc.aio.AioRpcError):
        await scene.join(room, scene.user())
    assert await held(scene, [room.create]) == set()


async def test_a_resync_stores_nothing_while_its_state_has_a_forged_signature(
    scene: JoinerScene,
) -> None:
    room = scene.room(80, omit=True)
    forged = room.state[(MEMBER, room.members[5])]
    genuine = room.events[forged]
    forge(room, forged)
    await scene.join(room, scene.user())
    info = await scene.info_until(room, lambda i: i.resync_attempts >= 1)
    assert info.resync_state != events_pb2.RESYNC_STATE_FULL_STATE
    assert info.members_known < 5  # what the attempt stored was rolled back
    other_member = room.state[(MEMBER, room.members[6])]
    assert await held(scene, [forged, other_member]) == set()
    room.events[forged] = genuine  # the resident serves it signed again
    await scene.resynced(room)
    assert await scene.current_state(room) == room.state
    assert await held(scene, [forged, other_member]) == {forged, other_member}
