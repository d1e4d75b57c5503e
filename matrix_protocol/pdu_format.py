"""The format check of a received PDU (first of the receive-time checks).

Spec: https://spec.matrix.org/v1.19/server-server-api/#pdus, the "Event format" of each room version
(v1/v2, v3–v11, https://spec.matrix.org/v1.19/rooms/v12/#event-format), https://spec.matrix.org/v1.19/client-server-api/#size-limits,
step 1 of https://spec.matrix.org/v1.19/server-server-api/#checks-performed-on-receipt-of-a-pdu, and
https://spec.matrix.org/v1.19/rooms/v6/#canonical-json (enforced strictly from room v6 on).
A PDU failing these checks is dropped, not stored.

Not checked here: unknown top-level keys (kept byte-for-byte, they are
covered by the content hash) and an ``event_id`` on a v3+ PDU (not part of
that format, but harmless: it is hashed like any other kept key).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matrix_protocol.canonical_json import (
    CanonicalJsonError,
    encode_canonical_json,
    encode_validated_canonical_json,
    validate_canonical_json,
)
from matrix_protocol.room_versions import EventFormat, RoomVersion
from matrix_protocol.server_names import is_valid_user_id

MAX_PDU_BYTES = 65536
MAX_ID_BYTES = 255
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10


class PduFormatError(ValueError):
    """The PDU is not valid for its room version."""


class PduTooLarge(PduFormatError):
    """The PDU's canonical JSON is larger than :data:`MAX_PDU_BYTES`."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(pdu: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in pdu:
        raise PduFormatError(f"missing {key!r}")
    value = pdu[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PduFormatError(f"{key!r} must be {what}")
    return value


def _check_id_length(pdu: Mapping[str, Any], key: str) -> None:
    value = pdu.get(key)
    if isinstance(value, str) and len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise PduFormatError(f"{key!r} is longer than {MAX_ID_BYTES} bytes")


def _event_ids(pdu: Mapping[str, Any], key: str, room_version: RoomVersion) -> list[str]:
    entries = _require(pdu, key, list, "a list")
    ids: list[str] = []
    for entry in entries:
        if room_version.event_format is EventFormat.V1:
            if (
                not isinstance(entry, list)
                or len(entry) != 2
                or not isinstance(entry[0], str)
                or not isinstance(entry[1], Mapping)
                or not isinstance(entry[1].get("sha256", ""), str)
            ):
                raise PduFormatError(f"{key!r} entries must be [event_id, {{'sha256': hash}}]")
            ids.append(entry[0])
        elif isinstance(entry, str):
            ids.append(entry)
        else:
            raise PduFormatError(f"{key!r} entries must be event ID strings")
    return ids


def _check_signatures(pdu: Mapping[str, Any]) -> None:
    signatures = _require(pdu, "signatures", Mapping, "an object")
    for server_name, by_key in signatures.items():
        if not isinstance(server_name, str) or not isinstance(by_key, Mapping):
            raise PduFormatError("'signatures' must map server names to objects")
        for key_id, signature in by_key.items():
            if not isinstance(key_id, str) or not isinstance(signature, str):
                raise PduFormatError("'signatures' must map key IDs to strings")


def check_pdu_format(
    pdu: Mapping[str, Any],
    room_version: RoomVersion,
    *,
    backfilled: bool = False,
    validated: bool = False,
) -> None:
    """Raise :class:`PduFormatError` unless ``pdu`` is well-formed for ``room_version``.

    ``backfilled`` lifts the 20 ``prev_events`` / 10 ``auth_events`` limits,
    which historic events may exceed. ``validated``: ``pdu`` passed
    :func:`validate_canonical_json` already (an event built here), not walked again.
    """
    if not isinstance(pdu, Mapping):
        raise PduFormatError("a PDU must be an object")
    if room_version.strict_canonical_json and not validated:
        try:
            validate_canonical_json(pdu)
        except CanonicalJsonError as error:
            raise PduFormatError(f"not canonical JSON: {error}") from None

    event_type = _require(pdu, "type", str, "a string")
    is_create = event_type == "m.room.create"
    if room_version.room_id_from_create_event and is_create:
        if "room_id" in pdu:
            raise PduFormatError("a v12 m.room.create must not have a room_id")
    else:
        _require(pdu, "room_id", str, "a string")
    sender = _require(pdu, "sender", str, "a string")
    if not is_valid_user_id(sender):
        raise PduFormatError(f"sender {sender!r} is not a user ID")
    if room_version.event_format is EventFormat.V1:
        _require(pdu, "event_id", str, "a string")
    _require(pdu, "content", Mapping, "an object")
    if "state_key" in pdu:
        _require(pdu, "state_key", str, "a string")
    for key in ("type", "sender", "room_id", "event_id", "state_key"):
        _check_id_length(pdu, key)

    depth = _require(pdu, "depth", int, "an integer")
    if not 0 <= depth <= room_version.max_depth:
        raise PduFormatError(f"'depth' must be in [0, {room_version.max_depth}]")
    _require(pdu, "origin_server_ts", int, "an integer")
    hashes = _require(pdu, "hashes", Mapping, "an object")
    if not isinstance(hashes.get("sha256"), str):
        raise PduFormatError("'hashes.sha256' must be a string")
    _check_signatures(pdu)
    if "unsigned" in pdu:
        _require(pdu, "unsigned", Mapping, "an object")
    if "redacts" in pdu and not room_version.redacts_in_content:
        _require(pdu, "redacts", str, "a string")

    prev_events = _event_ids(pdu, "prev_events", room_version)
    auth_events = _event_ids(pdu, "auth_events", room_version)
    if not backfilled:
        if len(prev_events) > MAX_PREV_EVENTS:
            raise PduFormatError(f"more than {MAX_PREV_EVENTS} prev_events")
        if len(auth_events) > MAX_AUTH_EVENTS:
            raise PduFormatError(f"more than {MAX_AUTH_EVENTS} auth_events")
    if room_version.room_id_from_create_event and not is_create:
        create_event_id = "$" + pdu["room_id"][1:]
        if create_event_id in auth_events:
            raise PduFormatError("v12 auth_events must not list the create event")

    try:
        if room_version.strict_canonical_json:
            encoded = encode_validated_canonical_json(pdu)  # validated above
        else:
            encoded = encode_canonical_json(pdu, strict=False)
    except (ValueError, TypeError) as error:
        raise PduFormatError(f"cannot encode as canonical JSON: {error}") from None
    if len(encoded) > MAX_PDU_BYTES:
        raise PduTooLarge(f"PDU is larger than {MAX_PDU_BYTES} bytes")
