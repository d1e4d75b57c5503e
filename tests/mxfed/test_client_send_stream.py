"""``mxfed.client``'s local sends over one ``StreamSendEvents`` stream, against a running
mxfed: many concurrent sends each get their own event, a failing send fails alone, and
a retried transaction id gives the event sent the first time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mxfed.client import Client, Forbidden, MatrixError, NotFound
from tests.support.scene import Scene

pytestmark = pytest.mark.whole_stack


@pytest.fixture
async def client(scene: Scene) -> AsyncIterator[Client]:
    async with Client(scene.mxfed.config()) as opened:
        yield opened


async def test_concurrent_sends_each_get_their_own_event(scene: Scene, client: Client) -> None:
    alice = scene.creator
    rooms = [(await client.create_room(alice, preset="public_chat")).room_id for _ in range(3)]
    senders = [f"@bridged{i}:{scene.mxfed.server_name}" for i in range(6)]
    for index, sender in enumerate(senders):
        await client.join(sender, rooms[index % len(rooms)])

    async def send(n: int) -> tuple[str, str, str]:
        sender = senders[n % len(senders)]
        room_id = rooms[senders.index(sender) % len(rooms)]
        sent = await client.send_message(room_id, sender, f"message {n}")
        return room_id, f"message {n}", sent.event_id

    results = await asyncio.gather(*(send(n) for n in range(300)))
    assert len({event_id for _, _, event_id in results}) == 300
    by_id = {e.event_id: e for e in await client.events([r[2] for r in results])}
    for room_id, body, event_id in results:
        assert by_id[event_id].room_id == room_id and by_id[event_id].body == body


async def test_a_failing_send_fails_alone(scene: Scene, client: Client) -> None:
    alice = scene.creator
    room_id = (await client.create_room(alice, preset="public_chat")).room_id
    outsider = f"@outsider:{scene.mxfed.server_name}"  # not in the room

    async def good(n: int) -> str:
        return (await client.send_message(room_id, alice, f"fine {n}")).event_id

    outcomes = await asyncio.gather(
        *(good(n) for n in range(20)),
        client.send_message(room_id, outsider, "refused"),
        client.send_message("!nowhere:nowhere.example", alice, "no room"),
        client.send_message(room_id, "@eve:elsewhere.example", "not ours"),
        *(good(n) for n in range(20, 40)),
        return_exceptions=True,
    )
    fine = [o for o in outcomes if isinstance(o, str)]
    assert len(set(fine)) == 40
    refused, unknown, not_ours = outcomes[20:23]
    assert isinstance(refused, Forbidden) and refused.errcode == "M_FORBIDDEN"
    assert isinstance(unknown, NotFound) and unknown.errcode == "M_NOT_FOUND"
    assert isinstance(not_ours, Forbidden)
    # The stream is still usable after them.
    assert isinstance(await good(99), str)


async def test_a_repeated_transaction_id_gives_the_first_event(
    scene: Scene, client: Client
) -> None:
    alice = scene.creator
    room_id = (await client.create_room(alice, preset="public_chat")).room_id
    same = await asyncio.gather(
        *(client.send_message(room_id, alice, "once", txn_id="bridge-txn-1") for _ in range(10))
    )
    assert len({sent.event_id for sent in same}) == 1
    history = await client.history(room_id, 20)
    assert [e.body for e in history].count("once") == 1
    with pytest.raises(MatrixError):
        await client.send_event(room_id, alice, "m.room.redaction", {})
