"""State resolution: merge the room states of several DAG branches into one.

Spec: https://spec.matrix.org/v1.19/server-server-api/#room-state-resolution (when to resolve),
https://spec.matrix.org/v1.19/rooms/v2/#state-resolution (v2, room v2–v11), https://spec.matrix.org/v1.19/rooms/v12/#state-resolution
(v2.1) and https://spec.matrix.org/v1.19/rooms/v1/#state-resolution (v1). The algorithm is picked by
``RoomVersion.state_resolution``. Pure: no I/O.

The caller preloads ``events``. It must map the ID of:

* every event in every state set (unconflicted ones too: their auth chains
  decide the v2 auth difference, and v1 / the auth checks read them), and
* every event of the auth chain of each of those (recursively through
  ``auth_events``; in room v12 this includes the create event
  ``"$" + room_id[1:]``, an implicit auth event of every other event).

Room v1 needs less (the conflicted events and the unconflicted events at the
keys their auth rules read), but the same preload is always enough. Events
that are looked up and absent raise :class:`MissingEventError` carrying the
ID, so a caller can fetch it and retry. Nothing iterates over ``events``,
so its order never matters.

``rejected`` holds the IDs of events this server rejected: they are never
used as auth events in the auth checks (the events themselves are still
resolved normally, as https://spec.matrix.org/v1.19/rooms/v2/#rejected-events asks).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from matrix_protocol.events import Event, StateKey
from matrix_protocol.room_versions import RoomVersion, StateResolution
from matrix_protocol.state_resolution import v1, v2
from matrix_protocol.state_resolution.v2 import (
    MissingEventError,
    auth_chain,
    iterative_auth_checks,
)

__all__ = ["MissingEventError", "auth_chain", "iterative_auth_checks", "resolve_state"]


def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    events: Mapping[str, Event],
    *,
    rejected: Collection[str] = (),
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` (each ``(type, state_key) → event_id``) into one.

    No state sets give ``{}``; a single one is returned as a copy; when
    nothing conflicts the result is the unconflicted map without touching
    ``events``. Raises :class:`MissingEventError` (a ``KeyError``) when an
    event needed is not in ``events`` (see the module docstring).
    """
    if not state_sets:
        return {}
    if len(state_sets) == 1:
        return dict(state_sets[0])
    if room_version.state_resolution is StateResolution.V1:
        return v1.resolve(room_version, state_sets, events, rejected)
    return v2.resolve(room_version, state_sets, events, rejected)
