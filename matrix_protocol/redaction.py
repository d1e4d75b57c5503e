"""The redaction algorithm of every room version.

Spec: "Redactions" of each room version (https://spec.matrix.org/v1.19/rooms/v1/#redactions …
https://spec.matrix.org/v1.19/rooms/v11/#redactions) and https://spec.matrix.org/v1.19/client-server-api/#redactions

The redacted form is what event signatures and reference hashes (event IDs) are
computed over, so it must match other servers byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matrix_protocol.room_versions import RedactionRules, RoomVersion

_TOP_LEVEL_KEYS_V1 = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "prev_state",
        "auth_events",
        "origin",
        "origin_server_ts",
        "membership",
    }
)
_TOP_LEVEL_KEYS_V11 = _TOP_LEVEL_KEYS_V1 - {"origin", "membership", "prev_state"}

_POWER_LEVEL_KEYS_V1 = (
    "ban",
    "events",
    "events_default",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
)

_R = RedactionRules

# Content keys kept per event type, by redaction rules ("Redactions" of each room version).
# m.room.create under v11 keeps everything and m.room.member's
# third_party_invite is reduced rather than kept; both are handled in code.
_CONTENT_KEYS: dict[RedactionRules, dict[str, tuple[str, ...]]] = {
    _R.V1: {
        "m.room.member": ("membership",),
        "m.room.create": ("creator",),
        "m.room.join_rules": ("join_rule",),
        "m.room.power_levels": _POWER_LEVEL_KEYS_V1,
        "m.room.aliases": ("aliases",),
        "m.room.history_visibility": ("history_visibility",),
    },
    _R.V6: {
        "m.room.member": ("membership",),
        "m.room.create": ("creator",),
        "m.room.join_rules": ("join_rule",),
        "m.room.power_levels": _POWER_LEVEL_KEYS_V1,
        "m.room.history_visibility": ("history_visibility",),
    },
    _R.V8: {
        "m.room.member": ("membership",),
        "m.room.create": ("creator",),
        "m.room.join_rules": ("join_rule", "allow"),
        "m.room.power_levels": _POWER_LEVEL_KEYS_V1,
        "m.room.history_visibility": ("history_visibility",),
    },
    _R.V9: {
        "m.room.member": ("membership", "join_authorised_via_users_server"),
        "m.room.create": ("creator",),
        "m.room.join_rules": ("join_rule", "allow"),
        "m.room.power_levels": _POWER_LEVEL_KEYS_V1,
        "m.room.history_visibility": ("history_visibility",),
    },
    _R.V11: {
        "m.room.member": ("membership", "join_authorised_via_users_server"),
        "m.room.join_rules": ("join_rule", "allow"),
        "m.room.power_levels": (*_POWER_LEVEL_KEYS_V1, "invite"),
        "m.room.history_visibility": ("history_visibility",),
        "m.room.redaction": ("redacts",),
    },
}


def _redact_content(event_type: Any, content: Any, rules: RedactionRules) -> dict[str, Any]:
    if not isinstance(content, Mapping):
        return {}
    if rules is _R.V11 and event_type == "m.room.create":
        return dict(content)
    kept = _CONTENT_KEYS[rules].get(event_type, ()) if isinstance(event_type, str) else ()
    new_content = {key: content[key] for key in kept if key in content}
    if rules is _R.V11 and event_type == "m.room.member":
        third_party_invite = content.get("third_party_invite")
        # Only the signed part is needed to re-check the invite's auth; a
        # non-object value has nothing to keep.
        if isinstance(third_party_invite, Mapping):
            new_content["third_party_invite"] = (
                {"signed": third_party_invite["signed"]} if "signed" in third_party_invite else {}
            )
    return new_content


def redact(pdu: Mapping[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """The redacted copy of ``pdu`` under ``room_version``'s rules.

    Returns a new top-level dict and a new ``content`` dict; other nested
    values (``hashes``, ``signatures``, kept content values, …) are shared
    with ``pdu``, so treat the result as read-only or copy it. ``content`` is
    always present in the result, as ``{}`` when the event had none (or a
    non-object one), like other implementations do. ``unsigned`` is dropped:
    it is not part of the redacted form that hashes and signatures cover.
    """
    rules = room_version.redaction_rules
    top_level_keys = _TOP_LEVEL_KEYS_V11 if rules is _R.V11 else _TOP_LEVEL_KEYS_V1
    redacted = {key: value for key, value in pdu.items() if key in top_level_keys}
    redacted["content"] = _redact_content(pdu.get("type"), pdu.get("content"), rules)
    return redacted
