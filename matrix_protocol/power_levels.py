"""Power levels: parsing values per room version and looking levels up.

Spec: the power-level value formats of each room version ("Event format" of
https://spec.matrix.org/v1.19/rooms/v10/ on: integers only),
https://spec.matrix.org/v1.19/server-server-api/#definitions and
https://spec.matrix.org/v1.19/client-server-api/#mroompower_levels

* v1–v5 accept integers, integer strings (base 10, optional sign, leading
  zeros and surrounding whitespace) and floats (truncated towards zero;
  NaN/±Infinity are invalid).
* v6–v9 accept integers and integer strings (canonical JSON has no floats).
* v10+ accept integers only.
* v12: every room creator (create ``sender`` plus
  ``content.additional_creators``) has infinite power, whatever the power
  levels event says.

Lookups (:func:`user_power_level`, :func:`required_power_level`,
:func:`named_power_level`) treat a value that does not parse like a missing
key and fall back to the default. In v1–v9 the auth rules type-check only
``users``, so a power levels event with, say, ``"ban": "1e1"`` is accepted
there and its ``ban`` level is the default; from v10 every value is checked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from matrix_protocol.events import Event
from matrix_protocol.room_versions import RoomVersion

DEFAULT_POWER_LEVELS: Mapping[str, int] = {
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
}
"""The named levels and their defaults, used both when a key is missing and
when the room has no power levels event at all."""

NAMED_LEVELS: tuple[str, ...] = tuple(DEFAULT_POWER_LEVELS)

CREATOR_LEVEL_WITHOUT_POWER_LEVELS = 100

# Base-10 integer with optional sign; leading zeros and surrounding ASCII
# whitespace allowed. Stricter than int(), which also takes "1_0" and
# non-ASCII digits.
_INTEGER_STRING = re.compile(r"[ \t\n\r\f\v]*[+-]?[0-9]+[ \t\n\r\f\v]*")


class PowerLevelError(ValueError):
    """A power level value that the room version does not allow."""


def parse_power_level(value: object, room_version: RoomVersion) -> int:
    """The integer meaning of a power level ``value`` under ``room_version``.

    Raises :class:`PowerLevelError` for values the version does not accept.
    """
    if isinstance(value, bool):
        raise PowerLevelError(f"power level {value!r} is a boolean, not an integer")
    if isinstance(value, int):
        return value
    if room_version.integer_only_power_levels:
        raise PowerLevelError(f"power level {value!r} is not an integer")
    if isinstance(value, str):
        if _INTEGER_STRING.fullmatch(value) is None:
            raise PowerLevelError(f"power level {value!r} is not an integer string")
        return int(value.strip(" \t\n\r\f\v"))
    if isinstance(value, float) and not room_version.strict_canonical_json:
        if not math.isfinite(value):
            raise PowerLevelError(f"power level {value!r} is not finite")
        return int(value)
    raise PowerLevelError(f"power level {value!r} is not an integer")


def validate_power_levels_content(content: Mapping[str, Any], room_version: RoomVersion) -> None:
    """The type checks the auth rules make on a power levels event's content.

    Every version: ``users``, when present, is an object whose keys are
    valid (historical) user IDs and whose values parse under the room
    version. v10+ also: the named levels are integers and ``events`` /
    ``notifications`` are objects of integers. v1–v9 check nothing else
    (rooms v1 and v3 rule 10.1, v8 rule 9.1: only ``users`` is
    type-checked), so a named level or an ``events`` value that is not a
    number is accepted there; the lookups then treat it as missing. Raises
    :class:`PowerLevelError`.
    """
    from matrix_protocol.server_names import is_valid_user_id

    maps = ["users"]
    if room_version.integer_only_power_levels:
        for name in NAMED_LEVELS:
            if name in content:
                parse_power_level(content[name], room_version)
        maps += ["events", "notifications"]
    for key in maps:
        if key not in content:
            continue
        mapping = content[key]
        if not isinstance(mapping, Mapping):
            raise PowerLevelError(f"power levels {key!r} is not an object")
        for name, value in mapping.items():
            if key == "users" and not (isinstance(name, str) and is_valid_user_id(name)):
                raise PowerLevelError(f"power levels 'users' key {name!r} is not a user ID")
            parse_power_level(value, room_version)


def room_creators(create_event: Event) -> frozenset[str]:
    """The room's creators as the version defines them.

    v1–v10: ``content.creator``; v11: the create ``sender``; v12: the
    ``sender`` plus every string in ``content.additional_creators``.
    """
    version = create_event.room_version
    if not version.creator_is_sender:
        creator = create_event.content.get("creator")
        return frozenset([creator]) if isinstance(creator, str) else frozenset()
    creators = {create_event.sender}
    if version.privileged_creators:
        additional = create_event.content.get("additional_creators")
        if isinstance(additional, list):
            creators.update(user for user in additional if isinstance(user, str))
    return frozenset(creators)


def _lookup(mapping: object, key: str, default: int, room_version: RoomVersion) -> int:
    if not isinstance(mapping, Mapping) or key not in mapping:
        return default
    try:
        return parse_power_level(mapping[key], room_version)
    except PowerLevelError:
        return default


def named_power_level(name: str, power_levels_event: Event | None) -> int:
    """One of :data:`NAMED_LEVELS` (``invite``, ``kick``, ``ban`` …), defaulted."""
    default = DEFAULT_POWER_LEVELS[name]
    if power_levels_event is None:
        return default
    return _lookup(power_levels_event.content, name, default, power_levels_event.room_version)


def user_power_level(
    user_id: str, power_levels_event: Event | None, create_event: Event
) -> int | float:
    """The power level of ``user_id``; ``math.inf`` for v12 creators."""
    creators = room_creators(create_event)
    if create_event.room_version.privileged_creators and user_id in creators:
        return math.inf
    if power_levels_event is None:
        return CREATOR_LEVEL_WITHOUT_POWER_LEVELS if user_id in creators else 0
    users_default = named_power_level("users_default", power_levels_event)
    return _lookup(
        power_levels_event.content.get("users"),
        user_id,
        users_default,
        power_levels_event.room_version,
    )


def required_power_level(event_type: str, is_state: bool, power_levels_event: Event | None) -> int:
    """The level needed to send ``event_type``: ``events[type]``, else the
    ``state_default`` / ``events_default`` level."""
    default = named_power_level(
        "state_default" if is_state else "events_default", power_levels_event
    )
    if power_levels_event is None:
        return default
    return _lookup(
        power_levels_event.content.get("events"),
        event_type,
        default,
        power_levels_event.room_version,
    )
