"""The join response checks: auth chain order and auth checks (pure parts of joining.py)."""

from __future__ import annotations

from typing import Any

from matrix_protocol.events import Event
from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import generate_signing_key, sign_event
from services.events.membership.joining import Checked, check_auth_chain, topological_order
from services.events.storage import Status

KEY = generate_signing_key()
V10 = room_version("10")
SERVER = "res.test"
ALICE = f"@alice:{SERVER}"
ROOM = f"!room:{SERVER}"


def _event(event_type: str, state_key: str, content: dict[str, Any], auth: list[Event],
           prev: list[Event], depth: int, sender: str = ALICE) -> Event:  # fmt: skip
    pdu = {
        "room_id": ROOM, "sender": sender, "type": event_type, "state_key": state_key,
        "content": content, "auth_events": [a.event_id for a in auth],
        "prev_events": [p.event_id for p in prev], "depth": depth, "origin_server_ts": depth,
    }  # fmt: skip
    return Event.from_pdu(sign_event(pdu, KEY, SERVER, "ed25519:k", V10), V10)


def _room() -> list[Event]:
    create = _event("m.room.create", "", {"creator": ALICE, "room_version": "10"}, [], [], 1)
    join = _event("m.room.member", ALICE, {"membership": "join"}, [create], [create], 2)
    power = _event("m.room.power_levels", "", {"users": {ALICE: 100}}, [create, join], [join], 3)
    rules = _event(
        "m.room.join_rules", "", {"join_rule": "public"}, [create, join, power], [power], 4
    )
    return [create, join, power, rules]


def test_topological_order_puts_auth_events_first() -> None:
    events = _room()
    checked = {e.event_id: Checked(e, dict(e.pdu)) for e in reversed(events)}
    order = topological_order(checked)
    assert order == [e.event_id for e in events]


def test_check_auth_chain_accepts_a_valid_room() -> None:
    events = _room()
    checked = {e.event_id: Checked(e, dict(e.pdu)) for e in events}
    check_auth_chain(checked, events[0])
    assert all(c.status is Status.OUTLIER for c in checked.values())


def test_check_auth_chain_rejects_bad_events_and_their_dependants() -> None:
    create, join, power, rules = _room()
    mallory = f"@mallory:{SERVER}"
    # mallory is not joined: her power levels change is rejected...
    bad_power = _event(
        "m.room.power_levels",
        "",
        {"users": {mallory: 100}},
        [create, power],
        [rules],
        5,
        sender=mallory,
    )
    # ...and an event citing it is rejected too; one citing a missing event as well.
    name = _event("m.room.name", "", {"name": "x"}, [create, join, bad_power], [bad_power], 6)
    ghost = _event("m.room.topic", "", {"topic": "t"}, [create, join, power], [rules], 7)
    ghost.pdu["auth_events"].append("$missing")
    events = [create, join, power, rules, bad_power, name, ghost]
    checked = {e.event_id: Checked(e, dict(e.pdu)) for e in events}
    check_auth_chain(checked, create)
    assert checked[bad_power.event_id].status is Status.REJECTED
    assert checked[name.event_id].status is Status.REJECTED
    assert checked[ghost.event_id].status is Status.REJECTED
    assert checked[rules.event_id].status is Status.OUTLIER
