"""Room heroes: the members a nameless room is named after.

Spec: https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3sync
(``RoomSummary``, ``m.heroes``): when the room's ``m.room.name`` and
``m.room.canonical_alias`` are unset or empty, the heroes are the first five
members, in stream order, whose membership is ``join`` or ``invite``, never
the user the summary is for; with no such member, the banned and left ones.
https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv2send_joinroomideventid
(``omit_members``): a resident leaving members out of a send_join answer
keeps the heroes' membership events, computed for the joining user.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HERO_COUNT = 5


@dataclass(frozen=True)
class Member:
    user_id: str
    membership: str
    # Where the member event sits in the stream (outliers: None, last).
    order: int | None


def room_is_named(
    name_content: Mapping[str, Any] | None, alias_content: Mapping[str, Any] | None
) -> bool:
    """Whether the room has a non-empty ``m.room.name`` or ``m.room.canonical_alias``."""
    name = (name_content or {}).get("name")
    alias = (alias_content or {}).get("alias")
    return (isinstance(name, str) and name != "") or (isinstance(alias, str) and alias != "")


def heroes(members: Sequence[Member], for_user: str) -> list[str]:
    """The room's heroes as seen by ``for_user`` (at most five user ids)."""

    def first(memberships: frozenset[str]) -> list[str]:
        chosen = [m for m in members if m.membership in memberships and m.user_id != for_user]
        chosen.sort(key=lambda m: (m.order is None, m.order or 0, m.user_id))
        return [m.user_id for m in chosen[:HERO_COUNT]]

    return first(frozenset({"join", "invite"})) or first(frozenset({"leave", "ban"}))
