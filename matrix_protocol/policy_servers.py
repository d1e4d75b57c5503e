"""Policy servers: which one a room uses, which events it must sign, and its signatures.

Spec: https://spec.matrix.org/v1.19/server-server-api/#policy-servers
("Determining if a Policy Server is enabled in a room", "Validating Policy
Server signatures", "Asking for a Policy Server signature on an event") and
the ``m.room.policy`` state event of the client-server API
(https://spec.matrix.org/v1.19/client-server-api/#mroompolicy).

A room uses a policy server when its current state holds a valid
``m.room.policy`` event with an empty state key (a string ``via`` and a
``public_keys`` object with a string ``ed25519``) and the ``via`` server has
a joined member in that state; the membership half needs the room's state
and is the caller's to check. Every event but that ``m.room.policy`` state
event itself needs the policy server's signature, made with the key from the
state event under the key ID ``ed25519:policy_server`` and the server name
``via``, over the redacted event like any event signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nacl.signing

from matrix_protocol.events import Event
from matrix_protocol.redaction import redact
from matrix_protocol.server_names import is_valid_server_name
from matrix_protocol.signing import (
    POLICY_SERVER_KEY_ID,
    SignatureError,
    decode_verify_key,
    verify_json_signature,
)

POLICY_EVENT_TYPE = "m.room.policy"
POLICY_STATE_KEY = (POLICY_EVENT_TYPE, "")


@dataclass(frozen=True)
class PolicyServer:
    """The policy server an ``m.room.policy`` state event names, and its verify key."""

    via: str
    ed25519: str  # unpadded base64, as in the state event

    @property
    def verify_key(self) -> nacl.signing.VerifyKey:
        return decode_verify_key(self.ed25519)


def policy_server_from_content(content: Mapping[str, Any]) -> PolicyServer | None:
    """The policy server a valid ``m.room.policy`` content names, else None.

    Valid: ``via`` a string (and a server name, else nobody could be asked),
    ``public_keys`` an object whose ``ed25519`` is a string holding an
    ed25519 public key. Anything else means the room uses no policy server.
    """
    via = content.get("via")
    keys = content.get("public_keys")
    if not isinstance(via, str) or not is_valid_server_name(via):
        return None
    if not isinstance(keys, Mapping) or not isinstance(keys.get("ed25519"), str):
        return None
    try:
        decode_verify_key(keys["ed25519"])
    except SignatureError:
        return None
    return PolicyServer(via, keys["ed25519"])


def needs_policy_signature(event_type: str, state_key: str | None) -> bool:
    """Everything but the ``m.room.policy`` state event with an empty state key.

    That one is never sent to the policy server nor checked for its
    signature, so a room can always change or clear its policy server;
    non-state ``m.room.policy`` events and other state keys are checked.
    """
    return not (event_type == POLICY_EVENT_TYPE and state_key == "")


def has_valid_policy_signature(event: Event, policy: PolicyServer) -> bool:
    """Whether ``event`` carries a valid signature of ``policy`` (its key from room state)."""
    try:
        verify_json_signature(
            redact(event.pdu, event.room_version),
            policy.via,
            POLICY_SERVER_KEY_ID,
            policy.verify_key,
        )
    except (SignatureError, ValueError, TypeError):
        return False
    return True


def with_policy_signature(
    pdu: Mapping[str, Any], answer: Any, policy: PolicyServer
) -> dict[str, Any] | None:
    """``pdu`` with the signature from a ``/sign`` answer merged in, or None if it has none.

    Only ``answer[via]["ed25519:policy_server"]`` is taken; the event's other
    signatures are kept (the policy server may be the sender's own server and
    answer with its policy signature only).
    """
    if not isinstance(answer, Mapping):
        return None
    by_key = answer.get(policy.via)
    signature = by_key.get(POLICY_SERVER_KEY_ID) if isinstance(by_key, Mapping) else None
    if not isinstance(signature, str):
        return None
    existing = pdu.get("signatures")
    signatures = (
        {name: dict(keys) for name, keys in existing.items() if isinstance(keys, Mapping)}
        if isinstance(existing, Mapping)
        else {}
    )
    signatures.setdefault(policy.via, {})[POLICY_SERVER_KEY_ID] = signature
    merged = dict(pdu)
    merged["signatures"] = signatures
    return merged


__all__ = [
    "POLICY_EVENT_TYPE",
    "POLICY_SERVER_KEY_ID",
    "POLICY_STATE_KEY",
    "PolicyServer",
    "has_valid_policy_signature",
    "needs_policy_signature",
    "policy_server_from_content",
    "with_policy_signature",
]
