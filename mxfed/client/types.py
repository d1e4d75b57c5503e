"""What :mod:`mxfed.client` returns: plain typed values, no protobuf messages."""

from __future__ import annotations

import enum
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mxfed_api.events.v1 import events_pb2


class EventStatus(enum.Enum):
    """How an event is stored (the events service's ``EventStatus``)."""

    UNKNOWN = "unknown"
    ACCEPTED = "accepted"
    SOFT_FAILED = "soft_failed"  # stored, not part of the room (e.g. a policy server refused it)
    REJECTED = "rejected"
    OUTLIER = "outlier"


_STATUSES = {
    events_pb2.EVENT_STATUS_ACCEPTED: EventStatus.ACCEPTED,
    events_pb2.EVENT_STATUS_SOFT_FAILED: EventStatus.SOFT_FAILED,
    events_pb2.EVENT_STATUS_REJECTED: EventStatus.REJECTED,
    events_pb2.EVENT_STATUS_OUTLIER: EventStatus.OUTLIER,
}


@dataclass(frozen=True)
class Event:
    """A room event as stored: its federation JSON (``pdu``) and how it is stored."""

    event_id: str
    room_id: str
    room_version: str
    pdu: Mapping[str, Any]
    status: EventStatus
    stream_position: int = 0  # 0: outliers and backfilled history
    redacted: bool = False

    @classmethod
    def from_record(cls, record: events_pb2.EventRecord) -> Event:
        return cls(
            event_id=record.event_id,
            room_id=record.room_id,
            room_version=record.room_version,
            pdu=json.loads(record.pdu_json) if record.pdu_json else {},
            status=_STATUSES.get(record.status, EventStatus.UNKNOWN),
            stream_position=record.stream_position,
            redacted=record.redacted,
        )

    @property
    def type(self) -> str:
        return str(self.pdu.get("type", ""))

    @property
    def sender(self) -> str:
        return str(self.pdu.get("sender", ""))

    @property
    def state_key(self) -> str | None:
        value = self.pdu.get("state_key")
        return value if isinstance(value, str) else None

    @property
    def content(self) -> Mapping[str, Any]:
        content = self.pdu.get("content")
        return content if isinstance(content, Mapping) else {}

    @property
    def origin_server_ts(self) -> int:
        value = self.pdu.get("origin_server_ts")
        return value if isinstance(value, int) else 0

    @property
    def body(self) -> str | None:
        """``content.body`` when it is a string (messages)."""
        value = self.content.get("body")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Typing:
    room_id: str
    user_id: str
    typing: bool


@dataclass(frozen=True)
class Receipt:
    room_id: str
    user_id: str
    receipt_type: str
    event_id: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class StreamItem:
    """One item of the event stream: an event, or (with ``ephemeral``) typing or a receipt.

    ``position`` is durable: resuming after it later delivers what came next.
    """

    position: int
    event: Event | None = None
    typing: Typing | None = None
    receipt: Receipt | None = None
    # For an event accepted on a remote server's behalf (send_join...): that server.
    relayed_for: str = ""
    servers_before: tuple[str, ...] = ()


@dataclass(frozen=True)
class CreatedRoom:
    room_id: str
    room_alias: str | None


@dataclass(frozen=True)
class Sent:
    event_id: str
    room_id: str
    stream_position: int
    txn_id: str


@dataclass(frozen=True)
class Joined:
    room_id: str
    event_id: str
    remote: bool  # through a remote server's make_join/send_join


@dataclass(frozen=True)
class Knocked:
    room_id: str
    event_id: str
    stripped_state: list[Any]


@dataclass(frozen=True)
class Membership:
    """An invite or knock of a local user in a room we are not in (out of band)."""

    room_id: str
    user_id: str
    membership: str
    event_id: str
    sender: str
    via_server: str
    room_version: str
    stripped_state: list[Any]


@dataclass(frozen=True)
class RoomInfo:
    room_id: str
    exists: bool
    room_version: str
    we_are_joined: bool
    forward_extremities: tuple[str, ...]
    min_depth: int
    max_depth: int
    # Partial-state joins: "full_state", or the resync's "pending", "fetching",
    # "storing", "retrying"; members known and expected; failed attempts.
    resync_state: str = "full_state"
    members_known: int = 0
    members_expected: int = 0
    resync_attempts: int = 0
    resync_error: str = ""


@dataclass(frozen=True)
class Backfilled:
    """What one backfill fetched: events stored, from which server, who failed."""

    events_fetched: int
    server: str
    servers_failed: tuple[str, ...]
    events_refused: int  # dropped (format, signature) or not stored


@dataclass(frozen=True)
class ThirdPartyInvited:
    event_id: str  # of the m.room.third_party_invite state event
    token: str  # its state key
    display_name: str  # the redacted address the identity server chose


@dataclass(frozen=True)
class ToDeviceMessage:
    position: int
    sender: str
    type: str
    content: Mapping[str, Any]
    origin: str
    message_id: str
    received_ts: int


@dataclass(frozen=True)
class MediaInfo:
    found: bool
    uploaded: bool = False
    remote: bool = False
    content_type: str = ""
    content_disposition: str = ""
    upload_name: str = ""
    size: int = 0
    sha256: str = ""
    uploader: str = ""
    created_ts: int = 0


@dataclass(frozen=True)
class Uploaded:
    mxc_uri: str
    media_id: str
    size: int
    sha256: str
    content_type: str


@dataclass(frozen=True)
class PublicRooms:
    """A page of a public room directory, as the federation/client API writes it."""

    chunk: list[dict[str, Any]]
    next_batch: str = ""
    prev_batch: str = ""
    total_room_count_estimate: int = 0
    # The whole answer as JSON (``chunk`` and the tokens included).
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KeysUploaded:
    one_time_key_counts: dict[str, int]  # unclaimed one-time keys per algorithm
    stream_id: int  # the user's device-list stream id now


class FilePosition:
    """A stream position kept in a file, written atomically (a crash leaves the old or new one).

    Give it to :meth:`mxfed.client.Client.stream` (``position=``): the stream
    starts after the stored position and stores each item's position once
    the consumer asks for the next item, i.e. once the item was handled (a
    consumer that stops may ``save(item.position)`` itself). A process killed
    mid-item gets that item again after a restart, never one it had finished;
    send replies with a ``txn_id`` derived from the event (idempotent) and
    nothing is done twice.
    """

    def __init__(self, path: str | os.PathLike[str], default: int = -1) -> None:
        self.path = Path(path)
        self.default = default

    def load(self) -> int:
        try:
            return int(self.path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return self.default

    def save(self, position: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(handle, "w") as out:
                out.write(f"{position}\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


__all__ = [
    "Backfilled",
    "CreatedRoom",
    "Event",
    "EventStatus",
    "FilePosition",
    "Joined",
    "KeysUploaded",
    "Knocked",
    "MediaInfo",
    "Membership",
    "PublicRooms",
    "Receipt",
    "RoomInfo",
    "Sent",
    "StreamItem",
    "ThirdPartyInvited",
    "ToDeviceMessage",
    "Typing",
    "Uploaded",
]
