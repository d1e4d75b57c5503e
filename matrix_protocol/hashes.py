"""Content hashes and reference hashes of events.

Spec: https://spec.matrix.org/v1.19/server-server-api/#calculating-the-content-hash-for-an-event
and https://spec.matrix.org/v1.19/server-server-api/#calculating-the-reference-hash-for-an-event
Both are computed leniently (``strict=False``) because v1–v5 rooms contain
floats and big integers that still hash; strict format checks for v6+ belong
to the caller's validation of received events. ``validated``: the caller has
validated the PDU as canonical JSON already (the v6+ format check), so the
encoding skips that walk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from matrix_protocol.canonical_json import encode_canonical_json, encode_validated_canonical_json
from matrix_protocol.encoding import decode_base64
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import RoomVersion

_NOT_COVERED_BY_CONTENT_HASH = frozenset({"unsigned", "signatures", "hashes"})


def _encode(value: Any, validated: bool) -> bytes:
    if validated:
        return encode_validated_canonical_json(value)
    return encode_canonical_json(value, strict=False)


def compute_content_hash(pdu: Mapping[str, Any], *, validated: bool = False) -> bytes:
    """SHA-256 over the full event minus ``unsigned``, ``signatures`` and ``hashes``."""
    covered = {k: v for k, v in pdu.items() if k not in _NOT_COVERED_BY_CONTENT_HASH}
    return hashlib.sha256(_encode(covered, validated)).digest()


def content_hash_matches(pdu: Mapping[str, Any], *, validated: bool = False) -> bool:
    """Whether ``hashes.sha256`` is present, decodable and equal to the content hash.

    A mismatch means the event was modified (or redacted) on its way: the
    receiver then continues with the redacted copy instead of rejecting it.
    """
    hashes = pdu.get("hashes")
    sha256 = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    if not isinstance(sha256, str):
        return False
    try:
        expected = decode_base64(sha256)
    except ValueError:
        return False
    return expected == compute_content_hash(pdu, validated=validated)


def reference_json(
    pdu: Mapping[str, Any], room_version: RoomVersion, *, validated: bool = False
) -> bytes:
    """The canonical JSON of the redacted event without ``signatures``.

    What the reference hash covers, and also what the event's signatures
    cover (they are checked on the redacted event, without ``signatures`` and
    ``unsigned``). ``unsigned`` and a local top-level ``age_ts`` need no
    removal here: redaction already dropped them, as neither is a kept
    top-level key.
    """
    redacted = redact(pdu, room_version)
    redacted.pop("signatures", None)
    return _encode(redacted, validated)


def compute_reference_hash(
    pdu: Mapping[str, Any], room_version: RoomVersion, *, validated: bool = False
) -> bytes:
    """SHA-256 over :func:`reference_json`."""
    return hashlib.sha256(reference_json(pdu, room_version, validated=validated)).digest()
