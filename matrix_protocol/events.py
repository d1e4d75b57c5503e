"""A read-only view of a PDU that hides the differences between event formats.

Spec: "PDUs" and "Event format" of each room version. Auth rules, state
resolution and the services work with :class:`Event`; the federation JSON
stays untouched in :attr:`Event.pdu` so hashes and signatures keep matching.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matrix_protocol.room_versions import EventFormat, RoomVersion

JsonDict = dict[str, Any]
StateKey = tuple[str, str]  # (event type, state key)


class Event:
    """One PDU of a known room version, with its (given or computed) event ID."""

    __slots__ = ("event_id", "room_version", "pdu")

    def __init__(self, pdu: Mapping[str, Any], room_version: RoomVersion, event_id: str) -> None:
        self.pdu = pdu
        self.room_version = room_version
        self.event_id = event_id

    @classmethod
    def from_pdu(cls, pdu: Mapping[str, Any], room_version: RoomVersion) -> Event:
        """Build the view, computing the event ID as the room version says."""
        from matrix_protocol.event_ids import compute_event_id

        return cls(pdu, room_version, compute_event_id(pdu, room_version))

    # Fields -----------------------------------------------------------------

    @property
    def type(self) -> str:
        return self.pdu["type"]

    @property
    def state_key(self) -> str | None:
        return self.pdu.get("state_key")

    @property
    def is_state(self) -> bool:
        return "state_key" in self.pdu

    @property
    def state_tuple(self) -> StateKey:
        return (self.pdu["type"], self.pdu["state_key"])

    @property
    def sender(self) -> str:
        return self.pdu["sender"]

    @property
    def room_id(self) -> str:
        if self.room_version.room_id_from_create_event and self.type == "m.room.create":
            return "!" + self.event_id[1:]
        return self.pdu["room_id"]

    @property
    def content(self) -> Mapping[str, Any]:
        content = self.pdu.get("content")
        if type(content) is dict:  # the usual case, without the ABC check's cost
            return content
        return content if isinstance(content, Mapping) else {}

    @property
    def depth(self) -> int:
        return self.pdu["depth"]

    @property
    def origin_server_ts(self) -> int:
        return self.pdu["origin_server_ts"]

    @property
    def prev_event_ids(self) -> list[str]:
        return _event_id_list(self.pdu.get("prev_events", []), self.room_version)

    @property
    def auth_event_ids(self) -> list[str]:
        """The auth events as listed; in v12 the create event is implied, not listed."""
        return _event_id_list(self.pdu.get("auth_events", []), self.room_version)

    @property
    def membership(self) -> str | None:
        membership = self.content.get("membership")
        return membership if isinstance(membership, str) else None

    @property
    def redacts(self) -> str | None:
        if self.room_version.redacts_in_content:
            redacts = self.content.get("redacts")
        else:
            redacts = self.pdu.get("redacts")
        return redacts if isinstance(redacts, str) else None

    @property
    def sender_server(self) -> str:
        return self.sender.split(":", 1)[1]

    def __repr__(self) -> str:
        return f"Event({self.event_id}, {self.type!r}, {self.state_key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __hash__(self) -> int:
        return hash(self.event_id)


def _event_id_list(entries: Any, room_version: RoomVersion) -> list[str]:
    if room_version.event_format is EventFormat.V1:
        return [entry[0] for entry in entries]
    return list(entries)


def server_of(user_or_room_id: str) -> str:
    """The server name part of ``@user:server`` / ``!room:server`` / ``$ev:server``."""
    return user_or_room_id.split(":", 1)[1]
