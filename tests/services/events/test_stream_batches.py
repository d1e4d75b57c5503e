"""StreamEventBatches gives what StreamEvents gives, in the same order, the items ready
together in one message: the stored ones replayed a page at a time, then live ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mxfed.client import Client
from mxfed_api.events.v1 import events_pb2
from tests.support.scene import Scene

pytestmark = pytest.mark.whole_stack


@pytest.fixture
async def client(scene: Scene) -> AsyncIterator[Client]:
    async with Client(scene.mxfed.config()) as opened:
        yield opened


async def _items(call: object, count: int, batched: bool) -> tuple[list[int], list[int]]:
    """(positions of the first ``count`` items, items per message)."""
    positions: list[int] = []
    sizes: list[int] = []
    async with asyncio.timeout(60):
        async for message in call:  # type: ignore[attr-defined]
            items = list(message.items) if batched else [message]
            sizes.append(len(items))
            positions += [item.position for item in items if item.HasField("event")]
            if len(positions) >= count:
                return positions[:count], sizes
    raise AssertionError("the stream ended")


async def test_batches_carry_the_same_items_as_the_stream(scene: Scene, client: Client) -> None:
    room_id = (await client.create_room(scene.creator, preset="public_chat")).room_id
    start = await client.latest_position(room_id)
    sent = await asyncio.gather(
        *(client.send_message(room_id, scene.creator, f"stored {n}") for n in range(30))
    )
    request = events_pb2.StreamEventsRequest(room_id=room_id, after_position=start)
    batches = scene.events.StreamEventBatches(events_pb2.StreamEventBatchesRequest(stream=request))
    single = scene.events.StreamEvents(request)
    try:
        # Replayed: the stored ones come a page at a time, all 30 in the first message.
        replayed, sizes = await _items(batches, 30, batched=True)
        assert sizes[0] == 30
        assert replayed == sorted(s.stream_position for s in sent)
        assert (await _items(single, 30, batched=False))[0] == replayed
        # Live: the same items in the same order on both.
        live = await asyncio.gather(
            *(client.send_message(room_id, scene.creator, f"live {n}") for n in range(40))
        )
        followed, _ = await _items(batches, 40, batched=True)
        assert followed == sorted(s.stream_position for s in live)
        assert (await _items(single, 40, batched=False))[0] == followed
    finally:
        batches.cancel()
        single.cancel()
