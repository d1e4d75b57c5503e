"""The current-state table written in small deltas and in big ones (COPY, a join's whole state)."""

from __future__ import annotations

import secrets

import asyncpg

from services.events import storage
from services.events.storage import COPY_THRESHOLD, CurrentStateRow

MEMBER = "m.room.member"


def _member(user: str, event_id: str, membership: str) -> CurrentStateRow:
    return CurrentStateRow(MEMBER, user, event_id, membership)


async def _table(conn: asyncpg.Connection, room_id: str) -> dict[tuple[str, str], tuple]:
    rows = await conn.fetch(
        "SELECT type, state_key, event_id, membership, server FROM events.current_state"
        " WHERE room_id = $1",
        room_id,
    )
    return {
        (r["type"], r["state_key"]): (r["event_id"], r["membership"], r["server"]) for r in rows
    }


async def test_a_big_delta_replaces_changed_keys_and_adds_new_ones(
    events_pool: asyncpg.Pool,
) -> None:
    room_id = f"!{secrets.token_hex(6)}:cs.test"
    other_room = f"!{secrets.token_hex(6)}:cs.test"
    async with events_pool.acquire() as conn, conn.transaction():
        # A partial state: a few keys, written the small way.
        small = [
            CurrentStateRow("m.room.create", "", "$create", None),
            CurrentStateRow("m.room.name", "", "$name", None),
            _member("@alice:a.test", "$alice", "join"),
            _member("@bob:b.test", "$bob", "join"),
        ]
        await storage.apply_current_state_delta(conn, room_id, [], small)
        await storage.apply_current_state_delta(conn, other_room, [], small)
        # The full state: bob has left since, the name is gone, many members more.
        new_members = [
            _member(f"@m{i}:s{i % 3}.test", f"$m{i}", "join") for i in range(COPY_THRESHOLD + 10)
        ]
        changed = [_member("@bob:b.test", "$bob-left", "leave"), *new_members]
        await storage.apply_current_state_delta(conn, room_id, [("m.room.name", "")], changed)
        table = await _table(conn, room_id)
        assert len(table) == 3 + len(new_members)
        assert table[(MEMBER, "@bob:b.test")] == ("$bob-left", "leave", "b.test")
        assert table[(MEMBER, "@alice:a.test")] == ("$alice", "join", "a.test")
        assert table[("m.room.create", "")] == ("$create", None, None)
        assert ("m.room.name", "") not in table
        assert table[(MEMBER, "@m7:s1.test")] == ("$m7", "join", "s1.test")
        assert await storage.joined_servers(conn, room_id) == [
            "a.test",
            "s0.test",
            "s1.test",
            "s2.test",
        ]
        # Another room's rows with the same keys are left alone.
        assert await _table(conn, other_room) == {
            ("m.room.create", ""): ("$create", None, None),
            ("m.room.name", ""): ("$name", None, None),
            (MEMBER, "@alice:a.test"): ("$alice", "join", "a.test"),
            (MEMBER, "@bob:b.test"): ("$bob", "join", "b.test"),
        }
        # Written again whole (a rejoin): every key replaced, none duplicated.
        again = [_member(r.state_key, r.event_id + "-2", "join") for r in new_members]
        await storage.apply_current_state_delta(conn, room_id, [], again)
        table = await _table(conn, room_id)
        assert len(table) == 3 + len(new_members)
        assert table[(MEMBER, "@m7:s1.test")] == ("$m7-2", "join", "s1.test")
        await conn.execute(
            "DELETE FROM events.current_state WHERE room_id = ANY($1::text[])",
            [room_id, other_room],
        )
