"""What the membership modules share: dependencies, room heads, stored JSON, our signature.

Built on the events service's own pieces (``RoomsCore``, ``LocalEvents``,
``storage``, the state store) — never on its tables directly except through
those functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from matrix_protocol.events import Event, StateKey
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import RoomVersion, room_version
from matrix_protocol.signing import sign_json
from mxfed.federation_client import FederationClient
from mxfed.identity_files import ServerSigningKey
from mxfed_api.keys.v1 import keys_pb2_grpc
from services.events import storage
from services.events.local_events import LocalEvents
from services.events.room_batch import RoomsCore
from services.events.storage import RoomRow

log = logging.getLogger(__name__)

MEMBER = "m.room.member"


@dataclass
class MembershipDeps:
    pool: asyncpg.Pool
    core: RoomsCore
    local: LocalEvents
    keys: keys_pb2_grpc.KeysStub
    client: FederationClient
    signing_key: Callable[[], ServerSigningKey]
    spawn: Callable[[Coroutine[Any, Any, Any], str], Any]

    @property
    def server_name(self) -> str:
        return self.core.server_name


@dataclass
class RoomHead:
    """A room we hold state for: its row, rules and current state map."""

    room: RoomRow
    version: RoomVersion
    state: dict[StateKey, str]


async def room_head(conn: asyncpg.Connection, core: RoomsCore, room_id: str) -> RoomHead | None:
    rooms = await storage.get_rooms(conn, [room_id])
    room = rooms.get(room_id)
    if room is None or room.current_state_group is None:
        return None
    group = await core.state_store.get(conn, room.current_state_group)
    return RoomHead(room, room_version(room.room_version), group.state.flat())


async def state_events(
    conn: asyncpg.Connection, state: Mapping[StateKey, str], keys: Iterable[StateKey]
) -> dict[StateKey, Event]:
    wanted = {key: state[key] for key in keys if key in state}
    loaded = await storage.fetch_events(conn, wanted.values())
    return {key: loaded[eid].event for key, eid in wanted.items() if eid in loaded}


async def pdu_json_of(conn: asyncpg.Connection, event_ids: Sequence[str]) -> dict[str, str]:
    """The stored federation JSON of events (exactly what was signed)."""
    rows = await storage.fetch_event_rows(conn, list(event_ids))
    return {row["event_id"]: row["pdu_json"] for row in rows}


def json_list(items: Iterable[str]) -> str:
    return "[" + ",".join(items) + "]"


def add_signature(
    pdu: Mapping[str, Any], version: RoomVersion, key: ServerSigningKey, server_name: str
) -> dict[str, Any]:
    """``pdu`` with our signature (over its redacted form) added; nothing else changes."""
    signed = sign_json(redact(pdu, version), key.signing_key, server_name, key.key_id)
    result = dict(pdu)
    result["signatures"] = signed["signatures"]
    return result


def with_our_signatures(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> dict[str, Any]:
    """An invitee's countersigned signatures with ours (our server's, the policy server's) kept."""
    return {**theirs, **ours}
