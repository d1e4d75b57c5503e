"""Build rooms of any version event by event for protocol tests.

``RoomBuilder(room_version).create(...)`` starts a room; every other method
builds one well-formed PDU (real content hash, fake signatures), wraps it in
an :class:`Event` and, unless ``apply=False``, adds it to the builder's
current state and makes it the only forward extremity (or replaces the prevs
it names). Event IDs are ``$<n>:<server>`` in v1/v2 and computed (reference
hash) from v3 on; v12 room IDs are derived from the create event.

``auth`` / ``prev`` take events or event IDs; by default ``auth`` is selected
from the current state
(https://spec.matrix.org/v1.19/server-server-api/#auth-events-selection)
and ``prev`` is the forward extremities.
Timestamps come from a global counter so that identical calls in different
builders still give distinct events.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from matrix_protocol.auth_events import select_auth_event_ids
from matrix_protocol.encoding import encode_base64
from matrix_protocol.events import Event, StateKey, server_of
from matrix_protocol.hashes import compute_content_hash
from matrix_protocol.room_versions import EventFormat, RoomVersion, room_version

_COUNTER = itertools.count(1)
BASE_TS = 1_700_000_000_000

EventRef = Event | str


def _ids(refs: Iterable[EventRef]) -> list[str]:
    return [ref.event_id if isinstance(ref, Event) else ref for ref in refs]


class RoomBuilder:
    def __init__(self, version: str | RoomVersion = "12", *, server: str = "test") -> None:
        self.room_version = room_version(version) if isinstance(version, str) else version
        self.server = server
        n = next(_COUNTER)
        self.room_id: str | None = (
            None if self.room_version.room_id_from_create_event else f"!room{n}:{server}"
        )
        self.state: dict[StateKey, Event] = {}
        self.events: dict[str, Event] = {}
        self.extremities: list[str] = []
        self.creator: str | None = None

    # Lookups ----------------------------------------------------------------

    @property
    def create_event(self) -> Event:
        return self.state[("m.room.create", "")]

    def state_ids(self) -> dict[StateKey, str]:
        return {key: event.event_id for key, event in self.state.items()}

    def auth_events_of(self, event: Event) -> list[Event]:
        """The events ``event`` lists in ``auth_events`` (v12: without the create)."""
        return [self.events[event_id] for event_id in event.auth_event_ids]

    def auth_state_of(self, event: Event) -> dict[StateKey, Event]:
        """``event``'s auth events as a state map, v12's implied create included."""
        auth_state = {e.state_tuple: e for e in self.auth_events_of(event)}
        if event.type != "m.room.create" and not self.room_version.create_event_in_auth_events:
            auth_state[("m.room.create", "")] = self.create_event
        return auth_state

    # Building ---------------------------------------------------------------

    def event(
        self,
        event_type: str,
        sender: str,
        state_key: str | None = None,
        content: Mapping[str, Any] | None = None,
        *,
        auth: Iterable[EventRef] | None = None,
        prev: Iterable[EventRef] | None = None,
        ts: int | None = None,
        extra: Mapping[str, Any] | None = None,
        apply: bool = True,
    ) -> Event:
        """Build any event; ``extra`` adds or overrides top-level PDU keys."""
        version = self.room_version
        content = dict(content or {})
        if auth is None:
            auth_ids = select_auth_event_ids(
                event_type, sender, state_key, content, version, self.state_ids()
            )
        else:
            auth_ids = _ids(auth)
        prev_ids = list(self.extremities) if prev is None else _ids(prev)
        depth = max((self.events[p].depth for p in prev_ids if p in self.events), default=0) + 1
        n = next(_COUNTER)
        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": content,
            "depth": depth,
            "origin_server_ts": BASE_TS + n if ts is None else ts,
        }
        if self.room_id is not None:
            pdu["room_id"] = self.room_id
        if state_key is not None:
            pdu["state_key"] = state_key
        if version.event_format is EventFormat.V1:
            pdu["event_id"] = f"${n}:{self.server}"
            pdu["prev_events"] = [[i, {"sha256": "fakehash"}] for i in prev_ids]
            pdu["auth_events"] = [[i, {"sha256": "fakehash"}] for i in auth_ids]
        else:
            pdu["prev_events"] = prev_ids
            pdu["auth_events"] = auth_ids
        pdu.update(extra or {})
        pdu["hashes"] = {"sha256": encode_base64(compute_content_hash(pdu))}
        pdu["signatures"] = {server_of(sender): {"ed25519:test": "fakesignature"}}
        event = Event.from_pdu(pdu, version)
        self.events[event.event_id] = event
        if apply:
            self.apply(event)
        return event

    def apply(self, event: Event) -> None:
        """Make ``event`` part of the current state and the DAG's head."""
        if event.is_state:
            self.state[event.state_tuple] = event
        self.extremities = [e for e in self.extremities if e not in event.prev_event_ids]
        self.extremities.append(event.event_id)

    def create(
        self,
        creator: str = "@creator:test",
        *,
        content: Mapping[str, Any] | None = None,
        additional_creators: list[str] | None = None,
        **kwargs: Any,
    ) -> Event:
        version = self.room_version
        if content is None:
            content = {"room_version": version.identifier}
            if not version.creator_is_sender:
                content["creator"] = creator
            if additional_creators is not None:
                content["additional_creators"] = additional_creators
        kwargs.setdefault("auth", [])
        kwargs.setdefault("prev", [])
        event = self.event("m.room.create", creator, "", content, **kwargs)
        if kwargs.get("apply", True):
            self.room_id = event.room_id
            self.creator = creator
        return event

    def member(
        self,
        user: str,
        membership: str,
        *,
        sender: str | None = None,
        content: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Event:
        full_content = {"membership": membership, **(content or {})}
        return self.event("m.room.member", sender or user, user, full_content, **kwargs)

    def join(self, user: str, **kwargs: Any) -> Event:
        return self.member(user, "join", **kwargs)

    def invite(self, sender: str, target: str, **kwargs: Any) -> Event:
        return self.member(target, "invite", sender=sender, **kwargs)

    def leave(self, user: str, **kwargs: Any) -> Event:
        return self.member(user, "leave", **kwargs)

    def ban(self, sender: str, target: str, **kwargs: Any) -> Event:
        return self.member(target, "ban", sender=sender, **kwargs)

    def knock(self, user: str, **kwargs: Any) -> Event:
        return self.member(user, "knock", **kwargs)

    def power_levels(
        self,
        sender: str | None = None,
        *,
        users: Mapping[str, Any] | None = None,
        content: Mapping[str, Any] | None = None,
        auth: Iterable[EventRef] | None = None,
        prev: Iterable[EventRef] | None = None,
        apply: bool = True,
        **levels: Any,
    ) -> Event:
        """A PL event; by default the creator (pre-v12) has 100, ``levels`` add keys."""
        sender = sender or self._creator()
        if content is None:
            if users is None:
                users = {} if self.room_version.privileged_creators else {self._creator(): 100}
            content = {"users": dict(users), **levels}
        return self.event(
            "m.room.power_levels", sender, "", content, auth=auth, prev=prev, apply=apply
        )

    def join_rules(self, join_rule: str, sender: str | None = None, **kwargs: Any) -> Event:
        content = {"join_rule": join_rule, **kwargs.pop("content", {})}
        return self.event("m.room.join_rules", sender or self._creator(), "", content, **kwargs)

    def _creator(self) -> str:
        if self.creator is None:
            raise RuntimeError("call create() first")
        return self.creator
