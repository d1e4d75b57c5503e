"""Verifying the ``signed`` block of a third-party invite.

Spec: https://spec.matrix.org/v1.19/rooms/v12/#authorisation-rules (``m.room.member``, invite with
``third_party_invite``) and https://spec.matrix.org/v1.19/server-server-api/#verifying-the-invite
An ``m.room.member`` invite carrying ``content.third_party_invite`` is allowed
when any signature in ``third_party_invite.signed`` verifies (Signing JSON)
with any public key of the room's ``m.room.third_party_invite`` event:
``content.public_key`` or any ``content.public_keys[].public_key``. The keys
are unpadded base64 in the standard or the URL-safe alphabet. Checking
``key_validity_url`` (revocation) needs I/O and is left to the caller.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator, Mapping
from typing import Any

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from matrix_protocol.encoding import decode_base64
from matrix_protocol.events import Event
from matrix_protocol.signing import SignatureError, verify_json_signature


def third_party_invite_public_keys(third_party_invite_event: Event) -> list[str]:
    """The base64 public keys an ``m.room.third_party_invite`` event offers."""
    content = third_party_invite_event.content
    keys: list[str] = []
    public_key = content.get("public_key")
    if isinstance(public_key, str):
        keys.append(public_key)
    public_keys = content.get("public_keys")
    if isinstance(public_keys, list):
        for entry in public_keys:
            if isinstance(entry, Mapping) and isinstance(entry.get("public_key"), str):
                keys.append(entry["public_key"])
    return keys


def _verify_keys(encoded_keys: list[str]) -> Iterator[VerifyKey]:
    for encoded in encoded_keys:
        try:
            yield VerifyKey(decode_base64(encoded))
        except (ValueError, TypeError, binascii.Error, CryptoError):
            continue


def _signatures(signed: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    signatures = signed.get("signatures")
    if not isinstance(signatures, Mapping):
        return
    for server_name, by_key in signatures.items():
        if isinstance(server_name, str) and isinstance(by_key, Mapping):
            for key_id, signature in by_key.items():
                if isinstance(key_id, str) and isinstance(signature, str):
                    yield server_name, key_id


def verify_third_party_invite_signed(
    signed: Mapping[str, Any], third_party_invite_event: Event
) -> bool:
    """True iff some signature in ``signed`` verifies with some key of the event."""
    if not isinstance(signed, Mapping):
        return False
    signatures = list(_signatures(signed))
    for verify_key in _verify_keys(third_party_invite_public_keys(third_party_invite_event)):
        for server_name, key_id in signatures:
            try:
                verify_json_signature(signed, server_name, key_id, verify_key)
            except SignatureError:
                continue
            return True
    return False
