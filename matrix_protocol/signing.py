"""Signing and verifying JSON objects and events with ed25519 keys.

Spec: https://spec.matrix.org/v1.19/appendices/#signing-json,
https://spec.matrix.org/v1.19/appendices/#checking-for-a-signature, https://spec.matrix.org/v1.19/server-server-api/#signing-events
and https://spec.matrix.org/v1.19/server-server-api/#validating-hashes-and-signatures-on-received-events
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import nacl.exceptions
import nacl.signing

from matrix_protocol.canonical_json import (
    CanonicalJsonError,
    encode_canonical_json,
    encode_validated_canonical_json,
)
from matrix_protocol.encoding import decode_base64, encode_base64
from matrix_protocol.events import Event
from matrix_protocol.hashes import compute_content_hash
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import RoomVersion
from matrix_protocol.server_names import server_name_of

KEY_ID_PATTERN = re.compile(r"ed25519:[a-zA-Z0-9_]+")

# Signatures a policy server adds under this key ID are not made with a
# published server key; they are checked separately, never as event signatures.
POLICY_SERVER_KEY_ID = "ed25519:policy_server"

_ED25519_KEY_BYTES = 32
_ED25519_SIGNATURE_BYTES = 64
_NOT_SIGNED = frozenset({"signatures", "unsigned"})


class SignatureError(ValueError):
    """A signature is missing, undecodable or does not verify."""


def is_valid_key_id(key_id: object) -> bool:
    """Whether ``key_id`` is an ed25519 key ID, ``ed25519:[a-zA-Z0-9_]+``."""
    return isinstance(key_id, str) and KEY_ID_PATTERN.fullmatch(key_id) is not None


def generate_signing_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def encode_verify_key(verify_key: nacl.signing.VerifyKey) -> str:
    """The unpadded base64 form published in ``verify_keys``."""
    return encode_base64(bytes(verify_key))


def decode_verify_key(b64: str) -> nacl.signing.VerifyKey:
    """Parse a published ed25519 key; raises :class:`SignatureError` (a ValueError)."""
    try:
        raw = decode_base64(b64)
    except ValueError as exc:
        raise SignatureError(f"verify key is not base64: {b64!r}") from exc
    if len(raw) != _ED25519_KEY_BYTES:
        raise SignatureError(f"verify key has {len(raw)} bytes, not {_ED25519_KEY_BYTES}")
    return nacl.signing.VerifyKey(raw)


def signing_payload(obj: Mapping[str, Any]) -> bytes:
    """The bytes a signature of ``obj`` covers: canonical JSON without
    ``signatures`` and ``unsigned``.

    Encoded with ``strict=False`` so events of v1–v5 rooms (floats, big
    ints) and requests carrying them can be signed and checked; enforcing the
    strict format on v6+ events is a separate validation step.
    """
    return encode_canonical_json(
        {key: value for key, value in obj.items() if key not in _NOT_SIGNED}, strict=False
    )


def sign_json(
    obj: Mapping[str, Any], signing_key: nacl.signing.SigningKey, server_name: str, key_id: str
) -> dict[str, Any]:
    """A copy of ``obj`` with this server's signature added to ``signatures``.

    Existing signatures and ``unsigned`` are kept; ``obj`` is not modified.
    """
    if not is_valid_key_id(key_id):
        raise ValueError(f"invalid key ID {key_id!r}")
    signature = signing_key.sign(signing_payload(obj)).signature
    existing = obj.get("signatures")
    signatures = (
        {name: dict(by_key) for name, by_key in existing.items()}
        if isinstance(existing, Mapping)
        else {}
    )
    signatures.setdefault(server_name, {})[key_id] = encode_base64(signature)
    signed = dict(obj)
    signed["signatures"] = signatures
    return signed


def verify_json_signature(
    obj: Mapping[str, Any],
    server_name: str,
    key_id: str,
    verify_key: nacl.signing.VerifyKey,
) -> None:
    """Check ``server_name``'s ``key_id`` signature on ``obj``; raises :class:`SignatureError`."""
    signatures = obj.get("signatures")
    by_key = signatures.get(server_name) if isinstance(signatures, Mapping) else None
    if not isinstance(by_key, Mapping) or key_id not in by_key:
        raise SignatureError(f"no signature from {server_name} with key {key_id}")
    try:
        signature = decode_base64(by_key[key_id])
    except ValueError as exc:
        raise SignatureError(f"signature of {server_name} {key_id} is not base64") from exc
    if len(signature) != _ED25519_SIGNATURE_BYTES:
        raise SignatureError(f"signature of {server_name} {key_id} has the wrong length")
    try:
        payload = signing_payload(obj)
    except CanonicalJsonError as exc:
        raise SignatureError(f"signed object has no canonical form: {exc}") from exc
    try:
        verify_key.verify(payload, signature)
    except nacl.exceptions.BadSignatureError:
        raise SignatureError(f"bad signature from {server_name} with key {key_id}") from None


def verify_signed_payload(
    payload: bytes,
    server_name: str,
    signatures: Mapping[str, Any],
    verify_keys: Mapping[str, nacl.signing.VerifyKey],
) -> None:
    """Check ``server_name``'s signature over ``payload`` (what :func:`signing_payload`
    gives) made with each of ``verify_keys`` (key ID → key); ``signatures`` are the
    server's signatures by key ID. Raises :class:`SignatureError` for the first that
    is missing or does not verify."""
    for key_id, verify_key in verify_keys.items():
        signature = signatures.get(key_id)
        try:
            if not isinstance(signature, str):
                raise ValueError("not a string")
            verify_key.verify(payload, decode_base64(signature))
        except (ValueError, nacl.exceptions.BadSignatureError):
            raise SignatureError(f"bad signature by {server_name} {key_id}") from None


def verifiable_key_ids(obj: Mapping[str, Any], server_name: str) -> list[str]:
    """The key IDs of ``server_name``'s signatures on ``obj`` worth checking.

    Only ed25519 key IDs count (other algorithms are skipped, as the spec
    says) and the policy server's key ID is left out.
    """
    signatures = obj.get("signatures")
    by_key = signatures.get(server_name) if isinstance(signatures, Mapping) else None
    if not isinstance(by_key, Mapping):
        return []
    return verifiable_signature_key_ids(by_key)


def verifiable_signature_key_ids(by_key: Iterable[Any]) -> list[str]:
    """:func:`verifiable_key_ids` among one server's signatures (their key IDs)."""
    return [
        key_id for key_id in by_key if is_valid_key_id(key_id) and key_id != POLICY_SERVER_KEY_ID
    ]


def sign_event(
    pdu: Mapping[str, Any],
    signing_key: nacl.signing.SigningKey,
    server_name: str,
    key_id: str,
    room_version: RoomVersion,
) -> dict[str, Any]:
    """Hash and sign an outgoing event; returns the full event, ``pdu`` is untouched.

    Sets ``hashes.sha256`` to the content hash, signs the redacted copy (so
    a redacted copy still verifies) and merges that signature into the
    event's ``signatures``. Do not pass an ``event_id`` for v3+ rooms: it
    would be signed and hashed, changing the ID other servers compute.
    """
    event = dict(pdu)
    existing_hashes = event.get("hashes")
    hashes = dict(existing_hashes) if isinstance(existing_hashes, Mapping) else {}
    hashes["sha256"] = encode_base64(compute_content_hash(event))
    event["hashes"] = hashes
    signed_redacted = sign_json(redact(event, room_version), signing_key, server_name, key_id)
    event["signatures"] = signed_redacted["signatures"]
    return event


def sign_new_event(
    pdu: Mapping[str, Any],
    signing_key: nacl.signing.SigningKey,
    server_name: str,
    key_id: str,
    room_version: RoomVersion,
) -> tuple[dict[str, Any], bytes]:
    """:func:`sign_event` for an event built here in a room of version 6 or later, and the
    bytes it signed, encoded once.

    ``pdu`` must have passed :func:`~matrix_protocol.canonical_json.validate_canonical_json`
    and carry no ``signatures`` yet. The bytes signed (the redacted event without
    ``signatures`` and ``unsigned``) are then also its reference JSON
    (:func:`~matrix_protocol.hashes.reference_json`), from which a v3+ event ID is hashed.
    """
    if not room_version.strict_canonical_json or "signatures" in pdu:
        raise ValueError("sign_new_event takes an unsigned event of room version 6 or later")
    if not is_valid_key_id(key_id):
        raise ValueError(f"invalid key ID {key_id!r}")
    event = dict(pdu)
    existing_hashes = event.get("hashes")
    hashes = dict(existing_hashes) if isinstance(existing_hashes, Mapping) else {}
    hashes["sha256"] = encode_base64(compute_content_hash(event, validated=True))
    event["hashes"] = hashes
    redacted = redact(event, room_version)
    payload = encode_validated_canonical_json(
        {key: value for key, value in redacted.items() if key not in _NOT_SIGNED}
    )
    signature = signing_key.sign(payload).signature
    event["signatures"] = {server_name: {key_id: encode_base64(signature)}}
    return event, payload


def signatures_required_for_event(event: Event) -> set[str]:
    """The servers whose signatures a received event needs.

    Spec: https://spec.matrix.org/v1.19/server-server-api/#validating-hashes-and-signatures-on-received-events

    * the sender's server, except for an invite carrying
      ``third_party_invite``: any server may send those on behalf of the
      3PID invite's issuer, whose token signature the auth rules check;
    * v1/v2: the server of the ``event_id`` too;
    * v8+: for a join with ``join_authorised_via_users_server``, that
      user's server.

    The result is empty for a v3+ third-party invite. Check only the
    :func:`verifiable_key_ids` of each server.
    Raises :class:`ValueError` if an ID involved has no server part.
    """
    servers: set[str] = set()
    content = event.content
    is_third_party_invite = (
        event.type == "m.room.member"
        and content.get("membership") == "invite"
        and "third_party_invite" in content
    )
    if not is_third_party_invite:
        servers.add(server_name_of(event.sender))
    if not event.room_version.event_ids_are_computed:
        servers.add(server_name_of(event.event_id))
    authorising_user = content.get("join_authorised_via_users_server")
    if (
        event.room_version.restricted_join_rule
        and event.type == "m.room.member"
        and content.get("membership") == "join"
        and isinstance(authorising_user, str)
    ):
        servers.add(server_name_of(authorising_user))
    return servers
