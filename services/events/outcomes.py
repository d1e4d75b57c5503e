"""What happened to one event on its way in: stored how, or why not.

Every input path (received, fetched, built here, a join's state) answers
with an :class:`Outcome` per event: the status it is stored with (the
``EventStatus`` of the gRPC API), or that it was not stored, and a
:class:`Reason` for anything other than plain acceptance. Decisions are
taken on the reason; ``error`` is the human text for answers and logs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from services.events.storage import Status


class Reason(enum.Enum):
    """Why an event was not stored, rejected or soft-failed."""

    # Steps 1 and 2 of the checks on receipt (dropped).
    INVALID_FORMAT = "invalid_format"
    INVALID_SIGNATURE = "invalid_signature"
    # /send only: the sender's server must be the transaction's origin, and
    # the room's server ACL must allow the origin.
    NOT_FROM_ORIGIN = "not_from_origin"
    DENIED_BY_SERVER_ACL = "denied_by_server_acl"
    # The operator blocked the room (mxfed room block / shutdown): dropped.
    ROOM_BLOCKED = "room_blocked"
    # Not stored: the event cannot be checked yet.
    MISSING_PREV_EVENTS = "missing_prev_events"
    MISSING_AUTH_EVENTS = "missing_auth_events"
    NO_STATE_AT_PREV_EVENTS = "no_state_at_prev_events"
    UNUSABLE_STATE_BEFORE = "unusable_state_before"
    STATE_RESOLUTION_INCOMPLETE = "state_resolution_incomplete"
    # Rejected: step 4 (its own auth events) and step 5 (the state before it).
    AUTH_EVENTS_DISALLOW = "auth_events_disallow"
    STATE_BEFORE_DISALLOWS = "state_before_disallows"
    # Soft failed (step 6): the room's current state no longer allows it.
    CURRENT_STATE_DISALLOWS = "current_state_disallows"
    # Soft failed (step 7): the room uses a policy server and the event lacks
    # its valid signature (ours: refused, never sent).
    POLICY_SIGNATURE_MISSING = "policy_signature_missing"
    POLICY_SIGNATURE_INVALID = "policy_signature_invalid"
    # Soft failed: the operator blocks the sender's server (mxfed servers block).
    SERVER_BLOCKED = "server_blocked"


@dataclass(frozen=True)
class Outcome:
    """What happened to one event.

    ``status``: as stored by this call (None: not stored, see ``reason``);
    ``already_stored``: nothing to do, the event was stored before.
    """

    event_id: str
    status: Status | None
    reason: Reason | None = None
    error: str = ""
    already_stored: bool = False

    @classmethod
    def duplicate(cls, event_id: str) -> Outcome:
        return cls(event_id, None, already_stored=True)

    @classmethod
    def refused(cls, event_id: str, reason: Reason, error: str) -> Outcome:
        """Not stored."""
        return cls(event_id, None, reason, error)

    @property
    def label(self) -> str:
        """The metrics label: the status stored, ``duplicate`` or ``error``."""
        if self.already_stored:
            return "duplicate"
        if self.status is None:
            return "error"
        return self.status.name.lower()
