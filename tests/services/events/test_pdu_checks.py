"""Steps 1–3 for fetched batches: big ones are verified in chunks that overlap the format checks."""

from __future__ import annotations

from typing import Any

import pytest

from matrix_protocol.events import Event
from matrix_protocol.room_versions import room_version
from services.events import pdu_checks
from services.events.pdu_checks import check_fetched
from tests.support.events_service import RemoteServer, RoomHead


class CountingKeys:
    """The keys service's stub, counting VerifyJsonSignatures calls."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub
        self.calls = 0

    async def VerifyJsonSignatures(self, request: Any) -> Any:
        self.calls += 1
        return await self.stub.VerifyJsonSignatures(request)


async def test_a_big_fetched_batch_is_verified_chunk_by_chunk_with_the_same_outcomes(
    keys_service: Any, remote: RemoteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pdu_checks, "VERIFY_CHUNK", 3)
    keys = CountingKeys(keys_service.stub)
    head = RoomHead("!chunks:" + remote.name, "10", ["$start"], 1, {})
    pdus = [
        remote.pdu(head, "m.room.message", remote.user("a"), {"body": str(i)})[0] for i in range(12)
    ]
    bad_signature = {remote.name: {remote.key_server.key_id: "AAAA"}}
    forged = dict(pdus[4], signatures=bad_signature)
    tampered = dict(pdus[7], content={"body": "changed"})  # hash no longer matches
    # Both: its content hash is checked (and it is redacted) while its chunk's
    # signatures are being verified; the bad signature still drops it.
    forged_and_tampered = dict(pdus[9], content={"body": "changed"}, signatures=bad_signature)
    forged_last = dict(pdus[11], signatures=bad_signature)  # in the last chunk
    batch = [*pdus[:4], forged, *pdus[5:7], tampered, pdus[8], forged_and_tampered, pdus[10]]
    batch.append(forged_last)
    checked = await check_fetched(keys, batch, room_version("10"), head.room_id)
    assert keys.calls == 4  # chunks of 3, 3, 3 and the last 3
    assert len(checked.valid) == 9
    dropped = [checked_id(p) for p in (forged, forged_and_tampered, forged_last)]
    assert sorted(o.event_id for o in checked.settled) == sorted(dropped)
    # The signature covers the redacted event: the tampered one continues redacted.
    redacted = [c.event.event_id for c in checked.valid if c.redacted]
    assert redacted == [checked_id(tampered)]
    assert checked.event_ids == [checked_id(p) for p in batch]


async def test_a_small_fetched_batch_has_the_same_outcomes_in_one_call(
    keys_service: Any, remote: RemoteServer
) -> None:
    keys = CountingKeys(keys_service.stub)
    head = RoomHead("!small:" + remote.name, "10", ["$start"], 1, {})
    pdus = [
        remote.pdu(head, "m.room.message", remote.user("a"), {"body": str(i)})[0] for i in range(3)
    ]
    forged = dict(pdus[0], content={"body": "changed"}, signatures={remote.name: {"x:y": "AAAA"}})
    tampered = dict(pdus[1], content={"body": "changed"})
    checked = await check_fetched(
        keys, [forged, tampered, pdus[2]], room_version("10"), head.room_id
    )
    assert keys.calls == 1
    assert [o.event_id for o in checked.settled] == [checked_id(forged)]
    assert [c.event.event_id for c in checked.valid if c.redacted] == [checked_id(tampered)]


def checked_id(pdu: dict[str, Any]) -> str:
    return Event.from_pdu(pdu, room_version("10")).event_id
