"""Event IDs per room version and v12 room IDs.

Spec: "Event IDs" of each room version (https://spec.matrix.org/v1.19/rooms/v1/#event-ids,
https://spec.matrix.org/v1.19/rooms/v3/#event-ids,
https://spec.matrix.org/v1.19/rooms/v4/#event-ids …) and https://spec.matrix.org/v1.19/appendices/#room-ids

v1/v2 IDs are chosen by the sender and travel in the
PDU; from v3 on they are the event's reference hash and never travel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from matrix_protocol.encoding import encode_base64
from matrix_protocol.hashes import reference_json
from matrix_protocol.room_versions import EventFormat, RoomVersion


def compute_event_id(
    pdu: Mapping[str, Any], room_version: RoomVersion, *, validated: bool = False
) -> str:
    """The ID of ``pdu``; raises :class:`ValueError` for a v1/v2 PDU without ``event_id``.

    ``validated``: ``pdu`` passed the strict canonical JSON check already
    (see :func:`~matrix_protocol.hashes.compute_reference_hash`).
    """
    if room_version.event_format is EventFormat.V1:
        event_id = pdu.get("event_id")
        if not isinstance(event_id, str):
            raise ValueError(f"room v{room_version.identifier} event has no string event_id")
        return event_id
    return event_id_of_reference_json(
        reference_json(pdu, room_version, validated=validated), room_version
    )


def event_id_of_reference_json(reference: bytes, room_version: RoomVersion) -> str:
    """The v3+ ID of an event from its :func:`~matrix_protocol.hashes.reference_json`."""
    urlsafe = room_version.event_format is not EventFormat.V2
    return "$" + encode_base64(hashlib.sha256(reference).digest(), urlsafe=urlsafe)


def room_id_from_create_event(create_pdu: Mapping[str, Any], room_version: RoomVersion) -> str:
    """The v12+ room ID: ``!`` plus the create event's ID without its ``$``.

    Raises :class:`ValueError` for room versions whose room IDs are not derived.
    """
    if not room_version.room_id_from_create_event:
        raise ValueError(
            f"room v{room_version.identifier} room IDs are not derived from the create event"
        )
    return "!" + compute_event_id(create_pdu, room_version)[1:]
