"""Inbound ``m.direct_to_device`` ("Send-to-device messaging"): per-device inboxes of local devices.

An EDU is accepted when its ``sender`` is a user of the origin server, its
``type`` a non-empty string, its ``message_id`` a string of 1-32 code points
and ``messages`` an object. Each accepted EDU is recorded under
``(origin, message_id)`` in the same database transaction as its messages,
so a message re-sent in another transaction (or replayed after a crash) is
stored once; records older than :data:`DEDUPE_RETENTION_MS` are pruned.

Targets: users of other servers are ignored (not a failure: Synapse would
fail the whole transaction with 400, which costs the sender every other EDU
and PDU in it); a content that is not an object is ignored. ``"*"`` is every
device the user has when the message arrives; a device also named
explicitly in the same EDU gets its explicit content only, so each device
receives at most one message per EDU. Messages for a device that does not
exist are dropped (and logged).

Positions are per device, handed out from ``to_device_streams`` under a row
lock held to commit (devices locked in sorted order, so concurrent inputs
cannot deadlock), so a device's messages become visible in position order
and a reader "after N" never misses one. Every commit that stores messages
NOTIFYs :data:`NOTIFY_CHANNEL` with the user id; :class:`ToDeviceHub` wakes
that user's followers, which read their device's inbox after their position
(and re-read every ``poll_interval`` seconds in case a notification was
lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from matrix_protocol.canonical_json import decode_json, encode_json
from mxfed.clock import now_ms
from mxfed.held_connection import HeldConnection
from mxfed.service_errors import BadRequest
from mxfed.waits import event_set_within
from services.accounts import storage
from services.accounts.validation import require_user, user_server

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "mxfed_keys_to_device"
MAX_MESSAGE_ID_LENGTH = 32  # code points
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEDUPE_RETENTION_MS = 30 * 24 * 3600 * 1000
PRUNE_EVERY = 100  # inputs between two prunes of old dedupe records
WILDCARD = "*"


@dataclass(frozen=True)
class StoredMessage:
    position: int
    sender: str
    type: str
    content_json: str
    origin: str
    message_id: str
    received_ts: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> StoredMessage:
        return cls(
            row["position"],
            row["sender"],
            row["type"],
            row["content_json"],
            row["origin"],
            row["message_id"],
            row["received_ts"],
        )


@dataclass
class InputOutcome:
    stored: int = 0
    duplicates: int = 0
    ignored: int = 0


@dataclass(frozen=True)
class _Edu:
    sender: str
    type: str
    message_id: str
    # user id → device id (or "*") → content
    messages: dict[str, dict[str, dict[str, Any]]]
    left_out: int  # targets dropped: not ours, malformed


def parse_edu(origin: str, content: Any, server_name: str) -> tuple[_Edu | None, int]:
    """The EDU with only its local, well-formed targets (or None when the EDU
    itself is invalid), and how many targets were left out."""
    if not isinstance(content, dict):
        return None, 0
    sender = content.get("sender")
    edu_type = content.get("type")
    message_id = content.get("message_id")
    messages = content.get("messages")
    if (
        not isinstance(sender, str)
        or user_server(sender) != origin
        or origin == server_name
        or not isinstance(edu_type, str)
        or not edu_type
        or not isinstance(message_id, str)
        or not 0 < len(message_id) <= MAX_MESSAGE_ID_LENGTH
        or not isinstance(messages, dict)
    ):
        return None, 0
    kept: dict[str, dict[str, dict[str, Any]]] = {}
    left_out = 0
    for user_id, by_device in messages.items():
        if user_server(user_id) != server_name or not isinstance(by_device, dict):
            left_out += len(by_device) if isinstance(by_device, dict) else 1
            continue
        devices = {}
        for device_id, message in by_device.items():
            if isinstance(message, dict) and device_id:
                devices[device_id] = message
            else:
                left_out += 1
        if devices:
            kept[user_id] = devices
    return _Edu(sender, edu_type, message_id, kept, left_out), left_out


class ToDeviceInbox:
    def __init__(self, pool: asyncpg.Pool, server_name: str) -> None:
        self.pool = pool
        self.server_name = server_name
        self._inputs = 0

    def require_local(self, user_id: str) -> None:
        if require_user(user_id) != self.server_name:
            raise BadRequest(f"{user_id} is not a user of this server")

    # ------------------------------------------------------------ input

    async def input_edus(self, origin: str, contents: Sequence[Any]) -> InputOutcome:
        """Store the messages of a transaction's m.direct_to_device contents
        (already decoded; None for one that was not JSON)."""
        outcome = InputOutcome()
        edus: list[_Edu] = []
        for content in contents:
            edu, _ = parse_edu(origin, content, self.server_name)
            if edu is None:
                outcome.ignored += 1
                log.info(
                    "to-device EDU ignored (malformed or sender not on origin)",
                    extra={"origin": origin},
                )
            else:
                edus.append(edu)
        if not edus:
            return outcome
        received = now_ms()
        async with self.pool.acquire() as conn, conn.transaction():
            fresh: list[_Edu] = []
            seen: set[str] = set()
            for edu in edus:
                new = edu.message_id not in seen and await storage.record_to_device_message_id(
                    conn, origin, edu.message_id, received
                )
                seen.add(edu.message_id)
                if new:
                    fresh.append(edu)
                    outcome.ignored += edu.left_out
                else:
                    outcome.duplicates += 1
            rows = await self._inbox_rows(conn, origin, fresh, outcome)
            if rows:
                await self._insert(conn, rows, received)
            outcome.stored = len(rows)
        self._inputs += 1
        if self._inputs % PRUNE_EVERY == 1:
            await self._prune_dedupe(received)
        return outcome

    async def _inbox_rows(
        self, conn: asyncpg.Connection, origin: str, edus: list[_Edu], outcome: InputOutcome
    ) -> list[tuple[str, str, _Edu, str, dict[str, Any]]]:
        """(user_id, device_id, edu, origin, content) per message to store, the
        target devices locked (FOR SHARE) so none is deleted under us."""
        users = sorted({user_id for edu in edus for user_id in edu.messages})
        if not users:
            return []
        device_rows = await storage.lock_devices_of(conn, users)
        devices: dict[str, list[str]] = {}
        for row in device_rows:
            devices.setdefault(row["user_id"], []).append(row["device_id"])
        rows: list[tuple[str, str, _Edu, str, dict[str, Any]]] = []
        for edu in edus:
            for user_id, by_device in edu.messages.items():
                existing = devices.get(user_id, [])
                for device_id, message in by_device.items():
                    if device_id == WILDCARD:
                        targets = [d for d in existing if d not in by_device]
                    elif device_id in existing:
                        targets = [device_id]
                    else:
                        outcome.ignored += 1
                        log.info(
                            "to-device message for an unknown device dropped",
                            extra={
                                "origin": origin,
                                "user_id": user_id,
                                "device_id": device_id,
                                "message_id": edu.message_id,
                            },
                        )
                        continue
                    rows.extend((user_id, target, edu, origin, message) for target in targets)
        return rows

    async def _insert(
        self,
        conn: asyncpg.Connection,
        rows: list[tuple[str, str, _Edu, str, dict[str, Any]]],
        received: int,
    ) -> None:
        counts: dict[tuple[str, str], int] = {}
        for user_id, device_id, *_ in rows:
            counts[(user_id, device_id)] = counts.get((user_id, device_id), 0) + 1
        next_position: dict[tuple[str, str], int] = {}
        for key in sorted(counts):  # one lock order for every writer
            last = await storage.advance_to_device_stream(conn, key[0], key[1], counts[key])
            next_position[key] = last - counts[key] + 1
        records = []
        for user_id, device_id, edu, origin, message in rows:
            key = (user_id, device_id)
            records.append(
                (
                    user_id,
                    device_id,
                    next_position[key],
                    edu.sender,
                    edu.type,
                    encode_json(message).decode(),
                    origin,
                    edu.message_id,
                    received,
                )
            )
            next_position[key] += 1
        await storage.insert_to_device_messages(conn, records)
        for user_id in sorted({user_id for user_id, *_ in rows}):
            await storage.notify(conn, NOTIFY_CHANNEL, user_id)

    async def _prune_dedupe(self, now: int) -> None:
        try:
            await storage.prune_to_device_dedupe(self.pool, now - DEDUPE_RETENTION_MS)
        except (asyncpg.PostgresError, OSError):
            log.warning("could not prune to-device dedupe records", exc_info=True)

    # ------------------------------------------------------------ reads

    def check_device(self, user_id: str, device_id: str) -> None:
        self.require_local(user_id)
        if not device_id:
            raise BadRequest("device_id is required", "M_MISSING_PARAM")

    async def query(
        self, user_id: str, device_id: str, after_position: int, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        """Messages after ``after_position`` (at most ``limit``), and whether there are more."""
        self.check_device(user_id, device_id)
        if limit < 0:
            raise BadRequest("limit must not be negative")
        limit = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        async with self.pool.acquire() as conn:
            messages = await read_after(conn, user_id, device_id, after_position, limit + 1)
        return messages[:limit], len(messages) > limit

    async def ack(self, user_id: str, device_id: str, up_to_position: int) -> int:
        self.check_device(user_id, device_id)
        return await storage.delete_to_device_messages(
            self.pool, user_id, device_id, up_to_position
        )


async def read_after(
    conn: asyncpg.Connection, user_id: str, device_id: str, after: int, limit: int
) -> list[StoredMessage]:
    rows = await storage.to_device_messages_after(conn, user_id, device_id, after, limit)
    return [StoredMessage.from_row(row) for row in rows]


def message_content(message: StoredMessage) -> Any:
    return decode_json(message.content_json)


class ToDeviceHub:
    """Wakes the followers of a user's devices when messages for that user are committed."""

    PAGE = 200

    def __init__(self, pool: asyncpg.Pool, poll_interval: float = 5.0) -> None:
        self.pool = pool
        self.poll_interval = poll_interval
        self._followers: dict[str, set[asyncio.Event]] = {}
        # Re-opened after a loss; every new connection wakes every follower to
        # read from its own position (nothing missed while not listening).
        self._listen = HeldConnection.from_pool(
            pool, "accounts.to_device_hub", on_open=self._listen_on, on_lost=self._wake_all
        )

    async def _listen_on(self, connection: asyncpg.Connection) -> None:
        await connection.add_listener(NOTIFY_CHANNEL, self._notified)
        self._wake_all()  # anything committed while we were not listening

    async def _ensure_listening(self) -> None:
        if self._listen.alive:
            return
        try:
            async with asyncio.timeout(self.poll_interval):
                await self._listen.connection()
        except TimeoutError:
            log.warning("to-device hub cannot LISTEN; polling")

    def _notified(self, _conn: Any, _pid: int, _channel: str, user_id: str) -> None:
        for event in self._followers.get(user_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._followers.values():
            for event in events:
                event.set()

    async def close(self) -> None:
        await self._listen.close()

    async def follow(
        self, user_id: str, device_id: str, after_position: int
    ) -> AsyncIterator[StoredMessage]:
        """The device's messages after ``after_position``, then new ones as they
        are committed, until the caller stops iterating."""
        event = asyncio.Event()
        self._followers.setdefault(user_id, set()).add(event)
        try:
            position = after_position
            while True:
                await self._ensure_listening()
                event.clear()  # before reading: a commit after this wakes us again
                async with self.pool.acquire() as conn:
                    messages = await read_after(conn, user_id, device_id, position, self.PAGE)
                for message in messages:
                    position = message.position
                    yield message
                if len(messages) == self.PAGE:
                    continue
                await event_set_within(event, self.poll_interval)
        finally:
            followers = self._followers.get(user_id)
            if followers is not None:
                followers.discard(event)
                if not followers:
                    del self._followers[user_id]
