"""Room versions 1–12 and the rule switches that distinguish them.

Spec: https://spec.matrix.org/v1.19/rooms/ (and each version's page). Every other module of the
protocol core asks a :class:`RoomVersion` what to do instead of comparing
version strings, so adding a version means adding one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class EventFormat(Enum):
    """How events are shaped on the wire and how their IDs are made."""

    V1 = 1  # event_id on the wire; prev/auth events are [id, {hash}] pairs
    V2 = 2  # room v3: computed ids, standard base64
    V3 = 3  # room v4+: computed ids, URL-safe base64


class StateResolution(Enum):
    V1 = 1
    V2 = 2
    V2_1 = 3  # room v12: empty start map plus the conflicted state subgraph


class RedactionRules(Enum):
    """Which redaction algorithm a version uses ("Redactions" of each room version)."""

    V1 = 1  # v1–v5: aliases kept
    V6 = 6  # v6, v7: aliases dropped
    V8 = 8  # v8: join_rules `allow` kept
    V9 = 9  # v9, v10: member `join_authorised_via_users_server` kept
    V11 = 11  # v11, v12: new top-level keys, create keeps all, PL keeps invite


@dataclass(frozen=True)
class RoomVersion:
    identifier: str
    event_format: EventFormat
    state_resolution: StateResolution
    redaction_rules: RedactionRules
    # Auth rule switches.
    special_case_aliases_auth: bool  # v1–v5: m.room.aliases auth rule
    redaction_auth_rule: bool  # v1–v2: rule 11 compares event_id domains
    strict_canonical_json: bool  # v6+
    enforce_key_validity: bool  # v5+: key valid at origin_server_ts, 7-day cap
    limit_notifications_power_levels: bool  # v6+
    knock_join_rule: bool  # v7+
    restricted_join_rule: bool  # v8+
    restricted_join_rule_fix: bool  # v9+: redaction keeps join_authorised_via
    knock_restricted_join_rule: bool  # v10+
    integer_only_power_levels: bool  # v10+
    creator_is_sender: bool  # v11+: no content.creator, sender is creator
    redacts_in_content: bool  # v11+: m.room.redaction `redacts` lives in content
    room_id_from_create_event: bool  # v12: room id = ! + create event hash
    privileged_creators: bool  # v12: creators have infinite power
    max_depth: int

    @property
    def event_ids_are_computed(self) -> bool:
        return self.event_format is not EventFormat.V1

    @property
    def create_event_in_auth_events(self) -> bool:
        return not self.room_id_from_create_event


_MAX_DEPTH_V1 = 2**63 - 1
_MAX_DEPTH_V6 = 2**53 - 1


def _version(
    identifier: str,
    event_format: EventFormat,
    state_resolution: StateResolution,
    redaction_rules: RedactionRules,
    number: int,
) -> RoomVersion:
    return RoomVersion(
        identifier=identifier,
        event_format=event_format,
        state_resolution=state_resolution,
        redaction_rules=redaction_rules,
        special_case_aliases_auth=number <= 5,
        redaction_auth_rule=number <= 2,
        strict_canonical_json=number >= 6,
        enforce_key_validity=number >= 5,
        limit_notifications_power_levels=number >= 6,
        knock_join_rule=number >= 7,
        restricted_join_rule=number >= 8,
        restricted_join_rule_fix=number >= 9,
        knock_restricted_join_rule=number >= 10,
        integer_only_power_levels=number >= 10,
        creator_is_sender=number >= 11,
        redacts_in_content=number >= 11,
        room_id_from_create_event=number >= 12,
        privileged_creators=number >= 12,
        max_depth=_MAX_DEPTH_V6 if number >= 6 else _MAX_DEPTH_V1,
    )


_V1, _V2, _V3 = EventFormat.V1, EventFormat.V2, EventFormat.V3
_SR1, _SR2, _SR21 = StateResolution.V1, StateResolution.V2, StateResolution.V2_1
_R = RedactionRules

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    v.identifier: v
    for v in (
        _version("1", _V1, _SR1, _R.V1, 1),
        _version("2", _V1, _SR2, _R.V1, 2),
        _version("3", _V2, _SR2, _R.V1, 3),
        _version("4", _V3, _SR2, _R.V1, 4),
        _version("5", _V3, _SR2, _R.V1, 5),
        _version("6", _V3, _SR2, _R.V6, 6),
        _version("7", _V3, _SR2, _R.V6, 7),
        _version("8", _V3, _SR2, _R.V8, 8),
        _version("9", _V3, _SR2, _R.V9, 9),
        _version("10", _V3, _SR2, _R.V9, 10),
        _version("11", _V3, _SR2, _R.V11, 11),
        _version("12", _V3, _SR21, _R.V11, 12),
    )
}

DEFAULT_ROOM_VERSION = "12"


class UnsupportedRoomVersion(ValueError):
    def __init__(self, identifier: object) -> None:
        super().__init__(f"unsupported room version {identifier!r}")
        self.identifier = identifier


def room_version(identifier: str) -> RoomVersion:
    """The rules of ``identifier``; raises :class:`UnsupportedRoomVersion`."""
    try:
        return KNOWN_ROOM_VERSIONS[identifier]
    except (KeyError, TypeError):
        raise UnsupportedRoomVersion(identifier) from None
