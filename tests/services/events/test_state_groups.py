"""State groups as layers that share structure: correct maps, short chains, small writes."""

from __future__ import annotations

import math
import random

import asyncpg

from services.events.state_storage import LayeredState, PendingGroups, StateStore, diff

ROOM = "!layers:test"


def _member(i: int) -> tuple[str, str]:
    return ("m.room.member", f"@u{i}:test")


async def test_layered_groups_match_plain_maps_and_read_back_from_the_database(
    events_pool: asyncpg.Pool,
) -> None:
    rng = random.Random(7)
    store = StateStore(events_pool)
    pending = PendingGroups()
    async with events_pool.acquire() as conn:
        pending.ids.extend(  # as a room batch reserves them (storage.room_head)
            await conn.fetchval(
                "SELECT ARRAY(SELECT nextval('events.state_group_ids')"
                " FROM generate_series(1, 2000))"
            )
        )
        root = store.derive(ROOM, None, pending, state={("m.room.create", ""): "$c"})
        groups = [root]
        models = {root.id: {("m.room.create", ""): "$c"}}
        for step in range(1500):
            base = groups[-1] if rng.random() < 0.8 else rng.choice(groups)  # branches too
            model = dict(models[base.id])
            key = _member(rng.randrange(300))
            if key in model and rng.random() < 0.2:
                delta: dict[tuple[str, str], str | None] = {key: None}
                del model[key]
            else:
                delta = {key: f"$e{step}"}
                model[key] = f"$e{step}"
            group = store.derive(ROOM, base, pending, delta=delta)
            groups.append(group)
            models[group.id] = model
            assert group.state == model
            assert len(group.state) == len(model)
            # Reads walk a short chain: about log2 of the deltas since the snapshot.
            assert group.distance <= 2 * math.log2(step + 2) + 2
        async with conn.transaction():
            await StateStore.write(conn, pending)
        fresh = StateStore(events_pool)
        for group in rng.sample(groups, 60):
            loaded = await fresh.get(conn, group.id)
            assert loaded.state == models[group.id]
            assert dict(loaded.state.items()) == models[group.id]
        await conn.execute("DELETE FROM events.state_groups WHERE room_id = $1", ROOM)


def test_rows_written_per_state_event_do_not_grow_with_the_room() -> None:
    def rows_per_event(size: int) -> float:
        store = StateStore.__new__(StateStore)
        store._cache = type("NoCache", (), {"put": lambda *a: None, "get": lambda *a: None})()
        pending = PendingGroups(ids=list(range(10_000, 0, -1)))
        group = store.derive(ROOM, None, pending, state={_member(i): f"$m{i}" for i in range(size)})
        written = len(pending.entries)
        for i in range(1000):
            group = store.derive(ROOM, group, pending, delta={_member(size + i): f"$n{i}"})
        return (len(pending.entries) - written) / 1000

    small, big = rows_per_event(100), rows_per_event(20_000)
    # The old policy (a full snapshot every 32nd state event) wrote ~625 rows
    # per event in the 20k room; now both stay near log2 of the events since a snapshot.
    assert big <= 12
    assert small <= 12


def test_diff_of_related_states_reads_only_their_layers() -> None:
    root = LayeredState(1, None, {_member(i): f"$m{i}" for i in range(1000)})
    a = LayeredState(2, root, {_member(1): "$x", _member(5000): "$y"})
    b = LayeredState(3, a, {_member(2): None})
    c = LayeredState(4, root, {_member(3): "$z"})
    assert diff(a, b) == ({}, [_member(2)])
    changed, removed = diff(b, c)
    assert changed == {_member(1): "$m1", _member(2): "$m2", _member(3): "$z"}
    assert removed == [_member(5000)]
    assert b != c and a == LayeredState(9, root, {_member(5000): "$y", _member(1): "$x"})
    assert len(b) == 1000 and _member(2) not in b and b.get(_member(2)) is None
