"""Room summaries, public room filtering and pagination: pure functions.

Spec: https://spec.matrix.org/v1.19/server-server-api/#published-room-directory
(PublicRoomsChunk; the hierarchy's room summary adds
``room_type``, ``allowed_room_ids``, ``encryption``, ``room_version`` and
``children_state``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from services.events.directory.storage import RoomData

JsonDict = dict[str, Any]


def _content(room: RoomData, event_type: str) -> JsonDict:
    event = room.state.get((event_type, ""))
    return event.content if event is not None else {}


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def plain_topic(content: JsonDict) -> str | None:
    """The text/plain topic: m.topic's text/plain entry, else ``topic``."""
    rich = content.get("m.topic")
    if isinstance(rich, dict) and isinstance(rich.get("m.text"), list):
        for entry in rich["m.text"]:
            if (
                isinstance(entry, dict)
                and entry.get("mimetype", "text/plain") == "text/plain"
                and isinstance(entry.get("body"), str)
            ):
                return entry["body"] or None
    return _string(content.get("topic"))


def public_room_entry(room: RoomData) -> JsonDict:
    """A PublicRoomsChunk for the room, from its current state."""
    entry: JsonDict = {
        "room_id": room.room_id,
        "num_joined_members": room.joined_members,
        "world_readable": _content(room, "m.room.history_visibility").get("history_visibility")
        == "world_readable",
        "guest_can_join": _content(room, "m.room.guest_access").get("guest_access") == "can_join",
    }
    optional = {
        "name": _string(_content(room, "m.room.name").get("name")),
        "topic": plain_topic(_content(room, "m.room.topic")),
        "canonical_alias": _string(_content(room, "m.room.canonical_alias").get("alias")),
        "avatar_url": _avatar(_content(room, "m.room.avatar").get("url")),
        "join_rule": _string(_content(room, "m.room.join_rules").get("join_rule")),
        "room_type": room_type(room),
    }
    entry.update({key: value for key, value in optional.items() if value is not None})
    return entry


def _avatar(value: Any) -> str | None:
    return value if isinstance(value, str) and value.startswith("mxc://") else None


def room_type(room: RoomData) -> str | None:
    return _string(_content(room, "m.room.create").get("type"))


def federates(room: RoomData) -> bool:
    return _content(room, "m.room.create").get("m.federate", True) is not False


def join_rule(room: RoomData) -> str:
    return _string(_content(room, "m.room.join_rules").get("join_rule")) or "invite"


def allowed_room_ids(room: RoomData) -> list[str]:
    """Rooms whose members may join a restricted room."""
    allow = _content(room, "m.room.join_rules").get("allow")
    if not isinstance(allow, list):
        return []
    return [
        entry["room_id"]
        for entry in allow
        if isinstance(entry, dict)
        and entry.get("type") == "m.room_membership"
        and isinstance(entry.get("room_id"), str)
    ]


def space_children(room: RoomData, suggested_only: bool = False) -> list[JsonDict]:
    """m.space.child state events with a valid ``via``, as stripped state + origin_server_ts."""
    children = []
    for (event_type, state_key), event in sorted(room.state.items()):
        if event_type != "m.space.child":
            continue
        via = event.content.get("via")
        if not isinstance(via, list) or not via or not all(isinstance(v, str) for v in via):
            continue  # no via: the child was removed
        if suggested_only and event.content.get("suggested") is not True:
            continue
        children.append(
            {
                "type": event_type,
                "state_key": state_key,
                "content": event.content,
                "sender": event.pdu.get("sender"),
                "origin_server_ts": event.pdu.get("origin_server_ts"),
            }
        )
    return children


def hierarchy_summary(room: RoomData, suggested_only: bool) -> JsonDict:
    summary = public_room_entry(room)
    summary["room_version"] = room.room_version
    if summary.get("join_rule") in ("restricted", "knock_restricted"):
        summary["allowed_room_ids"] = allowed_room_ids(room)
    algorithm = _string(_content(room, "m.room.encryption").get("algorithm"))
    if algorithm:
        summary["encryption"] = algorithm
    summary["children_state"] = space_children(room, suggested_only)
    return summary


# ---------------------------------------------------------------- filters


@dataclass
class PublicRoomsQuery:
    limit: int = 0
    since: str = ""
    search: str = ""
    room_types: Sequence[str] | None = None  # None: every type
    include_untyped: bool = True


def matches(entry: JsonDict, query: PublicRoomsQuery) -> bool:
    if query.search:
        term = query.search.casefold()
        haystack = [entry.get(k) for k in ("name", "topic", "canonical_alias")]
        if not any(isinstance(text, str) and term in text.casefold() for text in haystack):
            return False
    if query.room_types is not None:
        kind = entry.get("room_type")
        if kind is None:
            return query.include_untyped
        return kind in query.room_types
    return True


# ---------------------------------------------------------------- pagination


class InvalidToken(ValueError):
    pass


def sort_key(entry: JsonDict) -> tuple[int, str]:
    """Largest rooms first, then by room id: a stable order."""
    return (-int(entry["num_joined_members"]), entry["room_id"])


def encode_token(direction: str, entry: JsonDict) -> str:
    raw = orjson.dumps([direction, int(entry["num_joined_members"]), entry["room_id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[str, tuple[int, str]]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        direction, members, room_id = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidToken("unknown pagination token") from None
    if direction not in ("n", "p") or not isinstance(members, int) or not isinstance(room_id, str):
        raise InvalidToken("unknown pagination token")
    return direction, (-members, room_id)


def paginate(entries: list[JsonDict], limit: int, since: str) -> JsonDict:
    """One page of ``entries`` (any order) as the /publicRooms body."""
    ordered = sorted(entries, key=sort_key)
    total = len(ordered)
    if since:
        direction, anchor = decode_token(since)
    else:
        direction, anchor = "n", None
    if direction == "n":
        rest = [e for e in ordered if anchor is None or sort_key(e) > anchor]
        page = rest[:limit] if limit > 0 else rest
        more_after = len(rest) > len(page)
        more_before = anchor is not None and any(sort_key(e) <= anchor for e in ordered)
    else:
        before = [e for e in ordered if sort_key(e) < anchor]  # type: ignore[operator]
        page = before[-limit:] if limit > 0 else before
        more_before = len(before) > len(page)
        more_after = True
    body: JsonDict = {"chunk": page, "total_room_count_estimate": total}
    if page and more_after:
        body["next_batch"] = encode_token("n", page[-1])
    if page and more_before:
        body["prev_batch"] = encode_token("p", page[0])
    return body
