"""Steps 1–3 for fetched batches: big ones are verified in chunks that overlap the format checks."""

from __future__ import annotations

from typing import Any

import pytest

from matrix_protocol.events import Event
from matrix_protocol.room_versions import room_version
from services.events import pdu_checks
from services.events.pdu_checks import check_fetched
from tests.support.events_service import RemoteServer, RoomHead


async def test_a_big_fetched_batch_is_verified_chunk_by_chunk_with_the_same_outcomes(
    keys_service: Any, remote: RemoteServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pdu_checks, "VERIFY_CHUNK", 3)
    calls = 0
    real = pdu_checks.check_signatures

    async def counted(keys: Any, pdus: Any) -> None:
        nonlocal calls
        calls += 1
        await real(keys, pdus)

    monkeypatch.setattr(pdu_checks, "check_signatures", counted)
    head = RoomHead("!chunks:" + remote.name, "10", ["$start"], 1, {})
    pdus = [
        remote.pdu(head, "m.room.message", remote.user("a"), {"body": str(i)})[0] for i in range(10)
    ]
    forged = dict(pdus[4], signatures={remote.name: {remote.key_server.key_id: "AAAA"}})
    tampered = dict(pdus[7], content={"body": "changed"})  # hash no longer matches
    batch = [*pdus[:4], forged, *pdus[5:7], tampered, *pdus[8:]]
    checked = await check_fetched(keys_service.stub, batch, room_version("10"), head.room_id)
    assert calls == 4  # chunks of 3, 3, 3 and the last 1
    assert len(checked.valid) == 9
    assert [o.event_id for o in checked.settled] == [checked_id(forged)]
    # The signature covers the redacted event: the tampered one continues redacted.
    redacted = [c.event.event_id for c in checked.valid if c.redacted]
    assert redacted == [checked_id(tampered)]


def checked_id(pdu: dict[str, Any]) -> str:
    return Event.from_pdu(pdu, room_version("10")).event_id
