"""make_join / make_leave / make_knock: the resident's unsigned template events.

Spec: https://spec.matrix.org/v1.19/server-server-api/#joining-rooms and
#restricted-rooms (errors, template fields, restricted rooms on the resident's
side), #auth-events-selection, and https://spec.matrix.org/v1.19/rooms/v12/#authorisation-rules
(join, knock and leave rules). The template cites up to 10 of the room's forward
extremities (depth = max + 1, [Synapse]) and the auth events the selection
rules pick from the current state; it is auth-checked against the current
state before it goes out, so a template we hand out is one we would accept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from matrix_protocol.auth_events import auth_types_for_event, select_auth_event_ids
from matrix_protocol.auth_rules import AuthError, check_auth_rules, membership_of
from matrix_protocol.events import Event, StateKey
from matrix_protocol.membership import (
    JOIN_AUTHORISER,
    JOIN_RULES_WITH_KNOCK,
    RESTRICTED_JOIN_RULES,
    MembershipError,
    build_template,
    check_user_on_server,
    forbidden,
    restricted_allow_rooms,
    supported_room_version_requested,
)
from matrix_protocol.power_levels import named_power_level, user_power_level
from matrix_protocol.server_acl import server_allowed
from mxfed.clock import now_ms
from services.events import storage
from services.events.membership.common import (
    MEMBER,
    MembershipDeps,
    RoomHead,
    room_head,
    state_events,
)

CREATE = ("m.room.create", "")
JOIN_RULES = ("m.room.join_rules", "")
POWER_LEVELS = ("m.room.power_levels", "")
SERVER_ACL = ("m.room.server_acl", "")
MAX_PREV_EVENTS = 10


def not_found(message: str = "Unknown room") -> MembershipError:
    return MembershipError(404, "M_NOT_FOUND", message)


async def resident_room(conn: asyncpg.Connection, deps: MembershipDeps, room_id: str) -> RoomHead:
    """The room, if we hold its state and a local user is joined (else 404)."""
    head = await room_head(conn, deps.core, room_id)
    if head is None or not await storage.server_has_joined_member(conn, room_id, deps.server_name):
        raise not_found("This server is not in that room")
    return head


async def check_acl(conn: asyncpg.Connection, head: RoomHead, origin: str) -> None:
    acl = (await state_events(conn, head.state, [SERVER_ACL])).get(SERVER_ACL)
    if acl is not None and not server_allowed(origin, acl.content):
        raise forbidden("Server is banned from this room by its server ACL")


async def _joined_to_any(
    conn: asyncpg.Connection, deps: MembershipDeps, user_id: str, room_ids: Sequence[str]
) -> tuple[bool, bool]:
    """(we know at least one of the rooms, the user is joined to one of them)."""
    known = False
    for room_id in room_ids:
        head = await room_head(conn, deps.core, room_id)
        if head is None or not await storage.server_has_joined_member(
            conn, room_id, deps.server_name
        ):
            continue
        known = True
        member = (await state_events(conn, head.state, [(MEMBER, user_id)])).get((MEMBER, user_id))
        if member is not None and member.membership == "join":
            return True, True
    return known, False


async def pick_authoriser(
    conn: asyncpg.Connection, deps: MembershipDeps, head: RoomHead
) -> str | None:
    """A local joined user able to invite (highest power first), or None."""
    members = [
        (key[1], event_id)
        for key, event_id in head.state.items()
        if key[0] == MEMBER and key[1].endswith(":" + deps.server_name)
    ]
    loaded = await storage.fetch_events(conn, [event_id for _, event_id in members])
    auth = await state_events(conn, head.state, [CREATE, POWER_LEVELS])
    create, power_levels = auth.get(CREATE), auth.get(POWER_LEVELS)
    if create is None:
        return None
    invite_level = named_power_level("invite", power_levels)
    candidates: list[tuple[float, str]] = []
    for user_id, event_id in members:
        stored = loaded.get(event_id)
        if stored is None or stored.event.membership != "join":
            continue
        level = user_power_level(user_id, power_levels, create)
        if level >= invite_level:
            candidates.append((-level if level != math.inf else -1e18, user_id))
    return min(candidates)[1] if candidates else None


async def restricted_join_authoriser(
    conn: asyncpg.Connection,
    deps: MembershipDeps,
    head: RoomHead,
    user_id: str,
    join_rules: Event,
) -> str:
    """The local user to name in ``join_authorised_via_users_server``."""
    known, joined = await _joined_to_any(
        conn, deps, user_id, restricted_allow_rooms(join_rules.content)
    )
    if not known:
        raise MembershipError(
            400,
            "M_UNABLE_TO_AUTHORISE_JOIN",
            "This server cannot check any of the room's join conditions",
        )
    if not joined:
        raise forbidden("You do not satisfy any of the room's join conditions")
    authoriser = await pick_authoriser(conn, deps, head)
    if authoriser is None:
        raise MembershipError(
            400, "M_UNABLE_TO_GRANT_JOIN", "No user of this server can authorise the join"
        )
    return authoriser


async def check_join_allowed(
    conn: asyncpg.Connection, deps: MembershipDeps, head: RoomHead, user_id: str
) -> dict[str, Any]:
    """Extra template content for a join (the authoriser), or 403/400."""
    auth = await state_events(conn, head.state, [JOIN_RULES, (MEMBER, user_id)])
    current = membership_of(user_id, auth)
    if current == "ban":
        raise forbidden("You are banned from this room")
    if current in ("join", "invite"):
        return {}
    join_rules = auth.get(JOIN_RULES)
    rule = join_rules.content.get("join_rule") if join_rules is not None else "invite"
    if rule == "public":
        return {}
    if (
        rule in RESTRICTED_JOIN_RULES
        and join_rules is not None
        and head.version.restricted_join_rule
        and (rule == "restricted" or head.version.knock_restricted_join_rule)
    ):
        return {
            JOIN_AUTHORISER: await restricted_join_authoriser(conn, deps, head, user_id, join_rules)
        }
    raise forbidden("You are not invited to this room")


async def check_knock_allowed(conn: asyncpg.Connection, head: RoomHead, user_id: str) -> None:
    if not head.version.knock_join_rule:
        raise forbidden("This room version does not support knocking")
    auth = await state_events(conn, head.state, [JOIN_RULES, (MEMBER, user_id)])
    current = membership_of(user_id, auth)
    if current == "ban":
        raise forbidden("You are banned from this room")
    if current in ("join", "invite"):
        raise forbidden(f"You are already {'in' if current == 'join' else 'invited to'} the room")
    join_rules = auth.get(JOIN_RULES)
    rule = join_rules.content.get("join_rule") if join_rules is not None else "invite"
    allowed = {"knock"} | (
        {"knock_restricted"} if head.version.knock_restricted_join_rule else set()
    )
    if rule not in allowed or rule not in JOIN_RULES_WITH_KNOCK:
        raise forbidden("You are not allowed to knock on this room")


async def check_leave_allowed(conn: asyncpg.Connection, head: RoomHead, user_id: str) -> None:
    auth = await state_events(conn, head.state, [(MEMBER, user_id)])
    if membership_of(user_id, auth) not in ("join", "invite", "knock"):
        raise forbidden("You are not in, invited to or knocking on this room")


async def build_membership_template(
    conn: asyncpg.Connection,
    deps: MembershipDeps,
    head: RoomHead,
    user_id: str,
    membership: str,
    content: Mapping[str, Any],
) -> dict[str, Any]:
    """The template on top of the room's head, auth-checked against its current state."""
    room_id = head.room.room_id
    version = head.version
    extremities = await storage.forward_extremities(conn, room_id)
    heads = sorted(extremities.items(), key=lambda item: (-item[1], item[0]))[:MAX_PREV_EVENTS]
    depth = max((d for _, d in heads), default=0) + 1
    body = dict(content)
    body["membership"] = membership
    auth_ids = select_auth_event_ids(MEMBER, user_id, user_id, body, version, head.state)
    loaded = await storage.fetch_events(conn, [*(e for e, _ in heads), *auth_ids])
    template = build_template(
        version,
        room_id=room_id,
        user_id=user_id,
        membership=membership,
        prev_events=[loaded[e].event for e, _ in heads if e in loaded],
        auth_events=[loaded[e].event for e in auth_ids if e in loaded],
        depth=depth,
        origin=deps.server_name,
        origin_server_ts=now_ms(),
        content=body,
    )
    await auth_check_against_state(conn, head, Event(template, version, "$template"))
    return template


async def auth_check_against_state(conn: asyncpg.Connection, head: RoomHead, event: Event) -> None:
    keys: set[StateKey] = auth_types_for_event(
        event.type, event.sender, event.state_key, event.content, head.version
    )
    keys.add(CREATE)
    auth_state = await state_events(conn, head.state, keys)
    try:
        check_auth_rules(event, auth_state)
    except AuthError as error:
        raise forbidden(f"Not allowed by the room's state: {error.reason}") from None


async def make_membership(
    deps: MembershipDeps,
    origin: str,
    room_id: str,
    user_id: str,
    membership: str,
    supported_versions: Sequence[str],
) -> tuple[str, dict[str, Any]]:
    """GET make_{membership}: (room version, template)."""
    if membership not in ("join", "leave", "knock"):
        raise MembershipError(400, "M_INVALID_PARAM", f"unknown membership {membership!r}")
    check_user_on_server(user_id, origin)
    async with deps.pool.acquire() as conn:
        head = await resident_room(conn, deps, room_id)
        if membership in ("join", "knock") and await storage.partial_state_room(conn, room_id):
            # Our state lacks members until the resync ends: a send_join answer
            # would pass a partial state off as the room's (Synapse refuses too).
            raise not_found("This server is not fully joined to that room yet")
        if membership in ("join", "knock"):
            supported_room_version_requested(head.version.identifier, supported_versions)
        await check_acl(conn, head, origin)
        content: dict[str, Any] = {}
        if membership == "join":
            content = await check_join_allowed(conn, deps, head, user_id)
        elif membership == "knock":
            await check_knock_allowed(conn, head, user_id)
        else:
            await check_leave_allowed(conn, head, user_id)
        template = await build_membership_template(conn, deps, head, user_id, membership, content)
        return head.version.identifier, template
