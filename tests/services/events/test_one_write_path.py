"""Every input path stores a room's events through RoomBatch, and nothing else does.

Dynamic: the events service runs on a database of its own whose room tables
(events, their edges, state groups, extremities, current state, the room's
head, waiting redactions) log the id of every transaction that writes them
(a statement trigger); ``RoomBatch.write`` records the id of its own. Each
input path — events built here, /send, ``InputPdus`` NEW / GAP_FILL (with
and without the state before) / BACKFILL / OUTLIER, a remote join, a
send_join we host — must write, and only inside a transaction where a room
batch wrote. A second write path fails it, whether through the storage
functions or SQL of its own.

Static: outside ``room_batch.py`` no module calls the storage functions that
write those tables, and outside the storage modules none has SQL writing them.
(The round that gives committed events their stream positions changes only
those columns; the audit lets that through.)
"""

from __future__ import annotations

import ast
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from matrix_protocol.canonical_json import encode_json
from mxfed.config import Config
from mxfed.database import apply_migrations, create_pool
from mxfed.internal_identity import Caller
from mxfed.service_runtime import ServiceContext, migrations_directory
from mxfed_api.events.v1 import events_pb2, events_pb2_grpc, membership_pb2, membership_pb2_grpc
from services.events.room_batch import RoomBatch
from services.events.server import setup
from tests.support.databases import create_database, drop_database
from tests.support.events_service import OUR_SERVER, EventsService, RemoteServer, RoomHead
from tests.support.fake_homeserver import FakeHomeserver
from tests.support.grpc_plane import (
    GATEWAY,
    TEST_BOT,
    bind_loopback,
    channel_to,
    make_server,
    plane_settings,
)
from tests.support.join_resident import Resident, add_routes

REPOSITORY = Path(__file__).resolve().parents[3]
ROOM_TABLES = (
    "events",
    "event_auth",
    "event_edges",
    "forward_extremities",
    "state_groups",
    "state_group_entries",
    "current_state",
    "waiting_redactions",
)
AUDIT = """
CREATE TABLE public.room_writes (
    id bigserial PRIMARY KEY, txid bigint NOT NULL, table_name text NOT NULL
);
CREATE FUNCTION public.log_room_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.room_writes (txid, table_name) VALUES (txid_current(), TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER audit_rooms AFTER UPDATE ON events.rooms
    FOR EACH STATEMENT EXECUTE FUNCTION public.log_room_write();
-- The stream-position round (after a batch's commit) gives stored events their
-- positions: a change of those columns alone is not a write of the room.
CREATE FUNCTION public.log_event_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR to_jsonb(OLD) - 'stream_position' - 'stream_pending'
                            <> to_jsonb(NEW) - 'stream_position' - 'stream_pending' THEN
        INSERT INTO public.room_writes (txid, table_name) VALUES (txid_current(), TG_TABLE_NAME);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER audit_events AFTER INSERT OR UPDATE OR DELETE ON events.events
    FOR EACH ROW EXECUTE FUNCTION public.log_event_write();
""" + "".join(
    f"CREATE TRIGGER audit_{table} AFTER INSERT OR UPDATE OR DELETE ON events.{table}"
    " FOR EACH STATEMENT EXECUTE FUNCTION public.log_room_write();\n"
    for table in ROOM_TABLES
    if table != "events"
)


@dataclass
class Audited:
    events: EventsService
    pool: asyncpg.Pool
    backfill: events_pb2_grpc.EventsStub  # the events API as the backfill part calls it
    membership: membership_pb2_grpc.MembershipStub  # as the gateway calls it
    actor: membership_pb2_grpc.MembershipStub  # as a local actor calls it
    batch_transactions: set[int]
    last_write: int = 0

    @asynccontextmanager
    async def only_room_batches_write(self, path: str) -> AsyncIterator[None]:
        """The block must write room tables, and only in transactions a RoomBatch wrote in."""
        yield
        rows = await self.pool.fetch(
            "SELECT id, txid, table_name FROM public.room_writes WHERE id > $1 ORDER BY id",
            self.last_write,
        )
        assert rows, f"{path}: nothing was written"
        self.last_write = rows[-1]["id"]
        outside = sorted(
            {r["table_name"] for r in rows if r["txid"] not in self.batch_transactions}
        )
        assert not outside, f"{path}: {outside} written outside RoomBatch.write"


@pytest.fixture
async def audited(
    keys_service: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Audited]:
    database_url = await create_database("mxfed_write_path")
    pool = await create_pool(database_url, max_size=12)
    server = make_server("events")
    context: ServiceContext | None = None
    channels: list[grpc.aio.Channel] = []
    batch_transactions: set[int] = set()
    write = RoomBatch.write

    async def recorded_write(batch: RoomBatch, *args: Any) -> None:
        batch_transactions.add(await batch.conn.fetchval("SELECT txid_current()"))
        await write(batch, *args)

    monkeypatch.setattr(RoomBatch, "write", recorded_write)
    try:
        await apply_migrations(pool, "events", migrations_directory("events"))
        await pool.execute(AUDIT)
        config = Config(
            server_name=OUR_SERVER,
            data_dir=tmp_path,
            database_url=database_url,
            keys_address=keys_service.address,
            federation_verify_tls=False,
            federation_allowed_ip_ranges=["127.0.0.0/8"],
            **plane_settings(),
        )
        context = ServiceContext(name="events", config=config, pool=pool, server=server)
        await setup(context)
        address = bind_loopback(server, "events")
        await server.start()
        channels = [channel_to(address, "events")] + [
            channel_to(address, "events", caller)
            for caller in (GATEWAY, Caller.part("backfill"), TEST_BOT)
        ]
        admitted, gateway, backfill, actor = channels
        events = EventsService(
            events_pb2_grpc.EventsStub(admitted), OUR_SERVER, context.signing_key(), server, pool
        )
        yield Audited(
            events,
            pool,
            events_pb2_grpc.EventsStub(backfill),
            membership_pb2_grpc.MembershipStub(gateway),
            membership_pb2_grpc.MembershipStub(actor),
            batch_transactions,
        )
    finally:
        for channel in channels:
            await channel.close()
        await server.stop(grace=None)
        if context is not None:
            await context.close()
        await pool.close()
        await drop_database(database_url)


async def _input(
    audited: Audited,
    head: RoomHead,
    kind: int,
    pdus: list[dict[str, Any]],
    state_before: dict[str, list[str]] | None = None,
) -> list[int]:
    reply = await audited.backfill.InputPdus(
        events_pb2.InputPdusRequest(
            room_id=head.room_id,
            room_version=head.version,
            kind=kind,  # type: ignore[arg-type]
            pdus=[encode_json(p) for p in pdus],
            state_before=[
                events_pb2.StateBefore(event_id=e, state_event_ids=ids)
                for e, ids in (state_before or {}).items()
            ],
        )
    )
    assert all(not r.error for r in reply.results), reply
    return [r.status for r in reply.results]


async def test_every_input_path_stores_through_room_batch(
    audited: Audited, remote: RemoteServer
) -> None:
    events = audited.events
    alice, bob = remote.user("alice"), remote.user("bob")

    async with audited.only_room_batches_write("events built here"):
        room_id = await events.create_room("10", preset="public_chat")
        await events.send(room_id, f"@admin:{OUR_SERVER}", "m.room.message", {"body": "hi"})

    head = await events.head(room_id)
    async with audited.only_room_batches_write("/send"):
        join, join_id = remote.pdu(head, "m.room.member", alice, {"membership": "join"}, alice)
        message, message_id = remote.pdu(head, "m.room.message", alice, {"body": "one"})
        answer = await events.transaction(remote.name, [join, message])
        assert answer == {"pdus": {join_id: {}, message_id: {}}}

    async with audited.only_room_batches_write("InputPdus NEW"):
        message, _ = remote.pdu(head, "m.room.message", alice, {"body": "two"})
        assert await _input(audited, head, events_pb2.INPUT_KIND_NEW, [message]) == [
            events_pb2.EVENT_STATUS_ACCEPTED
        ]

    async with audited.only_room_batches_write("InputPdus OUTLIER"):
        aside, _ = remote.pdu(head, "m.room.message", alice, {"body": "aside"}, advance=False)
        assert await _input(audited, head, events_pb2.INPUT_KIND_OUTLIER, [aside]) == [
            events_pb2.EVENT_STATUS_OUTLIER
        ]

    async with audited.only_room_batches_write("InputPdus GAP_FILL"):
        connected, _ = remote.pdu(head, "m.room.message", alice, {"body": "three"})
        state_ids = list(head.state.values())
        across, across_id = remote.pdu(
            head, "m.room.message", alice, {"body": "across a gap"}, prev=["$gone:remote.test"]
        )
        statuses = await _input(
            audited,
            head,
            events_pb2.INPUT_KIND_GAP_FILL,
            [connected, across],
            {across_id: state_ids},
        )
        assert statuses == [events_pb2.EVENT_STATUS_ACCEPTED, events_pb2.EVENT_STATUS_ACCEPTED]

    async with audited.only_room_batches_write("InputPdus BACKFILL"):
        old, old_id = remote.pdu(
            head,
            "m.room.message",
            alice,
            {"body": "old"},
            prev=["$older:remote.test"],
            depth=2,
            advance=False,
        )
        statuses = await _input(
            audited, head, events_pb2.INPUT_KIND_BACKFILL, [old], {old_id: state_ids}
        )
        assert statuses == [events_pb2.EVENT_STATUS_ACCEPTED]

    async with audited.only_room_batches_write("send_join we host"):
        head = await events.head(room_id)
        bob_join, bob_join_id = remote.pdu(head, "m.room.member", bob, {"membership": "join"}, bob)
        await audited.membership.SendJoin(
            membership_pb2.SendJoinRequest(
                origin=remote.name,
                room_id=room_id,
                event_id=bob_join_id,
                pdu_json=encode_json(bob_join),
            )
        )

    resident_server = FakeHomeserver(key_version="resident1")
    rooms: dict[str, Resident] = {}
    add_routes(resident_server, rooms)
    await resident_server.start()
    try:
        resident = Resident(resident_server, serve_event=True)
        rooms[resident.room_id] = resident
        async with audited.only_room_batches_write("a join to a remote room"):
            reply = await audited.actor.PerformJoin(
                membership_pb2.PerformJoinRequest(
                    room_id_or_alias=resident.room_id,
                    user_id=f"@u{secrets.token_hex(4)}:{OUR_SERVER}",
                    servers=[resident_server.server_name],
                ),
                timeout=30,
            )
            assert reply.remote
    finally:
        await resident_server.stop()


_ROOM_SQL_WRITE = re.compile(
    r"(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+events\.(rooms|" + "|".join(ROOM_TABLES) + r")\b",
    re.IGNORECASE,
)
_ROOM_WRITERS = {
    "insert_events",
    "insert_events_alone",
    "mark_stream_pending",
    "replace_forward_extremities",
    "apply_current_state_delta",
    "update_room_head",
    "set_create_event",
    "redact_event",
    "update_waiting_redactions",
    "replace_event_placements",
    "insert_partial_state_room",
    "add_partial_state_events",
    "delete_partial_state",
}


def _writes_outside_room_batch(path: Path) -> list[str]:
    """Calls in ``path`` of the functions that write room tables (EDU stream rows allowed)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _ROOM_SQL_WRITE.search(node.value):
                found.append(f"{path}:{node.lineno} SQL writing a room table")
            continue
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        owner = node.func.value
        if name in _ROOM_WRITERS:
            found.append(f"{path}:{node.lineno} {name}")
        elif name == "write" and isinstance(owner, ast.Name) and owner.id == "StateStore":
            found.append(f"{path}:{node.lineno} StateStore.write")
    return found


def test_no_module_but_room_batch_writes_room_tables() -> None:
    allowed = {
        REPOSITORY / "services/events/room_batch.py",
        REPOSITORY / "services/events/storage.py",
        REPOSITORY / "services/events/state_storage.py",
    }
    sources = [
        p
        for folder in ("services", "gateway", "mxfed")
        for p in (REPOSITORY / folder).rglob("*.py")
        if p not in allowed
    ]
    assert len(sources) > 50
    found = [call for path in sources for call in _writes_outside_room_batch(path)]
    assert found == []
    # The check sees the calls and the SQL it looks for.
    assert _writes_outside_room_batch(REPOSITORY / "services/events/room_batch.py")
    sql = _writes_outside_room_batch(REPOSITORY / "services/events/storage.py")
    assert any("SQL writing a room table" in line for line in sql)
