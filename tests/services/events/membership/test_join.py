"""A join's state and auth chain through the room batch: auth order, outlier checks, add_join.

The send_join answer is stored by ``RoomBatch`` (``add_outlier`` in
``auth_order``, then ``add_join``) like every other input path; these tests
drive those pieces directly on the test database.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from matrix_protocol.events import Event
from matrix_protocol.room_versions import room_version
from matrix_protocol.signing import generate_signing_key, sign_event
from services.events import storage
from services.events.cache import LruCache
from services.events.outcomes import Reason
from services.events.pdu_checks import CheckedPdu
from services.events.room_batch import Rejudged, RoomBatch, RoomsCore, auth_order
from services.events.state import StateResolver
from services.events.state_storage import StateStore
from services.events.storage import PartialStateRoom, Status
from services.events.streams import StreamPositions

KEY = generate_signing_key()
V10 = room_version("10")
SERVER = "res.test"
ALICE = f"@alice:{SERVER}"
BOB = f"@bob:{SERVER}"


def _event(room_id: str, event_type: str, state_key: str, content: dict[str, Any],
           auth: list[Event], prev: list[Event], depth: int,
           sender: str = ALICE) -> Event:  # fmt: skip
    pdu = {
        "room_id": room_id, "sender": sender, "type": event_type, "state_key": state_key,
        "content": content, "auth_events": [a.event_id for a in auth],
        "prev_events": [p.event_id for p in prev], "depth": depth, "origin_server_ts": depth,
    }  # fmt: skip
    return Event.from_pdu(sign_event(pdu, KEY, SERVER, "ed25519:k", V10), V10)


def _room(room_id: str) -> list[Event]:
    create = _event(room_id, "m.room.create", "", {"creator": ALICE, "room_version": "10"}, [], [],
                    1)  # fmt: skip
    join = _event(room_id, "m.room.member", ALICE, {"membership": "join"}, [create], [create], 2)
    power = _event(
        room_id, "m.room.power_levels", "", {"users": {ALICE: 100}}, [create, join], [join], 3
    )
    rules = _event(
        room_id, "m.room.join_rules", "", {"join_rule": "public"}, [create, join, power], [power], 4
    )
    return [create, join, power, rules]


def _checked(events: list[Event]) -> list[CheckedPdu]:
    return [CheckedPdu(e, dict(e.pdu)) for e in events]


def _new_room_id() -> str:
    return f"!{secrets.token_hex(8)}:{SERVER}"


def test_auth_order_puts_auth_events_first() -> None:
    events = _room(_new_room_id())
    order = auth_order(_checked(list(reversed(events))))
    assert [c.event.event_id for c in order] == [e.event_id for e in events]


def test_auth_order_copes_with_deep_chains_and_forged_cycles() -> None:
    room_id = _new_room_id()
    create, join, power, _ = _room(room_id)
    # Each topic cites the previous one: deeper than Python's recursion limit.
    chain = [power]
    for depth in range(5, 2005):
        chain.append(
            _event(
                room_id,
                "m.room.topic",
                "",
                {"topic": str(depth)},
                [create, join, chain[-1]],
                [chain[-1]],
                depth,
            )  # fmt: skip
        )
    order = auth_order(_checked(list(reversed([create, join, *chain]))))
    position = {c.event.event_id: i for i, c in enumerate(order)}
    assert len(order) == len(chain) + 2
    for event in [join, *chain]:
        assert all(position[a] < position[event.event_id] for a in event.auth_event_ids)
    # Two events citing each other (only a forged chain can): both placed, once.
    first = _event(room_id, "m.room.topic", "", {"topic": "a"}, [create], [create], 9)
    second = _event(room_id, "m.room.topic", "", {"topic": "b"}, [create, first], [first], 9)
    first.pdu["auth_events"].append(second.event_id)
    order = auth_order(_checked([second, first]))
    assert sorted(c.event.event_id for c in order) == sorted([first.event_id, second.event_id])


@pytest.fixture
async def core(events_pool: asyncpg.Pool) -> RoomsCore:
    return RoomsCore(
        SERVER,
        StateStore(events_pool),
        StateResolver(),
        LruCache("events_events", 1000),
        StreamPositions(events_pool),
    )


@pytest.fixture
async def conn(events_pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with events_pool.acquire() as connection:
        yield connection


async def _batch(core: RoomsCore, conn: asyncpg.Connection, room_id: str) -> RoomBatch:
    await storage.insert_room(conn, room_id, "10")
    batch = RoomBatch(core, conn, room_id)
    assert await batch.open(1)
    return batch


async def test_outliers_of_a_valid_room_are_stored(
    core: RoomsCore, conn: asyncpg.Connection
) -> None:
    room_id = _new_room_id()
    events = _room(room_id)
    async with conn.transaction():
        batch = await _batch(core, conn, room_id)
        outcomes = [await batch.add_outlier(c) for c in auth_order(_checked(events))]
        await batch.write()
    assert [o.status for o in outcomes] == [Status.OUTLIER] * 4
    stored = await storage.fetch_events(conn, [e.event_id for e in events])
    assert {s.status for s in stored.values()} == {Status.OUTLIER}


async def test_outliers_failing_their_auth_events_are_rejected_and_so_are_dependants(
    core: RoomsCore, conn: asyncpg.Connection
) -> None:
    room_id = _new_room_id()
    create, join, power, rules = _room(room_id)
    mallory = f"@mallory:{SERVER}"
    # mallory is not joined: her power levels change is rejected...
    bad_power = _event(room_id, "m.room.power_levels", "", {"users": {mallory: 100}},
                       [create, power], [rules], 5, sender=mallory)  # fmt: skip
    # ...and an event citing it is rejected too; one citing a missing event is not stored.
    name = _event(room_id, "m.room.name", "", {"name": "x"}, [create, join, bad_power],
                  [bad_power], 6)  # fmt: skip
    ghost = _event(room_id, "m.room.topic", "", {"topic": "t"}, [create, join, power], [rules], 7)
    ghost.pdu["auth_events"].append("$missing")
    events = [create, join, power, rules, bad_power, name, ghost]
    async with conn.transaction():
        batch = await _batch(core, conn, room_id)
        outcomes = {
            o.event_id: o
            for o in [await batch.add_outlier(c) for c in auth_order(_checked(events))]
        }
        await batch.write()
    assert outcomes[bad_power.event_id].status is Status.REJECTED
    assert outcomes[bad_power.event_id].reason is Reason.AUTH_EVENTS_DISALLOW
    assert outcomes[name.event_id].status is Status.REJECTED
    assert outcomes[ghost.event_id].status is None
    assert outcomes[ghost.event_id].reason is Reason.MISSING_AUTH_EVENTS
    assert outcomes[rules.event_id].status is Status.OUTLIER
    stored = await storage.fetch_events(conn, [e.event_id for e in events])
    assert ghost.event_id not in stored
    assert stored[name.event_id].status is Status.REJECTED


async def test_add_join_makes_the_join_the_head_on_the_given_state(
    core: RoomsCore, conn: asyncpg.Connection
) -> None:
    room_id = _new_room_id()
    create, join, power, rules = _room(room_id)
    unseen = _event(room_id, "m.room.topic", "", {"topic": "t"}, [create, join, power], [rules], 5)
    bob_join = _event(room_id, "m.room.member", BOB, {"membership": "join"},
                      [create, power, rules], [unseen], 6, sender=BOB)  # fmt: skip
    state = [create, join, power, rules]
    async with conn.transaction():
        batch = await _batch(core, conn, room_id)
        for checked in auth_order(_checked(state)):
            await batch.add_outlier(checked)
        outcome = await batch.add_join(
            CheckedPdu(bob_join, dict(bob_join.pdu)), [e.event_id for e in state]
        )
        await batch.write()
    await batch.committed()
    assert outcome.status is Status.ACCEPTED
    assert await storage.forward_extremities(conn, room_id) == {bob_join.event_id: 6}
    room = (await storage.get_rooms(conn, [room_id]))[room_id]
    assert room.current_state_group is not None
    current = (await core.state_store.get(conn, room.current_state_group)).state
    assert current == {
        **{e.state_tuple: e.event_id for e in state},
        ("m.room.member", BOB): bob_join.event_id,
    }
    stored = (await storage.fetch_events(conn, [bob_join.event_id]))[bob_join.event_id]
    assert stored.stream_position is not None and stored.servers_before == [SERVER]


async def test_add_join_refuses_a_join_the_given_state_does_not_allow(
    core: RoomsCore, conn: asyncpg.Connection
) -> None:
    room_id = _new_room_id()
    create, join, power, _ = _room(room_id)
    invite_only = _event(room_id, "m.room.join_rules", "", {"join_rule": "invite"},
                         [create, join, power], [power], 4)  # fmt: skip
    bob_join = _event(room_id, "m.room.member", BOB, {"membership": "join"},
                      [create, power, invite_only], [invite_only], 5, sender=BOB)  # fmt: skip
    state = [create, join, power, invite_only]
    async with conn.transaction():
        batch = await _batch(core, conn, room_id)
        for checked in auth_order(_checked(state)):
            await batch.add_outlier(checked)
        outcome = await batch.add_join(
            CheckedPdu(bob_join, dict(bob_join.pdu)), [e.event_id for e in state]
        )
    assert outcome.status is None
    assert outcome.reason is Reason.AUTH_EVENTS_DISALLOW
    assert bob_join.event_id not in batch.pending


# ------------------------------------------------ the end of a partial state
# Our join stored on a partial state, events of the window added live, then
# end_partial_state with the full state, as the resync does. The partial
# state here holds a ban of bob that the full state does not have (a view
# the resident's full state corrects), so bob's message is rejected during
# the window; the full state judges it again, both ways.

CAROL = "@carol:us.test"


def _message(room_id: str, auth: list[Event], prev: list[Event], depth: int) -> Event:
    """bob's message."""
    pdu = {
        "room_id": room_id, "sender": BOB, "type": "m.room.message", "content": {"body": "hi"},
        "auth_events": [a.event_id for a in auth], "prev_events": [p.event_id for p in prev],
        "depth": depth, "origin_server_ts": depth,
    }  # fmt: skip
    return Event.from_pdu(sign_event(pdu, KEY, SERVER, "ed25519:k", V10), V10)


MEMBER = "m.room.member"


async def _partial_window(
    core: RoomsCore, conn: asyncpg.Connection, *, kick_in_window: bool
) -> tuple[str, str, list[str]]:
    """Our join on a partial state, bob's message (and a kick of bob) in the window.

    Returns (room id, the message's id, the full state's ids).
    """
    room_id = _new_room_id()
    create, alice, power, rules = _room(room_id)
    ban = _event(room_id, MEMBER, BOB, {"membership": "ban"}, [create, alice, power], [rules], 5)
    bob = _event(room_id, MEMBER, BOB, {"membership": "join"}, [create, power, rules], [rules], 5,
                 sender=BOB)  # fmt: skip
    ours = _event(room_id, MEMBER, CAROL, {"membership": "join"}, [create, power, rules],
                  [bob], 6, sender=CAROL)  # fmt: skip
    partial = [create, alice, power, rules, ban]
    full = [create, alice, power, rules, bob]
    await _join_partially(core, conn, [*partial, bob], partial, ours)
    window = []
    if kick_in_window:
        # alice kicks bob (on our side he is banned: allowed either way).
        window.append(_event(room_id, MEMBER, BOB, {"membership": "leave"},
                             [create, alice, power, ban], [ours], 7))  # fmt: skip
    message = _message(room_id, [create, power, bob], [ours], 7)
    window.append(message)
    async with conn.transaction():
        batch = RoomBatch(core, conn, room_id)
        assert await batch.open(4)
        outcomes = [await batch.add_live(c) for c in _checked(window)]
        await batch.write()
    await batch.committed()
    assert [o.status for o in outcomes][:-1] == [Status.ACCEPTED] * (len(window) - 1)
    # On the partial state bob is banned: his message is rejected for now.
    assert outcomes[-1].status is Status.REJECTED
    assert outcomes[-1].reason is Reason.STATE_BEFORE_DISALLOWS
    return room_id, message.event_id, [e.event_id for e in full]


async def _resync(
    core: RoomsCore, conn: asyncpg.Connection, room_id: str, full: list[str]
) -> Rejudged:
    async with conn.transaction():
        batch = RoomBatch(core, conn, room_id)
        assert await batch.open(4)
        rejudged = await batch.end_partial_state(full)
        await batch.write()
    await batch.committed()
    return rejudged


async def test_an_event_rejected_on_the_partial_state_is_accepted_and_streamed_after_the_resync(
    core: RoomsCore,
    conn: asyncpg.Connection,
) -> None:
    room_id, message_id, full = await _partial_window(core, conn, kick_in_window=False)
    rejudged = await _resync(core, conn, room_id, full)
    assert (rejudged.accepted, rejudged.soft_failed, rejudged.rejected) == (1, 0, 0)
    stored = (await storage.fetch_events(conn, [message_id]))[message_id]
    assert stored.status is Status.ACCEPTED
    assert stored.rejection_reason == ""
    assert stored.stream_position is not None  # local consumers see it
    assert message_id in await storage.forward_extremities(conn, room_id)
    assert await storage.partial_state_room(conn, room_id) is None


async def test_an_event_rejected_on_the_partial_state_is_soft_failed_if_now_disallowed(
    core: RoomsCore,
    conn: asyncpg.Connection,
) -> None:
    room_id, message_id, full = await _partial_window(core, conn, kick_in_window=True)
    rejudged = await _resync(core, conn, room_id, full)
    # Allowed by the state before it (bob joined), but bob was kicked since.
    assert (rejudged.accepted, rejudged.soft_failed, rejudged.rejected) == (0, 1, 0)
    stored = (await storage.fetch_events(conn, [message_id]))[message_id]
    assert stored.status is Status.SOFT_FAILED
    assert stored.stream_position is None
    assert message_id not in await storage.forward_extremities(conn, room_id)


async def test_an_event_rejected_on_the_partial_state_is_judged_as_on_its_arrival(
    core: RoomsCore,
    conn: asyncpg.Connection,
) -> None:
    room_id, message_id, full = await _partial_window(core, conn, kick_in_window=False)
    # bob is kicked only after his message arrived (the events are
    # deterministic: the same as the window's).
    create, alice, power, rules = _room(room_id)
    ban = _event(room_id, MEMBER, BOB, {"membership": "ban"}, [create, alice, power], [rules], 5)
    ours_id = (await storage.partial_state_room(conn, room_id)).join_event_id  # type: ignore[union-attr]
    ours = (await storage.fetch_events(conn, [ours_id]))[ours_id].event
    kick = _event(room_id, MEMBER, BOB, {"membership": "leave"}, [create, alice, power, ban],
                  [ours], 7)  # fmt: skip
    assert await _receive(core, conn, [kick]) == [Status.ACCEPTED]
    rejudged = await _resync(core, conn, room_id, full)
    # A server with the full state accepted the message when it arrived (bob
    # was a member then): accepted now, though bob has left since.
    assert (rejudged.accepted, rejudged.soft_failed, rejudged.rejected) == (1, 0, 0)
    stored = (await storage.fetch_events(conn, [message_id]))[message_id]
    assert stored.status is Status.ACCEPTED
    assert stored.stream_position is not None
    assert set(await storage.forward_extremities(conn, room_id)) == {message_id, kick.event_id}


async def _join_partially(
    core: RoomsCore, conn: asyncpg.Connection, known: list[Event], partial: list[Event], ours: Event
) -> None:
    """Our join ``ours`` on the ``partial`` state, with ``known`` events stored as outliers."""
    room_id = ours.room_id
    await storage.insert_room(conn, room_id, "10")
    async with conn.transaction():
        batch = RoomBatch(core, conn, room_id)
        assert await batch.open(len(known) + 1)
        for checked in auth_order(_checked(known)):
            await batch.add_outlier(checked)
        joined = await batch.add_join(
            CheckedPdu(ours, dict(ours.pdu)),
            [e.event_id for e in partial],
            partial=PartialStateRoom(room_id, ours.event_id, SERVER, [SERVER]),
        )
        await batch.write()
    await batch.committed()
    assert joined.status is Status.ACCEPTED


async def _receive(core: RoomsCore, conn: asyncpg.Connection, events: list[Event]) -> list[Status]:
    """``events`` received live, one transaction each (they arrive one by one)."""
    statuses = []
    for event in events:
        async with conn.transaction():
            batch = RoomBatch(core, conn, event.room_id)
            assert await batch.open(1)
            outcome = await batch.add_live(CheckedPdu(event, dict(event.pdu)))
            await batch.write()
        await batch.committed()
        statuses.append(outcome.status)
    return statuses


async def _current_member(conn: asyncpg.Connection, room_id: str, user_id: str) -> str | None:
    found = await storage.current_state_of_rooms(conn, [room_id], MEMBER, user_id)
    return found.get(room_id)


async def _bob_in_the_full_state_only(
    core: RoomsCore, conn: asyncpg.Connection
) -> tuple[list[Event], Event, Event, list[str]]:
    """bob joined before us: the partial state leaves him out, the full state has him.

    Returns (create, alice, power, rules), bob's join, our join, the full state's ids.
    """
    room_id = _new_room_id()
    create, alice, power, rules = _room(room_id)
    bob = _event(room_id, MEMBER, BOB, {"membership": "join"}, [create, power, rules], [rules], 5,
                 sender=BOB)  # fmt: skip
    ours = _event(room_id, MEMBER, CAROL, {"membership": "join"}, [create, power, rules],
                  [bob], 6, sender=CAROL)  # fmt: skip
    partial = [create, alice, power, rules]
    await _join_partially(core, conn, [*partial, bob], partial, ours)
    return partial, bob, ours, [e.event_id for e in [*partial, bob]]


@pytest.mark.parametrize("ban_first", [True, False])
async def test_an_event_accepted_on_the_partial_state_is_soft_failed_as_on_arrival(
    core: RoomsCore, conn: asyncpg.Connection, ban_first: bool
) -> None:
    (create, alice, power, _), bob, ours, full = await _bob_in_the_full_state_only(core, conn)
    room_id = ours.room_id
    # In the window alice bans bob, and bob (whom we did not know of) sends a
    # message built on our join, concurrent with the ban.
    ban = _event(
        room_id, MEMBER, BOB, {"membership": "ban"}, [create, alice, power, bob], [ours], 7
    )
    message = _message(room_id, [create, power, bob], [ours], 7)
    arrivals = [ban, message] if ban_first else [message, ban]
    # The partial state cannot judge soft failure: both are accepted.
    assert await _receive(core, conn, arrivals) == [Status.ACCEPTED, Status.ACCEPTED]
    rejudged = await _resync(core, conn, room_id, full)
    stored = (await storage.fetch_events(conn, [message.event_id]))[message.event_id]
    extremities = set(await storage.forward_extremities(conn, room_id))
    assert await _current_member(conn, room_id, BOB) == ban.event_id
    assert await storage.partial_state_room(conn, room_id) is None
    if ban_first:
        # With the full state, bob was banned in the current state when his
        # message arrived: soft-failed, as a server with the full state would
        # have done. It was streamed already; it is no forward extremity.
        assert rejudged.soft_failed_after_acceptance == 1
        assert stored.status is Status.SOFT_FAILED
        assert extremities == {ban.event_id}
    else:
        # It arrived before the ban: a server with the full state accepted it.
        assert rejudged.soft_failed_after_acceptance == 0
        assert stored.status is Status.ACCEPTED
        assert extremities == {ban.event_id, message.event_id}
    assert stored.stream_position is not None


async def test_an_event_whose_stream_position_is_still_pending_is_judged_too(
    core: RoomsCore, conn: asyncpg.Connection
) -> None:
    (create, alice, power, _), bob, ours, full = await _bob_in_the_full_state_only(core, conn)
    room_id = ours.room_id
    ban = _event(
        room_id, MEMBER, BOB, {"membership": "ban"}, [create, alice, power, bob], [ours], 7
    )
    message = _message(room_id, [create, power, bob], [ours], 7)
    assert await _receive(core, conn, [ban, message]) == [Status.ACCEPTED, Status.ACCEPTED]
    # As a crash between a commit and its stream round leaves it: streamed, no position yet.
    await conn.execute(
        "UPDATE events.events SET stream_position = NULL,"
        " stream_pending = nextval('events.stream_pending_order') WHERE event_id = $1",
        message.event_id,
    )
    core.event_cache.pop(message.event_id)
    rejudged = await _resync(core, conn, room_id, full)
    assert rejudged.soft_failed_after_acceptance == 1
    stored = (await storage.fetch_events(conn, [message.event_id]))[message.event_id]
    assert stored.status is Status.SOFT_FAILED
    assert set(await storage.forward_extremities(conn, room_id)) == {ban.event_id}


async def test_an_event_accepted_on_the_partial_state_then_rejected_leaves_the_head(
    core: RoomsCore, conn: asyncpg.Connection
) -> None:
    room_id = _new_room_id()
    create, alice, power, rules = _room(room_id)
    bob = _event(room_id, MEMBER, BOB, {"membership": "join"}, [create, power, rules], [rules], 5,
                 sender=BOB)  # fmt: skip
    ban = _event(room_id, MEMBER, BOB, {"membership": "ban"}, [create, alice, power, bob], [bob], 6)
    ours = _event(room_id, MEMBER, CAROL, {"membership": "join"}, [create, power, rules],
                  [ban], 7, sender=CAROL)  # fmt: skip
    partial = [create, alice, power, rules]
    await _join_partially(core, conn, [*partial, bob, ban], partial, ours)
    # bob, banned before we joined (the partial state does not say so), sends
    # a message citing his join: accepted on the partial state.
    message = _message(room_id, [create, power, bob], [ours], 8)
    assert await _receive(core, conn, [message]) == [Status.ACCEPTED]
    assert set(await storage.forward_extremities(conn, room_id)) == {message.event_id}
    rejudged = await _resync(core, conn, room_id, [e.event_id for e in [*partial, ban]])
    assert rejudged.rejected == 1
    stored = (await storage.fetch_events(conn, [message.event_id]))[message.event_id]
    assert stored.status is Status.REJECTED
    # The head falls back to our join, and the current state is the full one.
    assert set(await storage.forward_extremities(conn, room_id)) == {ours.event_id}
    assert await _current_member(conn, room_id, BOB) == ban.event_id
    assert await _current_member(conn, room_id, CAROL) == ours.event_id


async def test_another_replica_judges_on_the_full_state_after_the_resync(
    core: RoomsCore, conn: asyncpg.Connection, events_pool: asyncpg.Pool
) -> None:
    (create, _, power, _), bob, ours, full = await _bob_in_the_full_state_only(core, conn)
    room_id = ours.room_id
    # A second replica (its own caches) takes bob's message in the window;
    # the first resyncs the room.
    replica = RoomsCore(
        SERVER,
        StateStore(events_pool),
        StateResolver(),
        LruCache("events_events", 1000),
        StreamPositions(events_pool),
    )
    message = _message(room_id, [create, power, bob], [ours], 7)
    assert await _receive(replica, conn, [message]) == [Status.ACCEPTED]
    await _resync(core, conn, room_id, full)
    # bob's next message, on the second replica: the state before it is the
    # full one (bob joined), not the partial one its cache held.
    again = _message(room_id, [create, power, bob], [message], 8)
    assert await _receive(replica, conn, [again]) == [Status.ACCEPTED]
