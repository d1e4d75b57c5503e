"""Sender test helpers: queue rows straight into the sender's tables."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

from matrix_protocol.canonical_json import encode_json
from services.sender.storage import IngestItem, SenderStorage

OUR_SERVER = "sender-test.example"

_positions = itertools.count(1)


def test_pdu(pdu_id: str, room_id: str = "!room:sender-test.example") -> bytes:
    return encode_json(
        {
            "room_id": room_id,
            "sender": f"@alice:{OUR_SERVER}",
            "type": "m.room.message",
            "content": {"id": pdu_id, "body": f"message {pdu_id}"},
            "origin_server_ts": int(time.time() * 1000),
        }
    )


async def queue_pdus(
    storage: SenderStorage,
    destinations: Sequence[str],
    count: int,
    *,
    prefix: str = "e",
    room_id: str = "!room:sender-test.example",
) -> list[str]:
    """Ingest ``count`` events for ``destinations`` as the stream would; return their ids."""
    items = []
    for _ in range(count):
        position = next(_positions)
        pdu_id = f"{prefix}{position}"
        items.append(
            IngestItem(position, f"${pdu_id}", room_id, test_pdu(pdu_id, room_id), destinations)
        )
    async with storage.pool.acquire() as connection:
        await SenderStorage.ingest_batch(connection, items, items[-1].stream_position)
    return [f"{prefix}{item.stream_position}" for item in items]
